"""Implementations of the HAL ops (`runtime.ops`), one package per backend.

Each backend package registers its providers with `dsa.hal.registry.register` when it is imported,
each with a declaration of what it needs of the target (`requires=dsa.hal.capability.Requires(...)`:
vendor module, platforms, archs, fp8 format, kv cache dtype, page sizes, index heads), from which the
plan's rejection reasons are generated; `dsa.hal.registry.load_backends` imports every package that
is present. Vendor backends import their
kernel libraries lazily, so a missing library makes their providers "not installed", never an error.

    torch/   portable pure-PyTorch implementation of every op (runs wherever torch runs)
    triton/  Triton kernels for CUDA and ROCm (CPU tensors under TRITON_INTERPRET=1 for tests)
    cuda/    adapters to FlashMLA and DeepGEMM
    rocm/    adapters to AITER
    npu/     adapters to torch_npu / CANN DSA ops
    adapt.py translations the vendor adapters share (index encodings, head padding, group layouts)
"""
