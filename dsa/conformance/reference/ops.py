"""The fp64 oracle of every HAL op (contracts in dsa/hal/*.py), in the plainest dense form.

Each `ref_<op>` takes the op's inputs (fp8 inputs already quantised) and returns float64 results,
except `ref_act_quant`, whose results are the exact fp8 bytes and fp32 scales the contract defines.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .fp8 import E4M3_MAX, round_to_e4m3, to_f64
from .kv_layout import unpack_tokens

F64 = torch.float64
AMAX_FLOOR = float(torch.tensor(1e-4, dtype=torch.float32))  # amax is an fp32 quantity: the fp32 1e-4


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _to_f32(x: Tensor) -> Tensor:
    """Round float64 values to the nearest fp32 (as a real fp32 kernel's result would be), keep fp64."""
    return x.to(torch.float32).to(F64)


# ---------------------------------------------------------------- fp8 quantisation and dequantisation


def ref_act_quant(x: Tensor, block_size: int, ue8m0: bool) -> tuple[Tensor, Tensor]:
    """x [..., K] -> (float8_e4m3fn [..., K], float32 scales [..., ceil(K / block_size)]).

    amax = max(max|x_b|, 1e-4); s = amax / 448 in fp32; s = 2^ceil(log2 s) if ue8m0;
    y = RNE_fp8(clamp(fp32(x / s), -448, 448)). x, amax and s are fp32 values, so x / s is the fp32
    quotient (computed exactly in fp64, then rounded once to fp32: correctly rounded).
    """
    K = x.shape[-1]
    nb = _ceil_div(K, block_size)
    xf = x.to(F64)
    padded = torch.zeros(*x.shape[:-1], nb * block_size, dtype=F64)
    padded[..., :K] = xf  # zero padding never raises amax (amax >= 1e-4 > 0)
    blocks = padded.reshape(*x.shape[:-1], nb, block_size)
    amax = blocks.abs().amax(-1).clamp_min(AMAX_FLOOR)
    scale = _to_f32(amax / E4M3_MAX)
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))  # log2 of an exact fp64 value: exact at powers of 2
    q = _to_f32(blocks / scale.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX)
    q = q.reshape(*x.shape[:-1], nb * block_size)[..., :K]
    return round_to_e4m3(q), scale.to(torch.float32)


def dequant_rows(x: Tensor, x_scale: Tensor, block: int = 128) -> Tensor:
    """fp8 [..., K] with 1 x block scales [..., ceil(K/block)] -> float64 [..., K]."""
    K = x.shape[-1]
    s = to_f64(x_scale).repeat_interleave(block, dim=-1)[..., :K]
    return to_f64(x) * s


def dequant_blocks(w: Tensor, w_scale: Tensor, block: int = 128) -> Tensor:
    """fp8 [N, K] with block x block scales [ceil(N/block), ceil(K/block)] -> float64 [N, K]."""
    N, K = w.shape
    s = to_f64(w_scale).repeat_interleave(block, dim=0)[:N].repeat_interleave(block, dim=1)[:, :K]
    return to_f64(w) * s


def ref_fp8_linear(x: Tensor, weight: Tensor, weight_scale_inv: Tensor, ue8m0: bool) -> Tensor:
    """x [..., K] -> float64 [..., N]: act_quant(x, 128, ue8m0), dequantise both sides, one matmul."""
    xq, xs = ref_act_quant(x, 128, ue8m0)
    return dequant_rows(xq, xs) @ dequant_blocks(weight, weight_scale_inv).T


# ---------------------------------------------------------------- MoE


def ref_grouped_gemm(
    x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor
) -> Tensor:
    """float64 [M, N]: group e (consecutive rows, m_sizes[e] of them) times w[e]^T; padding rows 0."""
    xf = to_f64(x) if x_scale is None else dequant_rows(x, x_scale)
    y = torch.zeros(x.shape[0], w.shape[1], dtype=F64)
    start = 0
    for e, rows in enumerate(m_sizes.tolist()):
        we = to_f64(w[e]) if w_scale is None else dequant_blocks(w[e], w_scale[e])
        y[start : start + rows] = xf[start : start + rows] @ we.T
        start += rows
    return y


