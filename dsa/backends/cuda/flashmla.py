"""FlashMLA adapters: sparse_mla_prefill -> flash_mla_sparse_fwd, sparse_mla_decode -> flash_mla_with_kvcache.

FlashMLA's documented conventions (README, flash_mla_interface.py, tests/ref.py and tests/quant.py of
deepseek-ai/FlashMLA) and what the adapters do about each:

prefill  flash_mla_sparse_fwd(q [s_q, h_q, d_qk] bf16, kv [s_kv, 1, d_qk] bf16, indices [s_q, 1, topk]
         int32, sm_scale, d_v=512) -> (out [s_q, h_q, d_v] bf16, max_logits, lse [s_q, h_q]).
         Invalid indices are -1 or >= s_kv, anywhere in the row: the HAL's rule, passed through.
         h_q in {64, 128}: other head counts are zero-padded to the next one (heads are independent;
         the padded outputs are dropped) and more than 128 run in chunks of 128. On SM100 the prefill
         pads to 128 always: releases before the head-64 SM100 prefill kernel take only 128 there
         (vLLM pads the same way).
         topk: the SM90 kernel walks indices in 128-wide tiles, so rows are padded with -1 to a
         multiple of 128.
         lse: the first release documents a base-2 log-sum-exp ("2-based log-sum-exp"; README:
         lse = log2sumexp2(sm_scale * log2(e) * q.k)); later releases return the natural one
         (tests/ref.py: torch.logsumexp). The adapter reads which from the installed function's
         docstring and multiplies a base-2 lse by ln 2.
decode   flash_mla_with_kvcache(q [b, s_q, h_q, d_qk] bf16, k_cache [blocks, page, 1, 656], block_table,
         cache_seqlens, head_dim_v=512, tile_scheduler_metadata, num_splits, softmax_scale=...,
         causal=False, is_fp8_kvcache=True, indices [b, s_q, topk]) -> (out [b, s_q, h_q, d_v],
         lse [b, h_q, s_q]).
         The cache: FlashMLA's "FP8 with scale" token is 512 float8_e4m3 + 4 float32 scales (one per
         128 values, first scale for the first 128) + 64 bfloat16 rope = 656 bytes: byte for byte the
         layout of dsa.hal.kv_format (whose scales are powers of two, as FlashMLA's own quantiser
         tests/quant.py makes them). The cache is passed as is (viewed as float8_e4m3fn, which every
         release accepts); nothing is repacked.
         Indices: FlashMLA wants block_index * page_block_size + offset (the block table is not read
         when indices are given); the HAL gives logical positions, translated through block_table,
         with -1 for positions outside [0, seq_lens[b]). Sparse decode exists for the fp8 cache only.
         lse comes back [b, h_q, s_q], natural log: transposed to the HAL's [b, s_q, h_q].
both     A query row with no valid index: out 0 and lse +inf (FlashMLA's convention, and the HAL's);
         set explicitly after the call so a release that differs cannot leak through.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
from torch import Tensor

from dsa.backends import adapt, vendor
from dsa.hal import kv_format
from dsa.hal.capability import Requires

MODULE = "flash_mla"
HEADS = (64, 128)  # h_q the sparse kernels are built for (prefill and decode)
TOPK_TILE = 128  # index rows are padded with -1 to a multiple of this
PAGE = 64  # FlashMLA's paged-cache block size (page_block_size)
D_V, D_ROPE = 512, 64  # the V3.2 shapes the sparse kernels are built for (d_qk = 576)
ARCHS = ("sm90", "sm100")  # no upstream sparse kernel for SM80 / SM120

# Any head count: padded to 64 / 128, chunked above 128 (SM100 prefill: 128 only, see _prefill_heads).
PREFILL = Requires(modules=(MODULE,), platforms=("cuda",), archs=ARCHS, load=vendor.importer)
# Sparse decode reads only the 656-byte fp8 cache (kv_cache.dtype: fp8), in FlashMLA's 64-token pages.
DECODE = dataclasses.replace(PREFILL, kv_cache_dtypes=("fp8",), page_sizes=(PAGE,))


def _lib():
    return vendor.load(MODULE)


def _prefill_heads(device: torch.device) -> tuple[int, ...]:
    """Head counts the sparse prefill kernel takes on this device (SM100: 128 in every release)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 10:
        return (128,)
    return HEADS


@functools.lru_cache(maxsize=8)
def _prefill_lse_is_base2(fn) -> bool:
    """The first FlashMLA release documents `lse` as "2-based log-sum-exp"; later ones as natural."""
    return "2-based" in (getattr(fn, "__doc__", None) or "")


# ---------------------------------------------------------------- per-call checks (after the declaration's module)


