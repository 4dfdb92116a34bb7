"""The portable pure-PyTorch backend: provider "torch" for every HAL op.

Runs wherever torch runs (any device, eager; torch.compile is not needed). It is the fallback of
every device profile and the baseline other providers are compared against in conformance tests,
so it favours clarity and bounded memory over speed: sparse attention gathers only the selected
keys and works in chunks; fp8 GEMMs are simulated by block dequantisation plus fp32 matmuls.
"""
from __future__ import annotations

from typing import Optional

import torch

from dsa.backends.torch import grouped_gemm, indexer, quant, sparse_mla
from dsa.hal import kv_format
from dsa.hal.registry import Target, register

NAME = "torch"


def _everywhere(target: Target) -> Optional[str]:
    return None  # plain PyTorch: every platform, cache format and head count


def _any_args(*args) -> Optional[str]:
    return None


def _decode_args(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v) -> Optional[str]:
    if kv_cache.dtype == torch.uint8 and d_v % kv_format.GROUP:
        return f"a packed fp8 cache needs d_v divisible by {kv_format.GROUP}, got {d_v}"
    return None


def _grouped_args(x, x_scale, w, w_scale, m_sizes) -> Optional[str]:
    return grouped_gemm.unsupported(x, x_scale, w, w_scale, m_sizes)


_PROVIDERS = {
    "act_quant": (quant.act_quant, _any_args),
    "fp8_linear": (quant.fp8_linear, _any_args),
    "indexer_topk": (indexer.indexer_topk, _any_args),
    "sparse_mla_prefill": (sparse_mla.sparse_mla_prefill, _any_args),
    "sparse_mla_decode": (sparse_mla.sparse_mla_decode, _decode_args),
    "grouped_gemm": (grouped_gemm.grouped_gemm, _grouped_args),
}

for _op, (_fn, _args_check) in _PROVIDERS.items():
    register(_op, NAME, _fn, backend=NAME, supported=_everywhere, supports_args=_args_check)
