"""HAL op `indexer_topk`: lightning-indexer scores and the top-k key positions per query."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dsa.hal.library import hal_op


def _fake(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
    max_visible: Optional[int], provider: str,
):
    return q.new_empty((q.shape[0], topk), dtype=torch.int32)


@hal_op(_fake)
def indexer_topk(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
    max_visible: Optional[int], provider: str,
) -> Tensor:
    """Score every visible key for every query and return the positions of the best `topk`.

    q        [T, H, D]  float8_e4m3fn (already quantised; its per-head scale is folded into weights)
                        or bf16 / fp32 (unquantised indexer)
    weights  [T, H]     float32 head weights (weights_proj(x) * H^-0.5 * q_scale * D^-0.5)
    k        [S, D]     float8_e4m3fn or bf16 / fp32: the index keys of every sequence, packed
    k_scale  [S]        float32 (ones for an unquantised k)
    starts, ends [T]    int32: key s is visible to query t iff starts[t] <= s < ends[t]
                        (causality and sequence boundaries are expressed through these)
    max_visible         a host-side bound: no query sees more keys (ends[t] - starts[t] <= max_visible),
                        e.g. the batch's longest sequence. Providers size their score windows by it
                        instead of reading starts / ends back from the device, so the call does not
                        sync and a CUDA graph can capture it. None: the provider finds the width itself
                        (one device-to-host read). A query that sees more keys than the bound is outside
                        the contract (providers that read starts / ends anyway reject it).

    score[t, s] = k_scale[s] * sum_h weights[t, h] * relu(q[t, h] . k[s])   (fp32), for visible s.

    Returns indices [T, topk] int32: positions (into k) of the min(topk, ends[t] - starts[t]) highest
    scores of query t, valid entries first, then -1 padding. Order among the valid entries and the
    tie-break between equal scores are unspecified: compare results as sets (docs/model-and-ops.md 7).
    """
    raise NotImplementedError

def onnx_translation():
    """This op in standard ONNX ops (dsa.hal.onnx_graph.indexer_topk), for custom_translation_table;
    imports onnxscript (the `onnx` extra) only when asked."""
    from dsa.hal import onnx_graph

    def indexer_topk_onnx(q, weights, k, k_scale, starts, ends, topk, max_visible, provider):
        return onnx_graph.indexer_topk(q, weights, k, k_scale, starts, ends, topk)

    return indexer_topk_onnx



def args_reason(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor,
                topk: int, max_visible: Optional[int] = None) -> Optional[str]:
    """Why the arguments break the contract's shape rules (None: they keep them), shared by every provider."""
    if q.dim() != 3 or k.dim() != 2:
        return f"expected q [T, H, D] and k [S, D], got q {tuple(q.shape)}, k {tuple(k.shape)}"
    T, H, D = q.shape
    S = k.shape[0]
    if k.shape[1] != D:
        return f"q head dim {D} != k dim {k.shape[1]}"
    if tuple(weights.shape) != (T, H) or tuple(k_scale.shape) != (S,):
        return f"weights {tuple(weights.shape)} / k_scale {tuple(k_scale.shape)} should be {(T, H)} / {(S,)}"
    if tuple(starts.shape) != (T,) or tuple(ends.shape) != (T,):
        return f"starts / ends must be [T={T}], got {tuple(starts.shape)} / {tuple(ends.shape)}"
    if topk < 0:
        return f"topk must be >= 0, got {topk}"
    if max_visible is not None and max_visible < 0:
        return f"max_visible must be >= 0 (or None), got {max_visible}"
    return None


def check_args(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
               max_visible: Optional[int] = None) -> None:
    """`args_reason` as a ValueError (for providers that raise on arguments outside the contract)."""
    reason = args_reason(q, weights, k, k_scale, starts, ends, topk, max_visible)
    if reason:
        raise ValueError(f"indexer_topk: {reason}")


def widest_visible(starts: Tensor, ends: Tensor, max_visible: Optional[int] = None, who: str = "indexer_topk") -> int:
    """max(ends - starts, 0) over the queries (T >= 1), read on the host (one sync off the CPU), for providers
    that read starts / ends anyway; raises ValueError (prefixed `who`) when it exceeds max_visible."""
    widest = int((ends.long() - starts.long()).clamp_min(0).max())
    if max_visible is not None and widest > max_visible:
        raise ValueError(f"{who}: a query sees {widest} keys, more than max_visible {max_visible}")
    return widest
