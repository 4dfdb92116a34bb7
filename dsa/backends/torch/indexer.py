"""indexer_topk in plain PyTorch: chunked lightning-indexer scores, then an exact top-k with a stable tie-break."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dsa.backends.torch import chunks
from dsa.backends.torch.blocks import fp8_has_nan, fp8_to_float, to_float
from dsa.hal.indexer_topk import check_args, widest_visible

# Chunk sizes (chunks.current(), read per call): keys scored at a time (`keys`, 4096, see scores) and
# queries per chunk (`queries`, by default what fits the ~64 MiB budget: peak memory does not grow with T).


def scores(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Masked index scores of a chunk of queries: [Tc, S] fp32, -inf where s is not visible.

    Keys are scored chunks.current().keys at a time into reused buffers (their int16 and fp32 forms and the
    [chunk, Tc*H] logits), so the temporaries stay cache-sized however long the context is and no
    fresh pages are faulted in per chunk. Keys-major logits make one well-shaped GEMM
    ([chunk, D] x [D, Tc*H], ~1.5x faster here than the heads-major product for a decode step) and, for
    a single query, reduce over heads with one matrix-vector product.
    """
    Tc, H, D = q.shape
    S = k.shape[0]
    qf, w = to_float(q).reshape(Tc * H, D), weights.float()  # [Tc*H, D], [Tc, H]
    s = torch.empty(Tc, S, dtype=torch.float32, device=q.device)
    key_chunk = chunks.current().keys
    n = min(S, key_chunk)
    kbuf = torch.empty(n, D, dtype=torch.float32, device=q.device)
    lbuf = torch.empty(n, Tc * H, dtype=torch.float32, device=q.device)
    fp8 = k.dtype == torch.float8_e4m3fn
    nan = fp8 and fp8_has_nan(k)  # once for all chunks
    bits = torch.empty(n, D, dtype=torch.int16, device=q.device) if fp8 else None  # the cast's scratch
    qt = qf.t()  # [D, Tc*H]
    for s0 in range(0, S, key_chunk):
        s1 = min(S, s0 + key_chunk)
        m = s1 - s0
        kc = (fp8_to_float(k[s0:s1], out=kbuf[:m], unscaled=True, has_nan=nan, scratch=bits[:m]) if fp8
              else k[s0:s1].float())  # [m, D]
        logits = torch.mm(kc, qt, out=lbuf[:m]).relu_()  # [m, Tc*H]
        if Tc == 1:
            torch.mv(logits, w[0], out=s[0, s0:s1])
        else:
            s[:, s0:s1] = torch.einsum("nth,th->tn", logits.view(m, Tc, H), w)
    # [Tc, S] * [S]: each key's scale (positive, so it commutes with the ReLU), times the 2^8 that the
    # unscaled fp8 decode left out (a power of two: exact).
    s.mul_(k_scale.float() * 256.0 if fp8 else k_scale.float())
    pos = torch.arange(S, device=q.device)  # [S]
    visible = (pos >= starts.unsqueeze(1).long()) & (pos < ends.unsqueeze(1).long())  # [Tc, S]
    return s.masked_fill_(~visible, float("-inf"))


# A batch of many sequences is scored per key window (see windows): merging neighbouring windows into one
# costs the scores of keys the rows cannot see; while that waste stays below this many multiply-adds (H x D
# per score, ~0.05 ms on one core) the merge is cheaper than a window's own overhead (a few small launches).
MERGE_SLACK_MACS = 1 << 21


def indexer_topk(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
    max_visible: Optional[int] = None,
) -> Tensor:
    """Top-`topk` visible key positions per query, int32 [T, topk], -1 padded. See dsa.hal.indexer_topk.

    A row that sees at most `topk` keys selects all of them whatever the scores (the contract's result is a
    set), so it is not scored: in a prompt, the first `topk` positions; in a batch of short sequences, every
    row. Only the other rows are scored, per key window. It reads starts / ends on the host (and checks
    them against max_visible), so it is not capturable in a CUDA graph."""
    check_args(q, weights, k, k_scale, starts, ends, topk, max_visible)
    T = q.shape[0]
    if T == 0 or topk == 0 or k.shape[0] == 0:
        return torch.full((T, topk), -1, dtype=torch.int32, device=q.device)
    starts32 = starts.to(torch.int32)
    counts = ends.to(torch.int32) - starts32  # [T] keys each row sees
    if max_visible is not None:  # T > 0 here
        widest_visible(starts, ends, max_visible)
    slot = torch.arange(topk, dtype=torch.int32, device=q.device)
    out = torch.where(slot < counts[:, None], starts32[:, None] + slot, -1).to(torch.int32)  # all visible
    scored = (counts > topk).nonzero().squeeze(1)  # [R] rows that must choose
    if scored.numel() == 0:
        return out
    every = scored.numel() == T
    rows = (lambda x: x) if every else (lambda x: x.index_select(0, scored))
    out[scored] = _scored_topk(rows(q), rows(weights), k, k_scale, rows(starts), rows(ends), topk)
    return out


