"""sparse_mla_prefill / sparse_mla_decode in plain PyTorch.

Gather-based: each query row gathers only the K keys it selected (never a dense T x S score matrix),
and rows are processed in chunks, so peak memory depends on K and the chunk budget, not on the
context length. Prefill and decode share `attend_selected`; decode first translates logical positions
through the block table into rows of the flattened paged cache (and unpacks fp8 tokens after the
gather, touching only the selected ones).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dsa.backends.torch import chunks
from dsa.hal import kv_format
from dsa.hal.sparse_mla_decode import check_args
from dsa.hal.sparse_mla_prefill import check_args as check_prefill_args

# Rows per chunk: chunks.current().rows, by default what fits the chunk budget (~64 MiB): the gathered
# keys exist about twice (the fetched copy and its fp32 [Rc, K, Dqk] form) plus scores and probabilities.

Fetch = Callable[[Tensor], Tensor]  # row ids [n] int64 (all valid) -> keys [n, Dqk] fp32, a new tensor
Window = Callable[[int, int], Tensor]  # (lo, hi) -> keys of rows lo..hi-1 [hi - lo, Dqk] fp32

# Cost per (query row, key) in ns, measured on a 2-core AVX2 CPU (torch 2.13, fp32): gathering a
# selected key and attending over it ~ 36 H + 260; attending densely over a window key ~ 32 H. With few
# heads (the tiny model's 4) the gather is memory-bound and a window up to ~3x K wide is cheaper; with
# 128 heads both are GEMM-bound and the window pays off only up to ~1.2x K. Either path computes the
# same function; this only picks the faster one.
_GATHER_NS = (36, 260)
_WINDOW_NS = 32


def attend_selected(q: Tensor, rows: Tensor, fetch: Fetch, sm_scale: float, d_v: int,
                    window: Window | None = None) -> tuple[Tensor, Tensor]:
    """Attention of q [R, H, Dqk] over the keys rows [R, K] (int64, -1 = skip; distinct per row).

    fetch(ids) returns the keys of the given (valid) cache rows as fp32 [n, Dqk]; the value is the
    first d_v dims of the key. Returns out [R, H, d_v] fp32 and lse [R, H] fp32 (natural log);
    a row with no valid key gives out 0 and lse +inf.

    window(lo, hi), when the rows index one contiguous kv (prefill), lets a chunk of rows whose
    selections all fall in a short range [lo, hi) attend densely over that range with the unselected
    keys masked out: one GEMM instead of a gather per row (see _GATHER_NS).
    """
    R, H, D = q.shape
    K = rows.shape[1]
    out = torch.zeros(R, H, d_v, dtype=torch.float32, device=q.device)
    lse = torch.full((R, H), float("inf"), dtype=torch.float32, device=q.device)
    if R == 0 or K == 0:
        return out, lse
    rows, valid = _compact(rows, rows >= 0)  # [R, k], k = the most valid keys of any row (<= K)
    if rows.shape[1] == 0:
        return out, lse  # nothing valid anywhere: out 0, lse +inf
    sizes = chunks.current()
    chunk = sizes.rows or max(1, sizes.budget_bytes // (4 * rows.shape[1] * (2 * D + 2 * H)))
    for r0 in range(0, R, chunk):
        r1 = min(R, r0 + chunk)
        idx, ok = _compact(rows[r0:r1], valid[r0:r1])  # [Rc, k] for this chunk's rows
        k = idx.shape[1]
        if k == 0:
            continue  # out 0, lse +inf already
        if window is not None:
            lo, hi = _valid_range(idx, ok)
            cheaper = (hi - lo) * _WINDOW_NS * H < k * (_GATHER_NS[0] * H + _GATHER_NS[1])
            if sizes.path == "window" or (sizes.path == "auto" and cheaper):
                _attend_window(q, idx, ok, r0, lo, hi, window, sm_scale, d_v, out, lse)
                continue
        _attend_gathered(q, idx, ok, r0, fetch, sm_scale, d_v, out, lse)
    return out, lse


def _valid_range(idx: Tensor, valid: Tensor) -> tuple[int, int]:
    """[lo, hi): the smallest range holding every valid index of the chunk (skipped slots are < 0)."""
    hi = int(idx.max()) + 1
    lo = int(idx.masked_fill(~valid, hi).min())
    return lo, hi


def _attend_gathered(q: Tensor, idx: Tensor, valid: Tensor, r0: int, fetch: Fetch, sm_scale: float, d_v: int,
                     out: Tensor, lse: Tensor) -> None:
    """Rows r0.. of q attend over their own gathered keys: [Rc, k, Dqk] fetched once."""
    Rc, k = idx.shape
    D = q.shape[-1]
    all_valid = bool(valid.all())  # the usual case once the context exceeds top-k: no mask passes
    # Skipped slots fetch their row's first valid key (compaction put one first): a finite key the row
    # reads anyway, weighted by exactly 0 below (a fixed row such as 0 could hold inf / NaN: 0 * inf).
    safe = idx if all_valid else torch.where(valid, idx, idx[:, :1].clamp_min(0))
    keys = fetch(safe.reshape(-1)).view(Rc, k, D)  # [Rc, k, Dqk] fp32, one gather
    s = torch.bmm(q[r0:r0 + Rc].float(), keys.transpose(1, 2)).mul_(sm_scale)  # [Rc, H, k]
    if not all_valid:
        s.masked_fill_(~valid.unsqueeze(1), float("-inf"))
    _softmax_values(s, keys[..., :d_v], valid.any(dim=-1), r0, out, lse)


def _attend_window(q: Tensor, idx: Tensor, valid: Tensor, r0: int, lo: int, hi: int, window: Window,
                   sm_scale: float, d_v: int, out: Tensor, lse: Tensor) -> None:
    """Rows r0.. of q attend densely over keys lo..hi-1, everything they did not select masked out."""
    Rc, _ = idx.shape
    H = q.shape[1]
    W = hi - lo
    keys = window(lo, hi)  # [W, Dqk] fp32
    # selected[r, w]: row r selected key lo + w. Skipped slots write into a spare last column.
    target = torch.where(valid, idx - lo, torch.full_like(idx, W))
    selected = torch.zeros(Rc, W + 1, dtype=torch.bool, device=q.device).scatter_(1, target, True)[:, :W]
    sizes = chunks.current()
    step = sizes.window_rows or max(1, sizes.budget_bytes // (8 * H * W))  # scores + probabilities of `step` rows
    for a in range(0, Rc, step):
        b = min(Rc, a + step)
        s = torch.matmul(q[r0 + a:r0 + b].float(), keys.t()).mul_(sm_scale)  # [n, H, W]
        s.masked_fill_(~selected[a:b].unsqueeze(1), float("-inf"))
        _softmax_values(s, keys[:, :d_v], valid[a:b].any(dim=-1), r0 + a, out, lse)


def _softmax_values(s: Tensor, values: Tensor, nonempty: Tensor, r0: int, out: Tensor, lse: Tensor) -> None:
    """Rows r0.. of out / lse from masked scores s [n, H, m] (-inf = not attended) and values
    ([n, m, d_v] per row, or [m, d_v] shared). A row with nothing to attend gets 0 and +inf."""
    n, H, _ = s.shape
    m = s.amax(dim=-1, keepdim=True)  # [n, H, 1]; -inf for a row with nothing valid
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp_(s.sub_(m))  # [n, H, m]; exactly 0 at masked keys
    denom = p.sum(dim=-1)  # [n, H]
    o = torch.bmm(p, values) if values.dim() == 3 else torch.matmul(p, values)  # [n, H, d_v]
    empty = ~nonempty.unsqueeze(-1).expand(-1, H)  # [n, H]
    denom_safe = torch.where(empty, torch.ones_like(denom), denom)
    out[r0:r0 + n] = (o / denom_safe.unsqueeze(-1)).masked_fill_(empty.unsqueeze(-1), 0.0)
    lse[r0:r0 + n] = torch.where(empty, torch.full_like(denom, float("inf")), torch.log(denom_safe) + m.squeeze(-1))


def _compact(idx: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the columns no row needs: [Rc, K] -> [Rc, k], k = max valid per row, valid entries first.

    The indexer returns its picks first and -1 padding after, so usually this is a slice; any other
    layout is compacted by a stable sort of the valid flags.
    """
    counts = valid.sum(dim=1)
    k = int(counts.max()) if counts.numel() else 0
    if k == idx.shape[1]:
        return idx, valid
    if not bool(valid[:, k:].any()):
        return idx[:, :k], valid[:, :k]
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    return idx.gather(1, order), valid.gather(1, order)


