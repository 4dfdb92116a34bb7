"""Where the vendor adapters find their kernel libraries (`flash_mla`, `deep_gemm`, `aiter`, `torch_npu`).

`load` is the one seam: every adapter (dsa/backends/cuda, dsa/backends/rocm, dsa/backends/npu) calls
`vendor.load("<module>")` at call time (never at package import), and its declarations
(dsa.hal.capability.Requires) import their modules through `importer`, which calls `load`; tests
replace `load` with a function returning plain-PyTorch stand-ins written from the vendors'
documentation (tests/backends/fakes/). No state is kept here.
"""
from __future__ import annotations

import importlib


def load(module: str):
    """The imported module `module` (raises when it cannot be imported here)."""
    return importlib.import_module(module)


def importer(module: str):
    """`load`, looked up when called: what the adapters' declarations import through
    (`Requires(load=vendor.importer)`), so a test's replacement of `load` applies to them too."""
    return load(module)
