"""Huawei Ascend vendor kernels: provider "npu" (torch_npu's CANN DSA ops), for A2 (910B) and A3 (910C).

    indexer_topk        npu_lightning_indexer (TND query, PA_BSND keys, top-k fused)
    sparse_mla_prefill  npu_sparse_flash_attention (TND / TND, query split into 512 latent + 64 rope)
    sparse_mla_decode   npu_sparse_flash_attention (TND / PA_BSND over the paged bf16 cache)
    grouped_gemm        npu_grouped_matmul (split M by cumulative group sizes)

torch_npu cannot be imported without CANN, and installed it breaks a plain `import torch`: it is
imported only when a provider is asked about or called (never at package import) and must never be
installed on CPU machines. Without it the providers report "torch_npu not importable: ...". A2 vs A3
comes from torch_npu.npu.get_soc_version(). No fp8 on A2 / A3: act_quant and fp8_linear are
registered with that reason, so a profile listing npu for them falls through to torch. Every
translation: dsa/backends/npu/cann.py; CPU tests: tests/backends/test_npu_adapters.py.
"""
from __future__ import annotations

from dsa.backends.npu import cann
from dsa.hal.capability import Requires
from dsa.hal.registry import register

BACKEND = "npu"
NAME = "npu"

register("indexer_topk", NAME, cann.indexer_topk, backend=BACKEND, requires=cann.INDEXER,
         supported=cann.machine_reason, supports_args=cann.indexer_args_reason)
register("sparse_mla_prefill", NAME, cann.sparse_mla_prefill, backend=BACKEND, requires=cann.REQUIRES,
         supported=cann.machine_reason, supports_args=cann.prefill_args_reason)
register("sparse_mla_decode", NAME, cann.sparse_mla_decode, backend=BACKEND, requires=cann.DECODE,
         supported=cann.machine_reason, supports_args=cann.decode_args_reason)
register("grouped_gemm", NAME, cann.grouped_gemm, backend=BACKEND, requires=cann.REQUIRES,
         supported=cann.machine_reason, supports_args=cann.grouped_args_reason)

# Placeholders for profiles that list npu under the fp8 ops: the plan shows why they never run.
NO_FP8 = Requires(unavailable="Ascend A2 / A3 have no fp8 (weights are bf16 there; W8A8 int8 is not wired)")
for _op in ("act_quant", "fp8_linear"):
    register(_op, NAME, None, backend=BACKEND, requires=NO_FP8)
