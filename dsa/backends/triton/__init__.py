"""Triton kernels for CUDA and ROCm: provider "triton".

One Triton source per op serves NVIDIA (sm80 and newer: A100, H100/H200/H20, B200, RTX PRO) and AMD
(gfx942, gfx950, ...) GPUs, including those no vendor sparse-attention kernel covers (SM80, SM120,
ROCm without AITER). CI checks the kernels in two ways without a GPU: the conformance suite runs them
under TRITON_INTERPRET=1 on CPU tensors against the fp64 oracle, and `python -m
dsa.backends.triton.compile_check` compiles every kernel for sm90, sm100, gfx942 and gfx950.

This package registers every op's provider with dsa.hal.registry.register: the declaration
`common.REQUIRES` (CUDA sm80+ or an AMD arch Triton targets; sparse MLA adds that the packed fp8
cache needs sm89+ on NVIDIA: `sparse_mla.SPARSE_MLA`) and each module's per-call `*_args` check. Each
module listed in MODULES also exposes `KERNELS` (what compile_check builds). Every provider is declared
`capturable`: given the host-side bounds the ops take (indexer_topk's max_visible), no call reads a tensor
on the host, so the decode step can be a CUDA graph (tests/model/test_static_decode.py proves it on CPU).
A module that fails to import is an error (logged by dsa.hal.registry.load_backends). Without the
`triton` package nothing registers, so the plan reports the provider as "not installed".

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
    from dsa.backends.triton import grouped_gemm, indexer, quant, sparse_mla
    from dsa.backends.triton.common import REQUIRES
    from dsa.hal.registry import register

    register("act_quant", NAME, quant.act_quant, backend=NAME, requires=REQUIRES, supports_args=quant.act_quant_args,
             capturable=True)
    register("fp8_linear", NAME, quant.fp8_linear, backend=NAME, requires=REQUIRES,
             supports_args=quant.fp8_linear_args, capturable=True)
    register("indexer_topk", NAME, indexer.indexer_topk, backend=NAME, requires=REQUIRES,
             supports_args=indexer.indexer_args, capturable=True)
    register("sparse_mla_prefill", NAME, sparse_mla.sparse_mla_prefill, backend=NAME, requires=sparse_mla.SPARSE_MLA,
             supports_args=sparse_mla.prefill_args, capturable=True)
    register("sparse_mla_decode", NAME, sparse_mla.sparse_mla_decode, backend=NAME, requires=sparse_mla.SPARSE_MLA,
             supports_args=sparse_mla.decode_args, capturable=True)
    register("grouped_gemm", NAME, grouped_gemm.grouped_gemm, backend=NAME, requires=REQUIRES,
             supports_args=grouped_gemm.grouped_args, capturable=True)
