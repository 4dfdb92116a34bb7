"""flash_mla stand-ins written from deepseek-ai/FlashMLA's documentation.

Sources: README.md ("FP8 KV Cache", "Sparse Attention (indices tensor)", "Sparse MLA Prefill" with its
equivalent PyTorch code), flash_mla/flash_mla_interface.py docstrings (shapes, lse [b, h_q, s_q] for
decode), tests/ref.py (natural-log lse, +inf and zero output for queries with no valid index) and the
first release's docstring ("lse ... 2-based log-sum-exp"). Preconditions asserted: bf16 q / kv, h_q in
{64, 128}, one kv head, d_v 512, d_qk 576, int32 indices, topk a multiple of 128 (the SM90 prefill
kernel walks 2 x 64-index tiles), 656-byte fp8 cache rows, is_fp8_kvcache with indices, causal off.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

TOKEN_BYTES = 656  # 512 fp8 + 4 fp32 scales + 64 bf16


def _check_q(q, h_dim: int):
    assert q.dtype == torch.bfloat16, f"FlashMLA takes a bf16 query, got {q.dtype}"
    assert q.shape[h_dim] in (64, 128), f"h_q must be 64 or 128, got {q.shape[h_dim]}"
    assert q.shape[-1] == 576, f"d_qk must be 576 for V3.2, got {q.shape[-1]}"
    assert q.is_contiguous()


def _attend(q, keys, invalid, sm_scale, d_v):
    """q [R, h, d], keys [R, k, d] fp32, invalid [R, k] -> out [R, h, d_v] fp32, lse [R, h] natural (+inf if empty)."""
    P = torch.einsum("rhd,rkd->rhk", q.float(), keys) * sm_scale
    P = P.masked_fill(invalid[:, None, :], -math.inf)
    lse = torch.logsumexp(P, dim=-1)
    max_logits = P.amax(dim=-1)
    lse_for_o = lse.masked_fill(lse == -math.inf, math.inf)  # rows with nothing to attend: output 0
    out = torch.exp(P - lse_for_o[..., None]) @ keys[..., :d_v]
    return out, lse.masked_fill(lse == -math.inf, math.inf), max_logits


def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
    """Sparse attention prefill kernel (later releases).

    Returns (output [s_q, h_q, d_v] bf16, max_logits [s_q, h_q], lse [s_q, h_q]); lse is the natural
    log-sum-exp (tests/ref.py), +inf where a query has no valid index (its output is 0).
    """
    _check_q(q, 1)
    s_q, h_q, d_qk = q.shape
    assert kv.dtype == torch.bfloat16 and kv.dim() == 3 and kv.shape[1] == 1 and kv.shape[2] == d_qk
    assert d_v == 512 and attn_sink is None and topk_length is None
    assert indices.dtype == torch.int32 and indices.dim() == 3 and indices.shape[:2] == (s_q, 1)
    topk = indices.shape[-1]
    assert topk % 128 == 0, f"topk must be a multiple of 128 on SM90, got {topk}"
    s_kv = kv.shape[0]
    idx = indices[:, 0].long()
    invalid = (idx < 0) | (idx >= s_kv)  # "-1 or any number >= s_kv"
    keys = kv[:, 0].float()[idx.clamp(0, s_kv - 1)]  # [s_q, topk, d_qk]
    out, lse, max_logits = _attend(q, keys, invalid, sm_scale, d_v)
    return out.to(torch.bfloat16), max_logits, lse


def flash_mla_sparse_fwd_first_release(q, kv, indices, sm_scale, d_v=512):
    """
    Sparse attention prefill kernel

    Returns:
        (output, max_logits, lse)
        - lse: [s_q, h_q], float, 2-based log-sum-exp
    """
    # The first release's README code, literally: P = q.k * sm_scale * log2(e); lse = log2sumexp2(P);
    # out = exp2(P - lse) @ v. A row with no valid index is not described: the formula gives lse -inf
    # and out NaN, which is what this stand-in returns (the adapter must not pass either through).
    _check_q(q, 1)
    s_q, h_q, _ = q.shape
    assert indices.shape[-1] % 128 == 0
    s_kv = kv.shape[0]
    idx = indices[:, 0].long()
    invalid = (idx < 0) | (idx >= s_kv)
    keys = kv[:, 0].float()[idx.clamp(0, s_kv - 1)]
    P = torch.einsum("rhd,rkd->rhk", q.float(), keys) * sm_scale * math.log2(math.e)
    P = P.masked_fill(invalid[:, None, :], -math.inf)
    lse2 = torch.logsumexp(P * math.log(2), dim=-1) * math.log2(math.e)
    out = torch.exp2(P - lse2[..., None]) @ keys[..., :d_v]
    return out.to(torch.bfloat16), P.amax(-1), lse2


def get_mla_metadata(*args, **kwargs):
    """New API: the arguments are ignored; returns (an empty schedule object, None)."""
    return SimpleNamespace(have_initialized=False), None


def dequantize_fp8_tokens(raw):
    """uint8 [N, 656] -> fp32 [N, 576] per the README's "FP8 with scale" layout."""
    nope = raw[:, :512].contiguous().view(torch.float8_e4m3fn).float().view(-1, 4, 128)
    scales = raw[:, 512:528].contiguous().view(torch.float32)  # [N, 4]: scale i for values 128*i ..
    rope = raw[:, 528:656].contiguous().view(torch.bfloat16).float()
    return torch.cat([(nope * scales[..., None]).view(-1, 512), rope], dim=-1)


