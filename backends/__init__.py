"""Implementations of the HAL ops (`runtime.ops`), one package per backend.

Each backend package registers its providers with `runtime.registry.register` when it is imported;
`runtime.registry.load_backends` imports every package that is present. Vendor backends import their
kernel libraries lazily, so a missing library makes their providers "not installed", never an error.

    torch/   portable pure-PyTorch implementation of every op (runs wherever torch runs)
"""
