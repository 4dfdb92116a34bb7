"""The hardware abstraction layer: the ops the DeepSeek-V3.2 graph needs.

Each op is a module here holding its contract (docstring: shapes, dtypes, formula) and a fake
implementation, registered as `torch.ops.dsa.<op>`. Implementations live in `dsa/backends/`; the
independent fp64 oracle lives in `dsa/conformance/reference/`.

The model never calls a provider directly: it calls an `OpSet`, made by the plan, which holds for each
op the usable providers in preference order. Per call, the first provider whose `supports_args`
accepts the arguments runs; a skipped provider is logged once with its reason.
"""
from __future__ import annotations

from dsa.hal import kv_format, registry
from dsa.hal.opset import (
    HAL_OPS,
    OpSet,
    act_quant,
    fp8_linear,
    grouped_gemm,
    indexer_topk,
    sparse_mla_decode,
    sparse_mla_prefill,
)

__all__ = ["OpSet", "HAL_OPS", "kv_format", "registry", "act_quant", "fp8_linear", "grouped_gemm", "indexer_topk",
           "sparse_mla_decode", "sparse_mla_prefill"]
