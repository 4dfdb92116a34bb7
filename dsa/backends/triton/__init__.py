"""Triton kernels for CUDA and ROCm: provider "triton".

One Triton source per op serves NVIDIA (sm80 and newer: A100, H100/H200/H20, B200, RTX PRO) and AMD
(gfx942, gfx950, ...) GPUs, including those no vendor sparse-attention kernel covers (SM80, SM120,
ROCm without AITER). CI checks the kernels in two ways without a GPU: the conformance suite runs them
under TRITON_INTERPRET=1 on CPU tensors against the fp64 oracle, and `python -m
dsa.backends.triton.compile_check` compiles every kernel for sm90, sm100, gfx942 and gfx950.

Each module listed in MODULES exposes `register()` (registers its ops through dsa.hal.registry, with
`supported` from `common.target_reason` plus its own checks, and a `supports_args`) and `KERNELS`
(what compile_check builds). A module that is not there yet is skipped; one that fails to import for
another reason is an error (logged by dsa.hal.registry.load_backends). Without the `triton` package
nothing registers, so the plan reports the provider as "not installed".

    sparse_mla    sparse_mla_prefill, sparse_mla_decode (paged; bf16 and packed fp8 cache)
    indexer       indexer_topk
    grouped_gemm  grouped_gemm (bf16, fp8 with block scales)
    quant         act_quant, fp8_linear
"""
from __future__ import annotations

import importlib
import importlib.util

NAME = "triton"
MODULES = ("sparse_mla", "indexer", "grouped_gemm", "quant")

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def present_modules() -> list:
    """The kernel modules of MODULES that exist here, imported."""
    found = []
    for name in MODULES:
        full = f"{__name__}.{name}"
        if importlib.util.find_spec(full) is None:
            continue  # not written yet
        found.append(importlib.import_module(full))
    return found


if TRITON_AVAILABLE:
    for _module in present_modules():
        _module.register()