def sparse_mla_prefill(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """q [T, H, Dqk], kv [S, 1, Dqk], indices [T, K] -> out [T, H, d_v] (q.dtype), lse [T, H] fp32."""
    check_prefill_args(q, kv, indices, d_v)
    S = kv.shape[0]
    # Drop padding columns while the indices are still int32 (a short prompt's rows are mostly -1).
    idx, valid = _compact(indices, (indices >= 0) & (indices < S))  # [T, k], k <= K
    rows = idx.long().masked_fill_(~valid, -1)  # [T, k]
    flat = kv[:, 0]  # [S, D]
    out, lse = attend_selected(q, rows, lambda ids: flat.index_select(0, ids).float(), sm_scale, d_v,
                               window=lambda lo, hi: flat[lo:hi].float())
    return out.to(q.dtype), lse


def _cache_rows(indices: Tensor, block_table: Tensor, seq_lens: Tensor, page: int, num_blocks: int) -> Tensor:
    """Logical positions [B, s_q, K] -> rows of the flattened cache [B, s_q, K] int64 (-1 = skip)."""
    B, max_blocks = block_table.shape
    p = indices.long()  # [B, s_q, K]
    lens = seq_lens.long().view(B, 1, 1)
    valid = (p >= 0) & (p < lens)
    if bool((seq_lens.long() > max_blocks * page).any()):
        raise ValueError(f"sparse_mla_decode: seq_lens {seq_lens.tolist()} exceed the block table's capacity "
                         f"({max_blocks} blocks of {page} tokens)")
    if not bool(valid.any()):
        return torch.full_like(p, -1)
    p = torch.where(valid, p, torch.zeros_like(p))
    logical_block = (p // page).view(B, -1)  # [B, s_q*K]
    block = torch.gather(block_table.long(), 1, logical_block).view_as(p)  # [B, s_q, K]
    used = block[valid]
    if used.numel() and bool(((used < 0) | (used >= num_blocks)).any()):
        raise ValueError(f"sparse_mla_decode: block_table points outside the cache ({num_blocks} blocks) "
                         f"for a selected token")
    rows = block * page + p % page
    return torch.where(valid, rows, torch.full_like(rows, -1))


def sparse_mla_decode(q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor,
                      sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """Sparse MLA over the paged cache (bf16/fp32 or packed fp8 uint8). See dsa.hal.sparse_mla_decode."""
    check_args(q, kv_cache, block_table, seq_lens, indices, d_v)
    B, s_q, H, D = q.shape
    num_blocks, page = kv_cache.shape[:2]
    flat = kv_cache.reshape(num_blocks * page, kv_cache.shape[-1])  # [blocks*page, D or P]
    if kv_cache.dtype == torch.uint8:

        def fetch(ids: Tensor) -> Tensor:
            return kv_format.unpack(flat.index_select(0, ids), d_v, torch.float32)  # only the selected tokens
    else:

        def fetch(ids: Tensor) -> Tensor:
            return flat.index_select(0, ids).float()  # a row gather: several times faster than flat[ids] on CPU

    rows = _cache_rows(indices, block_table, seq_lens, page, num_blocks)  # [B, s_q, K]
    out, lse = attend_selected(q.reshape(B * s_q, H, D), rows.reshape(B * s_q, -1), fetch, sm_scale, d_v)
    return out.to(q.dtype).view(B, s_q, H, d_v), lse.view(B, s_q, H)
