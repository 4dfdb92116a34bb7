"""indexer_topk in plain PyTorch: chunked lightning-indexer scores, then a stable descending sort."""
from __future__ import annotations

import torch
from torch import Tensor

# Budget for one chunk's [Tc, H, S] fp32 logits (~64 MiB): peak memory does not grow with T.
_CHUNK_BYTES = 64 * 1024 * 1024


def _check(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int) -> None:
    if q.dim() != 3 or k.dim() != 2:
        raise ValueError(f"indexer_topk: expected q [T, H, D] and k [S, D], got q {tuple(q.shape)}, k {tuple(k.shape)}")
    T, H, D = q.shape
    S = k.shape[0]
    if k.shape[1] != D:
        raise ValueError(f"indexer_topk: q head dim {D} != k dim {k.shape[1]}")
    if tuple(weights.shape) != (T, H):
        raise ValueError(f"indexer_topk: weights has shape {tuple(weights.shape)}, expected {(T, H)}")
    if tuple(k_scale.shape) != (S,):
        raise ValueError(f"indexer_topk: k_scale has shape {tuple(k_scale.shape)}, expected {(S,)}")
    if tuple(starts.shape) != (T,) or tuple(ends.shape) != (T,):
        raise ValueError(f"indexer_topk: starts / ends must be [T={T}], got {tuple(starts.shape)} / {tuple(ends.shape)}")
    if topk < 0:
        raise ValueError(f"indexer_topk: topk must be >= 0, got {topk}")


def scores(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Masked index scores of a chunk of queries: [Tc, S] fp32, -inf where s is not visible."""
    logits = torch.einsum("thd,sd->ths", q.float(), k.float()).relu_()  # fp8 -> fp32 for the math  # [Tc, H, S]
    s = torch.einsum("ths,th->ts", logits, weights.float()) * k_scale.float()  # [Tc, S]
    pos = torch.arange(k.shape[0], device=q.device)  # [S]
    visible = (pos >= starts.unsqueeze(1).long()) & (pos < ends.unsqueeze(1).long())  # [Tc, S]
    return s.masked_fill_(~visible, float("-inf"))


def indexer_topk(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int) -> Tensor:
    """Top-`topk` visible key positions per query, int32 [T, topk], -1 padded. See runtime.ops.indexer_topk."""
    _check(q, weights, k, k_scale, starts, ends, topk)
    T, H, _ = q.shape
    S = k.shape[0]
    out = torch.full((T, topk), -1, dtype=torch.int32, device=q.device)
    kk = min(topk, S)
    if T == 0 or kk == 0:
        return out
    chunk = max(1, _CHUNK_BYTES // (4 * H * S))
    kf = k.float()  # [S, D] converted once, not per chunk
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        sc = scores(q[t0:t1], weights[t0:t1], kf, k_scale, starts[t0:t1], ends[t0:t1])  # [Tc, S]
        # Equal scores go to the lower position (a stable sort), so prefill and decode - which see
        # different numbers of keys - pick the same set: ReLU makes exact ties at 0 common.
        vals, idx = torch.sort(sc, dim=1, descending=True, stable=True)
        vals, idx = vals[:, :kk], idx[:, :kk]  # valid (finite) first
        idx = idx.masked_fill_(vals == float("-inf"), -1)
        out[t0:t1, :kk] = idx.to(torch.int32)
    return out
