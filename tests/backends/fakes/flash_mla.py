"""flash_mla stand-ins written from deepseek-ai/FlashMLA's documentation.

Sources: README.md ("FP8 KV Cache", "Sparse Attention (indices tensor)", "Sparse MLA Prefill" with its
equivalent PyTorch code), flash_mla/flash_mla_interface.py docstrings (shapes, lse [b, h_q, s_q] for
decode), tests/ref.py (natural-log lse, +inf and zero output for queries with no valid index) and the
first release's docstring ("lse ... 2-based log-sum-exp"). Preconditions asserted: bf16 q / kv, h_q in
{64, 128}, one kv head, d_v 512, d_qk 576, int32 indices, topk a multiple of 128 (the SM90 prefill
kernel walks 2 x 64-index tiles), 656-byte fp8 cache rows, is_fp8_kvcache with indices, causal off.

Every argument is checked and used (flash_mla_interface.py's docstrings are the contract):
prefill  q / kv / indices on one device; kv [s_kv, h_kv = 1, d_qk] with indices [s_q, h_kv, topk] (last dim
         contiguous); sm_scale a positive number (it scales the logits); d_v 512; attn_sink / topk_length /
         indexer_topk are not modelled and must be left at their defaults.
decode   block_table [b, max_blocks] int32 and cache_seqlens [b] int32 (0 <= cache_seqlens[i] <=
         max_blocks * page_block_size; the blocks holding the first cache_seqlens[i] tokens are blocks of
         k_cache). The sparse kernel itself may be given None for both ("Can be None when sparse attention
         is used"); when they ARE given, an index is documented as "(the page block where token t resides) *
         block_size + offset, where t is a token of the i-th batch": the stand-in maps every valid index
         back to its token t through block_table (t < cache_seqlens[i]; an index that is not such a token
         of ITS batch is rejected) and reads the key through block_table[i][t // page] at t % page. So a
         swapped, shifted or stale block_table / cache_seqlens fails here even though the kernel would
         not read them. tile_scheduler_metadata must be the SchedMeta our get_mla_metadata returned and
         num_splits None (the current API asserts both); get_mla_metadata records the old API's arguments
         (cache_seqlens, s_q * h_q // h_k, h_k, h_q, is_fp8_kvcache, topk), and the main call checks they
         describe THIS call (the old API built the schedule from them; the current one ignores them, so
         this is consistency with what our adapter means to pass). Like the current API, the first call
         records a config (b, s_q, h_q, page_block_size, h_k, causal, is_fp8_kvcache, topk) and the
         cache_seqlens values, and a reuse with other ones is rejected ("You may reuse the same sched_meta
         ... only when the tensor shapes and the values of cache_seqlens ... remain the same").
         softmax_scale None means 1 / sqrt(d_qk), as documented (so dropping it changes the result).
         k_cache contiguous (SM100: "must be contiguously valid"; asserted everywhere here).
"""
from __future__ import annotations

import dataclasses
import math
from numbers import Real
from types import SimpleNamespace
from typing import Optional

import torch

TOKEN_BYTES = 656  # 512 fp8 + 4 fp32 scales + 64 bf16


def _same_device(*tensors):
    devices = {t.device for t in tensors if t is not None}
    assert len(devices) == 1, f"all tensors on one device, got {sorted(map(str, devices))}"


def _check_scale(scale):
    assert isinstance(scale, Real) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0, (
        f"the softmax scale is a positive number, got {scale!r}")


def _check_prefill_args(q, kv, indices, sm_scale, d_v):
    _check_q(q, 1)
    _same_device(q, kv, indices)
    _check_scale(sm_scale)
    s_q, h_q, d_qk = q.shape
    assert d_v == 512, f"d_v can only be 512, got {d_v}"
    assert kv.dtype == torch.bfloat16 and kv.dim() == 3 and kv.shape[1] == 1 and kv.shape[2] == d_qk, (
        f"kv [s_kv, 1, {d_qk}] bf16, got {tuple(kv.shape)} {kv.dtype}")
    assert indices.dtype == torch.int32 and indices.dim() == 3, f"indices [s_q, h_kv, topk] int32, got {indices.dtype}"
    assert tuple(indices.shape[:2]) == (s_q, kv.shape[1]), (
        f"indices [s_q={s_q}, h_kv={kv.shape[1]}, topk], got {tuple(indices.shape)}")
    assert indices.stride(-1) == 1 and kv.stride(-1) == 1
    topk = indices.shape[-1]
    assert topk % 128 == 0, f"topk must be a multiple of 128 on SM90, got {topk}"


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