def _shape_reason(q: Tensor, d_v: int) -> Optional[str]:
    if q.dtype != torch.bfloat16:
        return f"FlashMLA takes a bf16 query, got {q.dtype}"
    if d_v != D_V or q.shape[-1] != D_V + D_ROPE:
        return f"FlashMLA's sparse kernels are built for d_qk {D_V + D_ROPE} / d_v {D_V}, got {q.shape[-1]} / {d_v}"
    return None


def prefill_args_reason(q, kv, indices, sm_scale, d_v) -> Optional[str]:
    why = _shape_reason(q, d_v)
    if why:
        return why
    if kv.dtype != torch.bfloat16:
        return f"flash_mla_sparse_fwd takes a bf16 kv, got {kv.dtype}"
    return None


def decode_args_reason(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v) -> Optional[str]:
    why = _shape_reason(q, d_v)
    if why:
        return why
    token_bytes = kv_format.packed_bytes(D_V, D_ROPE)
    if kv_cache.dtype != torch.uint8 or kv_cache.shape[-1] != token_bytes:
        return (f"FlashMLA's sparse decode reads the {token_bytes}-byte fp8 cache only, "
                f"got {kv_cache.dtype} rows of {kv_cache.shape[-1]}")
    if kv_cache.shape[1] != PAGE:
        return f"FlashMLA's paged cache uses {PAGE}-token pages, got {kv_cache.shape[1]}"
    return None


# ---------------------------------------------------------------- prefill


def sparse_mla_prefill(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """HAL sparse_mla_prefill on flash_mla_sparse_fwd (see the module docstring for the translation)."""
    fn = _lib().flash_mla_sparse_fwd
    T, H, _ = q.shape
    valid = adapt.prefill_valid(indices, kv.shape[0])  # [T, K]
    idx = torch.where(valid, indices.long(), -1).to(torch.int32)
    idx = adapt.pad_dim(idx, -1, adapt.ceil_to(max(idx.shape[-1], 1), TOPK_TILE), -1).unsqueeze(1)  # [T, 1, K']
    kv = kv.contiguous()
    outs, lses = [], []
    for start, count, padded in adapt.head_chunks(H, _prefill_heads(q.device)):
        qc = adapt.pad_dim(q[:, start : start + count], 1, padded).contiguous()
        out, _max_logits, lse = fn(qc, kv, idx, sm_scale, d_v)[:3]
        outs.append(out[:, :count])
        lses.append(lse[:, :count].float())
    out, lse = torch.cat(outs, dim=1), torch.cat(lses, dim=1)
    if _prefill_lse_is_base2(fn):
        lse = adapt.lse_base2_to_natural(lse)
    out, lse = adapt.empty_rows_to_convention(out.to(q.dtype), lse, ~valid.any(-1))
    return out, lse


# ---------------------------------------------------------------- decode


def sparse_mla_decode(q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor,
                      sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """HAL sparse_mla_decode on flash_mla_with_kvcache (fp8 656-byte cache, indices = block*page+offset)."""
    lib = _lib()
    B, s_q, H, _ = q.shape
    page = kv_cache.shape[1]
    valid = adapt.decode_valid(indices, seq_lens)  # [B, s_q, K]
    slots = adapt.logical_to_slots(indices, block_table, seq_lens, page)
    slots = adapt.pad_dim(slots, -1, adapt.ceil_to(max(slots.shape[-1], 1), TOPK_TILE), -1).contiguous()
    topk = slots.shape[-1]
    cache = kv_cache.view(torch.float8_e4m3fn)  # the same 656 bytes per token; FlashMLA's own dtype
    cache_seqlens = seq_lens.to(torch.int32)
    table = block_table.to(torch.int32)
    outs, lses = [], []
    for start, count, padded in adapt.head_chunks(H, HEADS):
        qc = adapt.pad_dim(q[:, :, start : start + count], 2, padded).contiguous()
        # get_mla_metadata: the old API (cache_seqlens, s_q * h_q // h_kv, h_kv, h_q, is_fp8, topk) builds
        # the schedule; the new one ignores its arguments and returns (empty schedule, None).
        sched, splits = lib.get_mla_metadata(cache_seqlens, s_q * padded, 1, padded, True, topk)
        out, lse = lib.flash_mla_with_kvcache(
            qc, cache, table, cache_seqlens, d_v, sched, splits,
            softmax_scale=sm_scale, causal=False, is_fp8_kvcache=True, indices=slots,
        )
        outs.append(out[:, :, :count])
        lses.append(lse.transpose(1, 2)[:, :, :count].float())  # [b, h_q, s_q] -> [b, s_q, h_q]
    out, lse = torch.cat(outs, dim=2), torch.cat(lses, dim=2)
    out, lse = adapt.empty_rows_to_convention(out.to(q.dtype), lse, ~valid.any(-1))
    return out, lse
