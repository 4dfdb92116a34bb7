"""Where the vendor adapters find their kernel libraries (`flash_mla`, `deep_gemm`, `aiter`, `torch_npu`).

`load` is the one seam: every adapter (dsa/backends/cuda, dsa/backends/rocm, dsa/backends/npu) calls
`vendor.load("<module>")` at call time (never at package import), and tests replace `load` with a
function returning plain-PyTorch stand-ins written from the vendors' documentation
(tests/backends/fakes/). No state is kept here.
"""
from __future__ import annotations

from dsa.backends.adapt import import_module, import_reason


def load(module: str):
    """The imported module `module` (raises when it cannot be imported here)."""
    return import_module(module)


def reason(module: str):
    """None when `module` imports, else "<module> not importable: <error>"."""
    return import_reason(load, module)
