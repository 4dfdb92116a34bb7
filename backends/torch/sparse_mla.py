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

from runtime.ops import kv_format

# Budget for one chunk's temporaries, ~64 MiB: the gathered keys exist about three times over (the
# fetched copy, the fp32 [Rc, K, Dqk] block, the value slice) plus scores and probabilities.
_CHUNK_BYTES = 64 * 1024 * 1024

Fetch = Callable[[Tensor], Tensor]  # row ids [n] int64 (all valid) -> keys [n, Dqk] fp32


def attend_selected(q: Tensor, rows: Tensor, fetch: Fetch, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """Attention of q [R, H, Dqk] over the keys rows [R, K] (int64, -1 = skip) selected per row.

    fetch(ids) returns the keys of the given (valid) cache rows as fp32 [n, Dqk]; the value is the
    first d_v dims of the key. Returns out [R, H, d_v] fp32 and lse [R, H] fp32 (natural log);
    a row with no valid key gives out 0 and lse +inf.
    """
    R, H, D = q.shape
    K = rows.shape[1]
    out = torch.zeros(R, H, d_v, dtype=torch.float32, device=q.device)
    lse = torch.full((R, H), float("inf"), dtype=torch.float32, device=q.device)
    if R == 0 or K == 0:
        return out, lse
    chunk = max(1, _CHUNK_BYTES // (4 * K * (3 * D + 2 * H)))
    for r0 in range(0, R, chunk):
        r1 = min(R, r0 + chunk)
        idx = rows[r0:r1]  # [Rc, K]
        valid = idx >= 0  # [Rc, K]
        keys = torch.zeros(r1 - r0, K, D, dtype=torch.float32, device=q.device)  # [Rc, K, Dqk]
        if valid.any():
            keys[valid] = fetch(idx[valid])
        s = torch.einsum("rhd,rkd->rhk", q[r0:r1].float(), keys) * sm_scale  # [Rc, H, K]
        s.masked_fill_(~valid.unsqueeze(1), float("-inf"))
        m = s.amax(dim=-1, keepdim=True)  # [Rc, H, 1]; -inf for a row with nothing valid
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m)  # [Rc, H, K]; exactly 0 at skipped keys
        denom = p.sum(dim=-1)  # [Rc, H]
        o = torch.einsum("rhk,rkv->rhv", p, keys[..., :d_v])  # [Rc, H, d_v]
        empty = ~valid.any(dim=-1, keepdim=True).expand(-1, H)  # [Rc, H]: no valid key in the row
        denom_safe = torch.where(empty, torch.ones_like(denom), denom)
        out[r0:r1] = (o / denom_safe.unsqueeze(-1)).masked_fill_(empty.unsqueeze(-1), 0.0)
        lse[r0:r1] = torch.where(empty, torch.full_like(denom, float("inf")), torch.log(denom_safe) + m.squeeze(-1))
    return out, lse


def sparse_mla_prefill(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """q [T, H, Dqk], kv [S, 1, Dqk], indices [T, K] -> out [T, H, d_v] (q.dtype), lse [T, H] fp32."""
    if q.dim() != 3 or kv.dim() != 3 or kv.shape[1] != 1 or indices.dim() != 2:
        raise ValueError(f"sparse_mla_prefill: expected q [T, H, D], kv [S, 1, D], indices [T, K]; got "
                         f"{tuple(q.shape)}, {tuple(kv.shape)}, {tuple(indices.shape)}")
    T, H, D = q.shape
    S = kv.shape[0]
    if kv.shape[2] != D or indices.shape[0] != T or not 0 < d_v <= D:
        raise ValueError(f"sparse_mla_prefill: inconsistent shapes q {tuple(q.shape)}, kv {tuple(kv.shape)}, "
                         f"indices {tuple(indices.shape)}, d_v {d_v}")
    idx = indices.long()
    rows = torch.where((idx >= 0) & (idx < S), idx, torch.full_like(idx, -1))  # [T, K]
    flat = kv[:, 0]  # [S, D]
    out, lse = attend_selected(q, rows, lambda ids: flat[ids].float(), sm_scale, d_v)
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
    """Sparse MLA over the paged cache (bf16/fp32 or packed fp8 uint8). See runtime.ops.sparse_mla_decode."""
    if q.dim() != 4 or kv_cache.dim() != 4 or kv_cache.shape[2] != 1 or indices.dim() != 3:
        raise ValueError(f"sparse_mla_decode: expected q [B, s_q, H, D], kv_cache [blocks, page, 1, D or P], "
                         f"indices [B, s_q, K]; got {tuple(q.shape)}, {tuple(kv_cache.shape)}, {tuple(indices.shape)}")
    B, s_q, H, D = q.shape
    num_blocks, page = kv_cache.shape[:2]
    if indices.shape[:2] != (B, s_q) or block_table.dim() != 2 or block_table.shape[0] != B or tuple(seq_lens.shape) != (B,):
        raise ValueError(f"sparse_mla_decode: batch mismatch: q {tuple(q.shape)}, indices {tuple(indices.shape)}, "
                         f"block_table {tuple(block_table.shape)}, seq_lens {tuple(seq_lens.shape)}")
    if not 0 < d_v <= D:
        raise ValueError(f"sparse_mla_decode: d_v={d_v} must be in (0, {D}]")
    flat = kv_cache.reshape(num_blocks * page, kv_cache.shape[-1])  # [blocks*page, D or P]
    if kv_cache.dtype == torch.uint8:
        width = kv_format.packed_bytes(d_v, D - d_v)
        if flat.shape[-1] != width:
            raise ValueError(f"sparse_mla_decode: packed fp8 cache rows are {flat.shape[-1]} bytes, but q "
                             f"(D={D}, d_v={d_v}) needs {width}")

        def fetch(ids: Tensor) -> Tensor:
            return kv_format.unpack(flat[ids], d_v, torch.float32)  # only the selected tokens
    else:
        if flat.shape[-1] != D:
            raise ValueError(f"sparse_mla_decode: cache head dim {flat.shape[-1]} != q head dim {D}")

        def fetch(ids: Tensor) -> Tensor:
            return flat[ids].float()

    rows = _cache_rows(indices, block_table, seq_lens, page, num_blocks)  # [B, s_q, K]
    out, lse = attend_selected(q.reshape(B * s_q, H, D), rows.reshape(B * s_q, -1), fetch, sm_scale, d_v)
    return out.to(q.dtype).view(B, s_q, H, d_v), lse.view(B, s_q, H)