def _scored_topk(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor,
                 topk: int) -> Tensor:
    """The top-k of rows that each see more than topk keys, int32 [R, topk], scored per key window."""
    out = torch.full((q.shape[0], topk), -1, dtype=torch.int32, device=q.device)
    for t0, t1, lo, hi in windows(starts, ends, macs_per_score=q.shape[1] * q.shape[2]):
        if hi <= lo:
            continue
        kk = min(topk, hi - lo)
        got = _window_topk(q[t0:t1], weights[t0:t1], k[lo:hi], k_scale[lo:hi], starts[t0:t1] - lo,
                           ends[t0:t1] - lo, kk)  # [t1 - t0, kk] positions in the window, -1 padded
        out[t0:t1, :kk] = torch.where(got >= 0, got + lo, got).to(torch.int32)
    return out


def windows(starts: Tensor, ends: Tensor, macs_per_score: int = 1) -> list[tuple[int, int, int, int]]:
    """Split the query rows into runs (t0, t1) scored against one key window [lo, hi) each.

    The rows of one sequence are consecutive and share `starts` (dsa.model.cache.Batch.visible_range), so a
    step over many sequences needs each row's own sequence only: scoring every row against the whole packed
    cache would cost rows x all keys. Neighbouring runs are merged while the merged window's scores exceed
    what its runs need by less than MERGE_SLACK_MACS (a long prefill is one run; many short decode rows
    become a few windows)."""
    st, en = starts.tolist(), ends.tolist()
    runs: list[list[int]] = []  # [t0, t1, lo, hi]
    for t, (a, b) in enumerate(zip(st, en)):
        if runs and runs[-1][2] == a:
            runs[-1][1], runs[-1][3] = t + 1, max(runs[-1][3], b)
        else:
            runs.append([t, t + 1, a, b])
    slack = MERGE_SLACK_MACS // max(1, macs_per_score)  # in scores
    merged: list[list[int]] = []  # [t0, t1, lo, hi, scores its runs need]
    for t0, t1, lo, hi in runs:
        need = (t1 - t0) * (hi - lo)
        if merged:
            m = merged[-1]
            mlo, mhi = min(m[2], lo), max(m[3], hi)
            if (t1 - m[0]) * (mhi - mlo) - (m[4] + need) <= slack:
                m[1], m[2], m[3], m[4] = t1, mlo, mhi, m[4] + need
                continue
        merged.append([t0, t1, lo, hi, need])
    return [(m[0], m[1], m[2], m[3]) for m in merged]


def _window_topk(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor,
                 kk: int) -> Tensor:
    """indexer_topk's positions over one key window, int64 [T, kk], query chunks within the memory budget."""
    T, H, _ = q.shape
    S = k.shape[0]
    out = torch.empty(T, kk, dtype=torch.int64, device=q.device)
    sizes = chunks.current()
    # default: logits + scores + top-k keys of a chunk within the budget
    chunk = sizes.queries or max(1, sizes.budget_bytes // (4 * H * min(S, sizes.keys) + 16 * S))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        sc = scores(q[t0:t1], weights[t0:t1], k, k_scale, starts[t0:t1], ends[t0:t1])  # [Tc, S]
        out[t0:t1] = top_positions(sc, kk)
    return out


_NEG_INF_KEY = torch.tensor(float("-inf")).view(torch.int32).item() ^ 0x7FFFFFFF


def top_positions(sc: Tensor, kk: int) -> Tensor:
    """The kk best positions of each row of sc [Tc, S] (fp32, -inf = not visible), int64 [Tc, kk]:
    highest score first, equal scores lower position first, -1 for -inf.

    That order is a stable descending sort's. Equal scores must go to the lower position so prefill and
    decode - which see different numbers of keys - pick the same set (ReLU makes exact ties at 0 common).
    A full stable sort of S scores costs several times a top-k, so each score is packed with its
    position into one int64 key - the float's bits mapped to an order-preserving int32 in the high
    half, S - 1 - position in the low half - and torch.topk picks the same kk in the same order.
    """
    S = sc.shape[1]
    bits = (sc + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0: they tie, as in a float sort
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse their bit order
    rank = S - 1 - torch.arange(S, dtype=torch.int64, device=sc.device)
    top = torch.topk((bits.to(torch.int64) << 32) | rank, kk, dim=1).values  # [Tc, kk] descending
    idx = (S - 1) - (top & 0xFFFFFFFF)
    return idx.masked_fill_((top >> 32) == _NEG_INF_KEY, -1)