# ---------------------------------------------------------------- indexer


def ref_indexer_scores(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Full score matrix [T, S] float64; -inf where key s is not visible to query t."""
    S = k.shape[0]
    dots = torch.einsum("thd,sd->ths", to_f64(q), to_f64(k)).clamp_min(0)  # relu(q[t,h] . k[s])
    scores = torch.einsum("th,ths->ts", to_f64(weights), dots) * to_f64(k_scale)[None, :]
    s = torch.arange(S)
    visible = (s[None, :] >= starts.long()[:, None]) & (s[None, :] < ends.long()[:, None])
    return scores.masked_fill(~visible, -math.inf)


def ref_topk_count(starts: Tensor, ends: Tensor, topk: int) -> Tensor:
    """[T] number of valid entries each row of indexer_topk must hold: min(topk, visible keys)."""
    return (ends.long() - starts.long()).clamp(0, topk)


# ---------------------------------------------------------------- sparse MLA


def index_mask(indices: Tensor, num_keys: int) -> Tensor:
    """indices [R, K] (any values) -> bool [R, num_keys]: True where the key is selected by the row."""
    idx = indices.long()
    valid = (idx >= 0) & (idx < num_keys)
    mask = torch.zeros(idx.shape[0], num_keys + 1, dtype=torch.bool)
    mask.scatter_(1, torch.where(valid, idx, num_keys), True)  # invalid ones land in a dummy column
    return mask[:, :num_keys]


def masked_attention(q: Tensor, kv: Tensor, mask: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """Dense attention in fp64. q [R, H, D], kv [S, D], mask [R, S] -> out [R, H, d_v], lse [R, H].

    Rows whose mask is empty: out 0, lse +inf.
    """
    logits = sm_scale * torch.einsum("rhd,sd->rhs", q, kv)
    logits = logits.masked_fill(~mask[:, None, :], -math.inf)
    empty = ~mask.any(-1)  # [R]
    lse = torch.logsumexp(logits, dim=-1)  # -inf for empty rows
    p = torch.exp(logits - lse.unsqueeze(-1))
    p = p.masked_fill(empty[:, None, None], 0.0)  # exp(-inf - -inf) = nan there
    out = torch.einsum("rhs,sd->rhd", p, kv[:, :d_v])
    lse = lse.masked_fill(empty[:, None], math.inf)
    return out, lse


def ref_sparse_mla_prefill(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """q [T, H, Dqk], kv [S, 1, Dqk], indices [T, K] -> out [T, H, d_v], lse [T, H], float64."""
    mask = index_mask(indices, kv.shape[0])
    return masked_attention(to_f64(q), to_f64(kv[:, 0]), mask, sm_scale, d_v)


def unpage(kv_cache: Tensor, block_row: Tensor, seq_len: int, d_v: int) -> Tensor:
    """The first seq_len tokens of one sequence, in logical order, as float64 [seq_len, Dqk]."""
    page = kv_cache.shape[1]
    pos = torch.arange(seq_len)
    rows = kv_cache[block_row.long()[pos // page], pos % page, 0]  # [seq_len, Dqk or P]
    if kv_cache.dtype == torch.uint8:
        return unpack_tokens(rows, d_v)
    return to_f64(rows)


def ref_sparse_mla_decode(
    q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor, sm_scale: float, d_v: int
) -> tuple[Tensor, Tensor]:
    """q [B, s_q, H, Dqk], paged cache -> out [B, s_q, H, d_v], lse [B, s_q, H], float64."""
    B, s_q, H, _ = q.shape
    out = torch.empty(B, s_q, H, d_v, dtype=F64)
    lse = torch.empty(B, s_q, H, dtype=F64)
    for b in range(B):
        seq_len = int(seq_lens[b])
        kv = unpage(kv_cache, block_table[b], seq_len, d_v)
        mask = index_mask(indices[b], seq_len)
        out[b], lse[b] = masked_attention(to_f64(q[b]), kv, mask, sm_scale, d_v)
    return out, lse
