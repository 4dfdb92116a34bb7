"""The dense baseline: absorbed-form MLA attention over EVERY cached token (no indexer, no selection).

What a V3-style runtime without DeepSeek Sparse Attention does per layer (docs/model-and-ops.md 2.1, absorbed / MQA
form): query [H, 576] against all S cached [c_kv ; k_pe] rows, value = the first 512 dims. Written
plainly but not naively, so the sparse-vs-dense ratio measures the algorithm, not a weak baseline:
keys are read chunk by chunk (a few MiB, cache- and allocator-friendly), each chunk feeds one GEMM over
all heads (and all rows of a prefill group), and chunks are merged with an online softmax, so memory
stays bounded and no [H, S] score matrix is kept.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from dsa.hal import kv_format

CHUNK_TOKENS = 4096  # keys per chunk: 4096 x 576 fp32 = 9 MiB
SCORE_BYTES = 32 * 1024 * 1024  # budget of one group's [rows * H, chunk] fp32 scores
GROUP_SPREAD = 64  # rows of one group differ in length by at most this many tokens

Fetch = Callable[[int, int], Tensor]  # (start, end) -> keys of positions [start, end) as fp32 [n, D]


def dense_attend(q: Tensor, lengths: Sequence[int], fetch: Fetch, sm_scale: float, d_v: int,
                 chunk_tokens: int = CHUNK_TOKENS) -> tuple[Tensor, Tensor]:
    """q [R, H, D]; row r attends to positions [0, lengths[r]) -> out [R, H, d_v] fp32, lse [R, H] fp32.

    A row with length 0 gets out 0 and lse +inf (the sparse ops' convention for "nothing to attend").
    """
    R, H, D = q.shape
    out = torch.zeros(R, H, d_v, dtype=torch.float32, device=q.device)
    lse = torch.full((R, H), float("inf"), dtype=torch.float32, device=q.device)
    lens = [int(n) for n in lengths]
    for rows in _groups(lens, max(1, SCORE_BYTES // (4 * H * chunk_tokens))):
        g0 = rows[0]
        longest = max(lens[r] for r in rows)
        if longest == 0:
            continue
        qg = q[g0 : g0 + len(rows)].float().reshape(len(rows) * H, D)  # [G*H, D]
        m = torch.full((len(rows) * H, 1), float("-inf"), device=q.device)
        denom = torch.zeros(len(rows) * H, 1, device=q.device)
        acc = torch.zeros(len(rows) * H, d_v, device=q.device)
        glens = torch.tensor([lens[r] for r in rows], device=q.device).repeat_interleave(H).unsqueeze(1)  # [G*H, 1]
        for c0 in range(0, longest, chunk_tokens):
            c1 = min(longest, c0 + chunk_tokens)
            kv = fetch(c0, c1)  # [n, D] fp32
            s = (qg @ kv.t()).mul_(sm_scale)  # [G*H, n]
            if any(lens[r] < c1 for r in rows):  # some row ends inside (or before) this chunk
                pos = torch.arange(c0, c1, device=q.device).unsqueeze(0)
                s.masked_fill_(pos >= glens, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=1, keepdim=True))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = torch.exp_(s.sub_(m_safe))  # [G*H, n]
            alpha = torch.exp(m - m_safe)  # 0 where m was -inf
            denom = denom * alpha + p.sum(dim=1, keepdim=True)
            acc = acc * alpha + p @ kv[:, :d_v]
            m = m_new
        has = denom > 0
        o = torch.where(has, acc / torch.where(has, denom, torch.ones_like(denom)), torch.zeros_like(acc))
        out[g0 : g0 + len(rows)] = o.view(len(rows), H, d_v)
        lse_g = torch.where(has, torch.log(denom) + m, torch.full_like(denom, float("inf")))
        lse[g0 : g0 + len(rows)] = lse_g.view(len(rows), H)
    return out, lse


def _groups(lens: list[int], size: int, spread: int = GROUP_SPREAD) -> list[list[int]]:
    """Consecutive rows, at most `size` per group, whose lengths differ by at most `spread`: a row
    computes (and masks) scores up to its group's longest length, so mixing a short and a long row
    would waste work (causal prefill rows are consecutive and differ by 1)."""
    groups: list[list[int]] = []
    for r, n in enumerate(lens):
        g = groups[-1] if groups else None
        if g and len(g) < size and abs(n - lens[g[0]]) <= spread:
            g.append(r)
        else:
            groups.append([r])
    return groups


def paged_fetch(kv_cache: Tensor, block_row: Tensor, d_v: int) -> Fetch:
    """Positions of one sequence read through its block table row from a paged cache
    [blocks, page, 1, D] (bf16 / fp32) or [blocks, page, 1, P] uint8 (packed fp8, dsa.hal.kv_format)."""
    page = kv_cache.shape[1]
    width = kv_cache.shape[-1]
    table = block_row.long()

    def fetch(start: int, end: int) -> Tensor:
        p0, p1 = start // page, -(-end // page)
        rows = kv_cache.index_select(0, table[p0:p1]).view(-1, width)[start - p0 * page : end - p0 * page]
        if kv_cache.dtype == torch.uint8:
            return kv_format.unpack(rows, d_v, torch.float32)
        return rows.float()

    return fetch


def dense_mla_decode(q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, sm_scale: float, d_v: int,
                     chunk_tokens: int = CHUNK_TOKENS) -> tuple[Tensor, Tensor]:
    """Dense decode over a paged cache: q [B, s_q, H, D] -> out [B, s_q, H, d_v] (q.dtype), lse [B, s_q, H].

    Query j of the s_q new tokens of sequence b sees positions [0, seq_lens[b] - s_q + j + 1) (causal).
    """
    B, s_q, H, D = q.shape
    out = torch.empty(B, s_q, H, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, s_q, H, dtype=torch.float32, device=q.device)
    for b in range(B):
        L = int(seq_lens[b])
        lengths = [max(0, L - s_q + j + 1) for j in range(s_q)]
        o, s = dense_attend(q[b], lengths, paged_fetch(kv_cache, block_table[b], d_v), sm_scale, d_v, chunk_tokens)
        out[b], lse[b] = o.to(q.dtype), s
    return out, lse


def dense_mla_prefill(q: Tensor, kv: Tensor, positions: Sequence[int], sm_scale: float, d_v: int,
                      chunk_tokens: int = CHUNK_TOKENS) -> tuple[Tensor, Tensor]:
    """Causal dense prefill rows: q [R, H, D] are the queries at `positions` of one sequence whose keys are
    kv [S, 1, D]; row r attends to [0, positions[r] + 1). -> out [R, H, d_v] (q.dtype), lse [R, H]."""
    flat = kv[:, 0]

    def fetch(start: int, end: int) -> Tensor:
        return flat[start:end].float()

    out, lse = dense_attend(q, [p + 1 for p in positions], fetch, sm_scale, d_v, chunk_tokens)
    return out.to(q.dtype), lse
