"""AMD Instinct vendor kernels: provider "aiter" (ROCm AITER), for gfx942 (MI300) and gfx950 (MI350).

    sparse_mla_prefill  mla_decode_fwd over ragged per-token index lists (bf16 kv)
    sparse_mla_decode   mla_decode_fwd over the paged bf16 cache viewed as page-1 slots
    indexer_topk        fp8_mqa_logits (Triton) + top_k_per_row_prefill (stable tie-break when available)
    grouped_gemm        the Triton MoE GEMM (fused_moe of aiter.ops.triton moe_op) with top_k 1
    fp8_linear          gemm_a8w8_blockscale
    act_quant           none: registered with the reason (AITER's quantisers do not follow the HAL's
                        power-of-two scale rule), so the profile's next provider runs

gfx942 computes fp8 as e4m3fnuz (max 240): the adapters convert the HAL's e4m3fn tensors exactly (same
bits = half the value, scale doubled). AITER is imported when a provider is asked about or called,
never when this package is imported; without it the providers report "aiter not importable: ...".
Details of every translation: dsa/backends/rocm/aiter.py; CPU tests: tests/backends/test_rocm_adapters.py.
"""
from __future__ import annotations

from dsa.backends.rocm import aiter
from dsa.hal.capability import Requires
from dsa.hal.registry import register

BACKEND = "rocm"
NAME = "aiter"

register("sparse_mla_prefill", NAME, aiter.sparse_mla_prefill, backend=BACKEND, requires=aiter.PREFILL,
         supported=aiter.mla_reason, supports_args=aiter.prefill_args_reason)
register("sparse_mla_decode", NAME, aiter.sparse_mla_decode, backend=BACKEND, requires=aiter.DECODE,
         supported=aiter.mla_reason, supports_args=aiter.decode_args_reason)
register("indexer_topk", NAME, aiter.indexer_topk, backend=BACKEND, requires=aiter.INDEXER,
         supports_args=aiter.indexer_args_reason)
register("grouped_gemm", NAME, aiter.grouped_gemm, backend=BACKEND, requires=aiter.GROUPED,
         supports_args=aiter.grouped_args_reason)
register("fp8_linear", NAME, aiter.fp8_linear, backend=BACKEND, requires=aiter.LINEAR,
         supported=aiter.linear_reason, supports_args=aiter.linear_args_reason)

# A placeholder for profiles that list aiter under act_quant: the plan shows why it never runs.
register("act_quant", NAME, None, backend=BACKEND, requires=Requires(
    unavailable="no AITER activation quantiser is wrapped (the HAL's act_quant fixes the scale rule, "
                "incl. ue8m0; AITER's per-token-group quantisers are not checked against it)"))