def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None, indexer_topk=0):
    """Sparse attention prefill kernel (later releases).

    Returns (output [s_q, h_q, d_v] bf16, max_logits [s_q, h_q], lse [s_q, h_q]); lse is the natural
    log-sum-exp (tests/ref.py), +inf where a query has no valid index (its output is 0).
    """
    _check_prefill_args(q, kv, indices, sm_scale, d_v)
    assert attn_sink is None and topk_length is None and indexer_topk == 0, "not modelled: leave at the defaults"
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
    _check_prefill_args(q, kv, indices, sm_scale, d_v)
    s_kv = kv.shape[0]
    idx = indices[:, 0].long()
    invalid = (idx < 0) | (idx >= s_kv)
    keys = kv[:, 0].float()[idx.clamp(0, s_kv - 1)]
    P = torch.einsum("rhd,rkd->rhk", q.float(), keys) * sm_scale * math.log2(math.e)
    P = P.masked_fill(invalid[:, None, :], -math.inf)
    lse2 = torch.logsumexp(P * math.log(2), dim=-1) * math.log2(math.e)
    out = torch.exp2(P - lse2[..., None]) @ keys[..., :d_v]
    return out.to(torch.bfloat16), P.amax(-1), lse2


@dataclasses.dataclass
class SchedMeta:
    """FlashMLASchedMeta stand-in that also records what get_mla_metadata was given (the old API's arguments)."""

    cache_seqlens: Optional[torch.Tensor]
    num_q_tokens_per_head_k: Optional[int]
    num_heads_k: Optional[int]
    num_heads_q: Optional[int]
    is_fp8_kvcache: Optional[bool]
    topk: Optional[int]
    have_initialized: bool = False
    config: Optional[tuple] = None
    seqlens_seen: Optional[torch.Tensor] = None  # the cache_seqlens values of the first call


def get_mla_metadata(cache_seqlens=None, num_q_tokens_per_head_k=None, num_heads_k=None, num_heads_q=None,
                     is_fp8_kvcache=None, topk=None):
    """(an uninitialised schedule, None), as the current API returns; the schedule records the old API's
    arguments so flash_mla_with_kvcache can check they describe the call it is used for."""
    if cache_seqlens is not None:
        assert cache_seqlens.dtype == torch.int32 and cache_seqlens.dim() == 1, "cache_seqlens [b] int32"
        cache_seqlens = cache_seqlens.clone()
    return SchedMeta(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_heads_q, is_fp8_kvcache, topk), None


