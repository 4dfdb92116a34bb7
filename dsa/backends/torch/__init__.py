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
from dsa.hal.capability import Requires
from dsa.hal.registry import register

NAME = "torch"
ANYWHERE = Requires()  # plain PyTorch: every platform, arch, fp8 format, cache format, page size and head count


def _decode_args(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v) -> Optional[str]:
    if kv_cache.dtype == torch.uint8 and d_v % kv_format.GROUP:
        return f"a packed fp8 cache needs d_v divisible by {kv_format.GROUP}, got {d_v}"
    return None


# Arguments outside an op's contract raise ValueError in the call (dsa.hal.<op>.check_args).
register("act_quant", NAME, quant.act_quant, backend=NAME, requires=ANYWHERE)
register("fp8_linear", NAME, quant.fp8_linear, backend=NAME, requires=ANYWHERE)
register("indexer_topk", NAME, indexer.indexer_topk, backend=NAME, requires=ANYWHERE)
register("sparse_mla_prefill", NAME, sparse_mla.sparse_mla_prefill, backend=NAME, requires=ANYWHERE)
register("sparse_mla_decode", NAME, sparse_mla.sparse_mla_decode, backend=NAME, requires=ANYWHERE,
         supports_args=_decode_args)
register("grouped_gemm", NAME, grouped_gemm.grouped_gemm, backend=NAME, requires=ANYWHERE)
