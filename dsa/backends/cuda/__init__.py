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

What each provider needs of the target (module, arch, fp8 format, cache, page size, index heads) is
declared next to its adapter (flashmla.PREFILL / DECODE, deepgemm.GEMM / INDEXER: dsa.hal.capability);
the plan's rejection reasons are generated from those declarations.

How each HAL argument is translated: dsa/backends/cuda/flashmla.py and deepgemm.py (module docstrings);
the shared translations: backends/adapt.py. CPU tests with documented-semantics stand-ins for the
vendor functions: tests/backends/test_cuda_adapters.py.
"""
from __future__ import annotations

from dsa.backends.cuda import deepgemm, flashmla
from dsa.hal.capability import Requires
from dsa.hal.registry import register

BACKEND = "cuda"

register("sparse_mla_prefill", "flashmla", flashmla.sparse_mla_prefill, backend=BACKEND,
         requires=flashmla.PREFILL, supports_args=flashmla.prefill_args_reason)
register("sparse_mla_decode", "flashmla", flashmla.sparse_mla_decode, backend=BACKEND,
         requires=flashmla.DECODE, supports_args=flashmla.decode_args_reason)
register("indexer_topk", "deepgemm", deepgemm.indexer_topk, backend=BACKEND,
         requires=deepgemm.INDEXER, supports_args=deepgemm.indexer_args_reason)
register("grouped_gemm", "deepgemm", deepgemm.grouped_gemm, backend=BACKEND,
         requires=deepgemm.GEMM, supports_args=deepgemm.grouped_args_reason)
register("fp8_linear", "deepgemm", deepgemm.fp8_linear, backend=BACKEND,
         requires=deepgemm.GEMM, supports_args=deepgemm.linear_args_reason)

# Placeholders: ops CUDA profiles list these providers under, with nothing to run there (the plan shows why).
register("act_quant", "deepgemm", None, backend=BACKEND, requires=Requires(
    unavailable="DeepGEMM has no activation-quantisation kernel (its GEMMs take already-quantised inputs)"))
NO_TILELANG = Requires(unavailable="not installed: no TileLang kernel is wrapped in dsa.backends.cuda yet "
                                   "(FlashMLA / DeepGEMM / Triton serve these ops)")
for _op in ("indexer_topk", "sparse_mla_prefill", "sparse_mla_decode"):
    register(_op, "tilelang", None, backend=BACKEND, requires=NO_TILELANG)