def _check_schedule(meta, num_splits, q, k_cache, cache_seqlens, causal, is_fp8_kvcache, indices):
    assert isinstance(meta, SchedMeta), f"tile_scheduler_metadata must come from get_mla_metadata, got {type(meta)}"
    assert num_splits is None, "num_splits must be None (the second element get_mla_metadata returned)"
    b, s_q, h_q, _ = q.shape
    h_k, topk = k_cache.shape[2], indices.shape[-1]
    recorded = {
        "num_q_tokens_per_head_k": (meta.num_q_tokens_per_head_k, s_q * h_q // h_k),
        "num_heads_k": (meta.num_heads_k, h_k),
        "num_heads_q": (meta.num_heads_q, h_q),
        "is_fp8_kvcache": (meta.is_fp8_kvcache, is_fp8_kvcache),
        "topk": (meta.topk, topk),
    }
    for name, (given, here) in recorded.items():
        assert given == here, f"get_mla_metadata was given {name}={given!r}, this call has {here!r}"
    assert meta.cache_seqlens is not None and torch.equal(meta.cache_seqlens, cache_seqlens.cpu()), (
        "get_mla_metadata was given other cache_seqlens than this call")
    config = (b, s_q, h_q, k_cache.shape[1], h_k, causal, is_fp8_kvcache, topk)
    if not meta.have_initialized:
        meta.have_initialized, meta.config, meta.seqlens_seen = True, config, cache_seqlens.cpu().clone()
    else:
        assert meta.config == config, f"sched_meta reused for other arguments: {meta.config} vs {config}"
        assert torch.equal(meta.seqlens_seen, cache_seqlens.cpu()), "sched_meta reused with other cache_seqlens"


def _token_of_slot(block_table, cache_seqlens, page: int, num_blocks: int, b: int):
    """slot -> token position t of batch b (-1: not one of its first cache_seqlens[b] tokens), via block_table."""
    n = int(cache_seqlens[b])
    t = torch.arange(n)
    blocks = block_table[b, t // page].long()
    assert bool(((blocks >= 0) & (blocks < num_blocks)).all()), (
        f"block_table[{b}] names blocks outside the cache's {num_blocks}: {blocks.unique().tolist()}")
    slots = blocks * page + t % page
    assert slots.unique().numel() == n, f"block_table[{b}] gives two tokens one slot"
    token = torch.full((num_blocks * page,), -1, dtype=torch.long)
    token[slots] = t
    return token


def dequantize_fp8_tokens(raw):
    """uint8 [N, 656] -> fp32 [N, 576] per the README's "FP8 with scale" layout."""
    nope = raw[:, :512].contiguous().view(torch.float8_e4m3fn).float().view(-1, 4, 128)
    scales = raw[:, 512:528].contiguous().view(torch.float32)  # [N, 4]: scale i for values 128*i ..
    rope = raw[:, 528:656].contiguous().view(torch.bfloat16).float()
    return torch.cat([(nope * scales[..., None]).view(-1, 512), rope], dim=-1)


def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                           num_splits=None, softmax_scale=None, causal=False, is_fp8_kvcache=False, indices=None,
                           attn_sink=None, extra_k_cache=None, extra_indices_in_kvcache=None, topk_length=None,
                           extra_topk_length=None):
    """Sparse decode: out (b, s_q, h_q, head_dim_v) bf16, softmax_lse (b, h_q, s_q) fp32 natural log.

    indices[i][j][k] = page block of the token * page_block_size + offset in the block; invalid entries
    are -1. Each valid index is mapped back to its token through block_table (it must be one of batch
    i's first cache_seqlens[i] tokens) and that token is read, through block_table, from the 656-byte
    fp8 cache. See the module docstring for what is checked.
    """
    _check_q(q, 2)
    assert indices is not None and is_fp8_kvcache and not causal, "sparse decode: fp8 cache, indices, causal off"
    assert attn_sink is None and extra_k_cache is None and extra_indices_in_kvcache is None, "not modelled"
    assert topk_length is None and extra_topk_length is None, "not modelled"
    assert head_dim_v == 512, f"head_dim_v must be 512, got {head_dim_v}"
    b, s_q, h_q, d_qk = q.shape
    softmax_scale = d_qk ** -0.5 if softmax_scale is None else softmax_scale  # the documented default
    _check_scale(softmax_scale)
    assert k_cache.dtype in (torch.float8_e4m3fn, torch.uint8, torch.int8) and k_cache.dim() == 4
    num_blocks, page, h_k, token_bytes = k_cache.shape
    assert h_k == 1 and token_bytes == TOKEN_BYTES, f"k_cache [blocks, page, 1, {TOKEN_BYTES}], got {k_cache.shape}"
    assert k_cache.is_contiguous(), "the sparse kernels read the cache as one contiguous array"
    assert block_table is not None and cache_seqlens is not None, "given here (our adapter passes both)"
    _same_device(q, k_cache, block_table, cache_seqlens, indices)
    assert block_table.dtype == torch.int32 and block_table.dim() == 2 and block_table.shape[0] == b, (
        f"block_table [b={b}, max_blocks] int32, got {tuple(block_table.shape)} {block_table.dtype}")
    assert cache_seqlens.dtype == torch.int32 and tuple(cache_seqlens.shape) == (b,), (
        f"cache_seqlens [b={b}] int32, got {tuple(cache_seqlens.shape)} {cache_seqlens.dtype}")
    lens = cache_seqlens.long()
    assert bool(((lens >= 0) & (lens <= block_table.shape[1] * page)).all()), (
        f"cache_seqlens {lens.tolist()} beyond block_table's capacity {block_table.shape[1]} x {page}")
    assert indices.dtype == torch.int32 and indices.dim() == 3 and tuple(indices.shape[:2]) == (b, s_q), (
        f"indices [b={b}, s_q={s_q}, topk] int32, got {tuple(indices.shape)} {indices.dtype}")
    assert indices.stride(-1) == 1
    _check_schedule(tile_scheduler_metadata, num_splits, q, k_cache, cache_seqlens, causal, is_fp8_kvcache, indices)
    num_tokens = num_blocks * page
    idx = indices.long()
    assert bool(((idx == -1) | ((idx >= 0) & (idx < num_tokens))).all()), "indices are slots in the cache or -1"
    raw = k_cache.view(torch.uint8).reshape(num_tokens, TOKEN_BYTES)
    tokens = dequantize_fp8_tokens(raw).to(torch.bfloat16).float()  # "dequantizes the cache to bfloat16"
    topk = idx.shape[-1]
    table = block_table.cpu().long()
    keys = torch.empty(b, s_q, topk, d_qk)
    for i in range(b):
        token = _token_of_slot(table, cache_seqlens.cpu(), page, num_blocks, i)
        t = token[idx[i].cpu().clamp_min(0)]  # [s_q, topk]
        bad = (idx[i].cpu() != -1) & (t < 0)
        assert not bool(bad.any()), (
            f"indices of batch {i} name slots {idx[i].cpu()[bad].unique().tolist()[:8]} that block_table does not "
            f"give to one of its first {int(lens[i])} tokens")
        t = t.clamp_min(0)
        slot = table[i, t // page] * page + t % page  # read through block_table
        keys[i] = tokens[torch.where(idx[i].cpu() == -1, 0, slot)]
    out, lse, _ = _attend(q.reshape(b * s_q, h_q, d_qk), keys.view(b * s_q, topk, d_qk),
                          (idx == -1).view(b * s_q, topk), softmax_scale, head_dim_v)
    out = out.view(b, s_q, h_q, head_dim_v).to(torch.bfloat16)
    return out, lse.view(b, s_q, h_q).transpose(1, 2)


def module(first_release: bool = False) -> SimpleNamespace:
    """A `flash_mla` namespace; `first_release` swaps in the base-2-lse prefill function."""
    return SimpleNamespace(
        flash_mla_sparse_fwd=flash_mla_sparse_fwd_first_release if first_release else flash_mla_sparse_fwd,
        flash_mla_with_kvcache=flash_mla_with_kvcache,
        get_mla_metadata=get_mla_metadata,
    )