def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                           num_splits=None, softmax_scale=None, causal=False, is_fp8_kvcache=False, indices=None):
    """Sparse decode: out (b, s_q, h_q, head_dim_v) bf16, softmax_lse (b, h_q, s_q) fp32 natural log.

    indices[i][j][k] = page block of the token * page_block_size + offset in the block (the block
    table is not read); invalid entries are -1. Tokens are read from the 656-byte fp8 cache.
    """
    _check_q(q, 2)
    assert indices is not None and is_fp8_kvcache and not causal, "sparse decode: fp8 cache, indices, causal off"
    assert head_dim_v == 512 and softmax_scale is not None
    assert k_cache.dtype in (torch.float8_e4m3fn, torch.uint8, torch.int8) and k_cache.dim() == 4
    assert k_cache.shape[2] == 1 and k_cache.shape[3] == TOKEN_BYTES
    b, s_q, h_q, _ = q.shape
    assert indices.dtype == torch.int32 and tuple(indices.shape[:2]) == (b, s_q)
    num_tokens = k_cache.shape[0] * k_cache.shape[1]
    idx = indices.long()
    assert bool(((idx == -1) | ((idx >= 0) & (idx < num_tokens))).all()), "indices are slots in the cache or -1"
    raw = k_cache.view(torch.uint8).reshape(num_tokens, TOKEN_BYTES)
    tokens = dequantize_fp8_tokens(raw).to(torch.bfloat16).float()  # "dequantizes the cache to bfloat16"
    topk = idx.shape[-1]
    keys = tokens[idx.clamp_min(0).view(-1)].view(b * s_q, topk, 576)
    out, lse, _ = _attend(q.reshape(b * s_q, h_q, 576), keys, (idx == -1).view(b * s_q, topk), softmax_scale,
                          head_dim_v)
    out = out.view(b, s_q, h_q, head_dim_v).to(torch.bfloat16)
    return out, lse.view(b, s_q, h_q).transpose(1, 2)


def module(first_release: bool = False) -> SimpleNamespace:
    """A `flash_mla` namespace; `first_release` swaps in the base-2-lse prefill function."""
    return SimpleNamespace(
        flash_mla_sparse_fwd=flash_mla_sparse_fwd_first_release if first_release else flash_mla_sparse_fwd,
        flash_mla_with_kvcache=flash_mla_with_kvcache,
        get_mla_metadata=get_mla_metadata,
    )
