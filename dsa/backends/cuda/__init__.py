"""NVIDIA vendor kernels: providers "flashmla" (FlashMLA) and "deepgemm" (DeepGEMM).

    flashmla   sparse_mla_prefill  flash_mla_sparse_fwd             (SM90 / SM100, bf16 kv)
               sparse_mla_decode   flash_mla_with_kvcache(..., is_fp8_kvcache=True, indices=...)
                                   (SM90 / SM100, 656-byte fp8 cache, 64-token pages)
    deepgemm   indexer_topk        fp8_mqa_logits + top-k           (SM90 / SM100, e4m3fn)
               grouped_gemm        m_grouped_fp8_gemm_nt_contiguous (128-aligned groups, -1 padding rows)
               fp8_linear          fp8_gemm_nt
               act_quant           none: DeepGEMM has no quantisation kernel (registered with that reason)

The libraries are imported when a provider is asked about or called, never when this package is
imported: on a machine without them (or without a GPU) the providers are registered and report
"flash_mla not importable: ..." as their reason, in the plan and in per-call checks (so conformance
runs skip them with that reason). "tilelang" (which dsa.hal.registry also assigns to this package) is registered for
the ops profiles list it under with the reason "not installed: no TileLang kernel is wrapped in
dsa.backends.cuda yet"; deepgemm for act_quant likewise says DeepGEMM has no such kernel.

How each HAL argument is translated: dsa/backends/cuda/flashmla.py and deepgemm.py (module docstrings);
the shared translations: backends/adapt.py. CPU tests with documented-semantics stand-ins for the
vendor functions: tests/backends/test_cuda_adapters.py.
"""
from __future__ import annotations

from dsa.backends.adapt import register_adapter, register_unavailable
from dsa.backends.cuda import deepgemm, flashmla
from dsa.hal.registry import register

BACKEND = "cuda"

register("sparse_mla_prefill", "flashmla", flashmla.sparse_mla_prefill, backend=BACKEND,
         supported=lambda t: flashmla.target_reason(t, decode=False), supports_args=flashmla.prefill_args_reason)
register("sparse_mla_decode", "flashmla", flashmla.sparse_mla_decode, backend=BACKEND,
         supported=lambda t: flashmla.target_reason(t, decode=True), supports_args=flashmla.decode_args_reason)
register_adapter({
    "indexer_topk": (deepgemm.indexer_topk, deepgemm.indexer_args_reason),
    "grouped_gemm": (deepgemm.grouped_gemm, deepgemm.grouped_args_reason),
    "fp8_linear": (deepgemm.fp8_linear, deepgemm.linear_args_reason),
}, "deepgemm", BACKEND, deepgemm.target_reason)

register_unavailable(["act_quant"], "deepgemm", BACKEND,
                     "DeepGEMM has no activation-quantisation kernel (its GEMMs take already-quantised inputs)")
register_unavailable(["indexer_topk", "sparse_mla_prefill", "sparse_mla_decode"], "tilelang", BACKEND,
                     "not installed: no TileLang kernel is wrapped in dsa.backends.cuda yet (FlashMLA / DeepGEMM / Triton serve these ops)")
