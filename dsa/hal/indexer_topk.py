"""HAL op `indexer_topk`: lightning-indexer scores and the top-k key positions per query."""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.hal.library import hal_op


def _fake(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int, provider: str):
    return q.new_empty((q.shape[0], topk), dtype=torch.int32)


@hal_op(_fake)
def indexer_topk(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int, provider: str
) -> Tensor:
    """Score every visible key for every query and return the positions of the best `topk`.

    q        [T, H, D]  float8_e4m3fn (already quantised; its per-head scale is folded into weights)
                        or bf16 / fp32 (unquantised indexer)
    weights  [T, H]     float32 head weights (weights_proj(x) * H^-0.5 * q_scale * D^-0.5)
    k        [S, D]     float8_e4m3fn or bf16 / fp32: the index keys of every sequence, packed
    k_scale  [S]        float32 (ones for an unquantised k)
    starts, ends [T]    int32: key s is visible to query t iff starts[t] <= s < ends[t]
                        (causality and sequence boundaries are expressed through these)

    score[t, s] = k_scale[s] * sum_h weights[t, h] * relu(q[t, h] . k[s])   (fp32), for visible s.

    Returns indices [T, topk] int32: positions (into k) of the min(topk, ends[t] - starts[t]) highest
    scores of query t, valid entries first, then -1 padding. Order among the valid entries and the
    tie-break between equal scores are unspecified: compare results as sets (docs/model-and-ops.md 7).
    """
    raise NotImplementedError
