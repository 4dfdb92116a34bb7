"""OpSet: the providers the plan chose for every HAL op, callable as `ops.<op>(*args)`.

Per call, the first provider whose `supports_args` accepts the arguments runs; a skipped provider is
logged once with its reason, and when none accepts the call the error lists every reason. While a CUDA graph
is being captured only providers declared `capturable` may run (dsa.engine.cuda_graphs).
"""
from __future__ import annotations

import logging

import torch

from dsa.errors import NoProviderError
from dsa.hal import registry
from dsa.hal.act_quant import act_quant
from dsa.hal.fp8_linear import fp8_linear
from dsa.hal.grouped_gemm import grouped_gemm
from dsa.hal.indexer_topk import indexer_topk
from dsa.hal.sparse_mla_decode import sparse_mla_decode
from dsa.hal.sparse_mla_prefill import sparse_mla_prefill

log = logging.getLogger("dsa.ops")

HAL_OPS = {
    "act_quant": act_quant,
    "fp8_linear": fp8_linear,
    "indexer_topk": indexer_topk,
    "sparse_mla_prefill": sparse_mla_prefill,
    "sparse_mla_decode": sparse_mla_decode,
    "grouped_gemm": grouped_gemm,
}
assert tuple(HAL_OPS) == registry.OPS


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (a provider not declared capturable must not run)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class OpSet:
    """The providers the plan chose, callable as `ops.<op>(*args)` (args as in the op's contract)."""

    def __init__(self, selections: dict[str, registry.Selection]):
        missing = [op for op in registry.OPS if op not in selections]
        if missing:
            raise ValueError(f"OpSet needs a selection for every HAL op; missing {missing}")
        self.selections = selections
        self._warned: set[tuple[str, str, str]] = set()

    @classmethod
    def single(cls, provider: str = "torch") -> "OpSet":
        """Every op from one provider (tests, conformance runs)."""
        return cls({op: registry.Selection(op, [registry.get(op, provider)]) for op in registry.OPS})

    def providers(self) -> dict[str, str]:
        return {op: sel.chosen.name for op, sel in self.selections.items()}

    def call(self, op: str, *args):
        sel = self.selections[op]
        reasons = []
        for provider in sel.usable:
            reason = provider.supports_args(*args)
            if reason is None and not provider.capturable and _capturing():
                reason = "not capturable (it reads its arguments on the host) and a CUDA graph is being captured"
            if reason is None:
                return HAL_OPS[op](*args, provider.name)
            reasons.append(f"{provider.name}: {reason}")
            key = (op, provider.name, reason)
            if key not in self._warned:
                self._warned.add(key)
                log.warning("%s: provider %s skipped for this call (%s)", op, provider.name, reason)
        raise NoProviderError(f"no provider of {op!r} accepts these arguments: " + "; ".join(reasons))

    def __getattr__(self, op: str):
        if op in HAL_OPS:
            return lambda *args: self.call(op, *args)
        raise AttributeError(op)
