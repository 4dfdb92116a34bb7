"""aiter stand-ins written from ROCm/aiter's documentation and signatures.

Sources: aiter/mla.py (mla_decode_fwd's parameters: q [total_s, H, 576], kv_buffer [pages, page_size,
nhead_kv, 576], o written in place, qo_indptr / kv_indptr / kv_indices / kv_last_page_lens, page_size,
sm_scale, return_lse -> (logits, final_lse [total_s, H]) with an exp-based (natural) reduction; the
16 / 128-head limit vLLM asserts for the asm kernels), aiter/ops/topk.py (top_k_per_row_prefill: rows
[rowStarts, rowEnds) of the logits, `stable` = smallest index wins ties, indices written in place; vLLM
subtracts the row starts afterwards, so they are absolute columns), the Triton fp8_mqa_logits docstring
(Q [seq_len, H, D] fp8, KV [seq_len_kv, D] fp8, kv_scales, weights, cu_starts / cu_ends, logits
initialised to -inf, H and D powers of two), gemm_a8w8_blockscale (Y = X W^T with 1x128 / 128x128
fp32 block scales, bf16 / fp16 out) and the Triton MoE GEMM fused_moe docstring (vLLM's
sorted_token_ids / expert_ids / num_tokens_post_padded layout, block-wise fp8 scales). The fp8 the
kernels compute in is AITER's `dtypes.fp8`: float8_e4m3fnuz on gfx942, e4m3fn on gfx950.

Every argument is checked and used:
mla_decode_fwd  the paged ragged layout is modelled in general: sequence i has the query rows
         qo_indptr[i]:qo_indptr[i+1] (at most max_seqlen_q of them; only 1 per sequence is modelled, the
         causal rule among several is not read here) and the pages kv_indices[kv_indptr[i]:kv_indptr[i+1]]
         of kv_buffer [pages, page_size, nhead_kv, 576], all full but the last, which holds
         kv_last_page_lens[i] tokens (1 <= it <= page_size). So page_size, kv_last_page_lens and both
         indptrs change which tokens are read. indptrs start at 0 and never decrease, kv_indptr[-1] =
         len(kv_indices), every page index is a page of kv_buffer, all index tensors int32 on q's device.
         sm_scale a positive number (no default is modelled: required), logit_cap 0, o [total_s, H, 512]
         bf16 written in place, h_q in {16, 128} over nhead_kv = 1. Other keyword arguments (splits, work
         metadata, q / kv scales) are not modelled and must be None / False.
fp8_mqa_logits  Q [T, H, D], KV [S, D], kv_scales [S], weights [T, H], cu_starts / cu_ends [T] int32
         with 0 <= start <= end <= S (our adapter's windows; the kernel's behaviour outside that is not
         described), one device.
top_k_per_row_prefill  logits [numRows, >= k] fp32 with the given strides, rowStarts / rowEnds [numRows]
         int32 with 0 <= start <= end <= logits' width, indices [numRows, k] int32 contiguous, values None
         or [numRows, k] fp32.
fused_moe  A [M, K], B [E, N, K], C [M, top_k, N] zeroed by the caller and written for listed tokens;
         topk_weights / topk_ids [M, top_k] (topk_ids only by numel(): the sentinel = the number of valid
         token slots; the kernel reads expert_ids, not topk_ids' values); sorted_token_ids entries in
         [0, sentinel] (sentinel = padding), num_tokens_post_padded [1] a multiple of BLOCK_SIZE_M within
         sorted_token_ids, expert_ids [num blocks] in [0, E) (or -1: skipped); compute_type the Triton dtype
         of C (triton.language.bfloat16 for a bf16 C); B_zp None; block_shape [128, 128] with fp8 (the
         scales' block), None without; config carries the four BLOCK_SIZE / GROUP_SIZE keys.
gemm_a8w8_blockscale  XQ [M, K], WQ [N, K] of the device fp8, x_scale [M, K/128] / w_scale [N/128, K/128]
         fp32, contiguous (the CK kernel reads them as dense row-major; our adapter makes them so).
"""
from __future__ import annotations

import math
from numbers import Real
from types import SimpleNamespace

import torch

TL_BF16 = SimpleNamespace(name="triton.language.bfloat16")  # the fake triton.language's bfloat16


def _same_device(*tensors):
    devices = {t.device for t in tensors if t is not None}
    assert len(devices) == 1, f"all tensors on one device, got {sorted(map(str, devices))}"


def _indptr(ptr, n: int, name: str):
    assert ptr.dtype == torch.int32 and tuple(ptr.shape) == (n + 1,), f"{name} [{n + 1}] int32, got {tuple(ptr.shape)}"
    assert int(ptr[0]) == 0 and bool((ptr[1:] >= ptr[:-1]).all()), f"{name} starts at 0 and never decreases"


def modules(gfx: str = "gfx942") -> dict:
    fp8 = torch.float8_e4m3fnuz if gfx == "gfx942" else torch.float8_e4m3fn

    def mla_decode_fwd(q, kv_buffer, o, qo_indptr, kv_indptr, kv_indices, kv_last_page_lens, max_seqlen_q,
                       page_size=1, nhead_kv=1, sm_scale=None, logit_cap=0.0, num_kv_splits=None, return_lse=False,
                       **extra):
        total_s, H, D = q.shape
        assert not any(v not in (None, False) for v in extra.values()), f"not modelled: {sorted(extra)}"
        assert q.dtype == torch.bfloat16 and kv_buffer.dtype == torch.bfloat16 and o.dtype == torch.bfloat16
        assert H in (16, 128), f"the asm MLA kernels take 16 or 128 heads, got {H}"
        assert D == 576 and tuple(o.shape) == (total_s, H, 512) and q.is_contiguous() and o.is_contiguous()
        assert kv_buffer.dim() == 4 and kv_buffer.shape[1] == page_size and kv_buffer.shape[2] == nhead_kv == 1, (
            f"kv_buffer [pages, page_size={page_size}, nhead_kv={nhead_kv}, 576], got {tuple(kv_buffer.shape)}")
        assert kv_buffer.shape[3] == D and kv_buffer.is_contiguous()
        assert isinstance(sm_scale, Real) and sm_scale > 0, f"sm_scale a positive number, got {sm_scale!r}"
        assert logit_cap == 0.0 and num_kv_splits is None, "logit_cap / num_kv_splits: not modelled"
        _same_device(q, kv_buffer, o, qo_indptr, kv_indptr, kv_indices, kv_last_page_lens)
        B = kv_last_page_lens.numel()
        _indptr(qo_indptr, B, "qo_indptr")
        _indptr(kv_indptr, B, "kv_indptr")
        assert kv_indices.dtype == torch.int32 and kv_indices.dim() == 1 and kv_last_page_lens.dtype == torch.int32
        assert int(qo_indptr[-1]) == total_s, f"qo_indptr[-1] = {int(qo_indptr[-1])} query rows, q has {total_s}"
        assert int(kv_indptr[-1]) == kv_indices.numel(), "kv_indptr[-1] = len(kv_indices)"
        num_pages = kv_buffer.shape[0]
        assert bool(((kv_indices >= 0) & (kv_indices < num_pages)).all()), f"kv_indices are pages of the {num_pages}"
        rows_per_seq = (qo_indptr[1:] - qo_indptr[:-1]).long()
        assert int(rows_per_seq.max()) <= max_seqlen_q if B else True, "a sequence has more than max_seqlen_q queries"
        assert max_seqlen_q == 1 and bool((rows_per_seq == 1).all()), "modelled: one query row per sequence"
        tokens = kv_buffer.view(num_pages, page_size, D).float()
        lse = torch.empty(total_s, H)
        for i in range(B):
            pages = kv_indices[kv_indptr[i] : kv_indptr[i + 1]].long()
            assert pages.numel() > 0, "a sequence with no kv token is not something the kernel documents"
            last = int(kv_last_page_lens[i])
            assert 1 <= last <= page_size, f"kv_last_page_lens[{i}] = {last} not in [1, {page_size}]"
            keys = tokens[pages].reshape(-1, D)[: (pages.numel() - 1) * page_size + last]  # [n, 576]
            for r in range(int(qo_indptr[i]), int(qo_indptr[i + 1])):
                logits = q[r].float() @ keys.t() * sm_scale  # [H, n]
                lse[r] = torch.logsumexp(logits, -1)
                o[r] = (torch.softmax(logits, -1) @ keys[:, :512]).to(o.dtype)
        return None, (lse if return_lse else None)

    def fp8_mqa_logits(Q, KV, kv_scales, weights, cu_starts, cu_ends, clean_logits=True):
        seq_len, H, D = Q.shape
        assert Q.dtype == fp8 and KV.dtype == fp8, f"{gfx} kernels take {fp8}, got {Q.dtype} / {KV.dtype}"
        assert H & (H - 1) == 0 and D & (D - 1) == 0, "num heads and head size must be powers of two"
        assert weights.dtype == torch.float32 and kv_scales.dtype == torch.float32
        assert cu_starts.dtype == torch.int32 and cu_ends.dtype == torch.int32
        S = KV.shape[0]
        _same_device(Q, KV, kv_scales, weights, cu_starts, cu_ends)
        assert KV.dim() == 2 and KV.shape[1] == D, f"KV [S, {D}], got {tuple(KV.shape)}"
        assert tuple(kv_scales.shape) == (S,) and tuple(weights.shape) == (seq_len, H), "kv_scales [S], weights [T, H]"
        assert tuple(cu_starts.shape) == (seq_len,) and tuple(cu_ends.shape) == (seq_len,), "cu_starts / cu_ends [T]"
        assert bool(((cu_starts >= 0) & (cu_starts <= cu_ends) & (cu_ends <= S)).all()), "0 <= start <= end <= S"
        k = KV.float() * kv_scales[:, None]
        logits = torch.einsum("thd,sd->ths", Q.float(), k).relu()
        logits = torch.einsum("ths,th->ts", logits, weights)
        j = torch.arange(S)
        inside = (j[None] >= cu_starts.long()[:, None]) & (j[None] < cu_ends.long()[:, None])
        return logits.masked_fill(~inside, -math.inf if clean_logits else math.nan)

    def top_k_per_row_prefill(logits, rowStarts, rowEnds, indices, values, numRows, stride0, stride1, k=2048,
                              stable=False):
        assert logits.dtype == torch.float32 and logits.dim() == 2 and indices.dtype == torch.int32
        assert tuple(indices.shape) == (numRows, k) and logits.stride() == (stride0, stride1)
        assert logits.shape[1] >= k, f"top_k ({k}) must not exceed the row width ({logits.shape[1]})"
        assert logits.shape[0] == numRows and indices.is_contiguous(), "numRows rows; indices written densely"
        _same_device(logits, rowStarts, rowEnds, indices, values)
        for t in (rowStarts, rowEnds):
            assert t.dtype == torch.int32 and tuple(t.shape) == (numRows,), "rowStarts / rowEnds [numRows] int32"
        assert bool(((rowStarts >= 0) & (rowStarts <= rowEnds) & (rowEnds <= logits.shape[1])).all()), (
            "0 <= rowStart <= rowEnd <= the row width")
        assert values is None or (values.dtype == torch.float32 and tuple(values.shape) == (numRows, k))
        assert isinstance(stable, bool)
        for r in range(numRows):
            s, e = int(rowStarts[r]), int(rowEnds[r])
            cols = torch.arange(s, e)
            vals = logits[r, s:e]
            order = sorted(range(cols.numel()), key=lambda i: (-float(vals[i]), i if stable else 0))[:k]
            indices[r, : len(order)] = cols[order].to(torch.int32)
            indices[r, len(order) :] = -1
            if values is not None:
                values[r, : len(order)] = vals[order]

    def fused_moe(A, B, C, A_scale, B_scale, B_zp, topk_weights, topk_ids, sorted_token_ids, expert_ids,
                  num_tokens_post_padded, mul_routed_weight, top_k, compute_type, use_fp8_w8a8, use_int8_w8a16,
                  use_int4_w4a16, block_shape=None, config=None):
        assert (topk_weights.stride(1) == 1 and sorted_token_ids.stride(0) == 1
                and not (use_int8_w8a16 or use_int4_w4a16) and B_zp is None)
        assert set(config) >= {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M"}, f"config {config}"
        bm = config["BLOCK_SIZE_M"]
        M, K = A.shape
        E, N, K2 = B.shape
        assert K2 == K and tuple(C.shape) == (M, top_k, N) and sorted_token_ids.numel() % bm == 0
        assert C.dtype == torch.bfloat16 and compute_type is TL_BF16, "compute_type is C's Triton dtype (bf16)"
        assert A.is_contiguous() and B.is_contiguous() and C.is_contiguous()
        _same_device(A, B, C, A_scale, B_scale, topk_weights, topk_ids, sorted_token_ids, expert_ids,
                     num_tokens_post_padded)
        assert isinstance(top_k, int) and top_k >= 1 and isinstance(mul_routed_weight, bool)
        assert tuple(topk_ids.shape) == (M, top_k) and tuple(topk_weights.shape) == (M, top_k), (
            f"topk_ids / topk_weights [M={M}, top_k={top_k}], got {tuple(topk_ids.shape)} / "
            f"{tuple(topk_weights.shape)}")
        assert topk_weights.dtype == torch.float32 and topk_ids.dtype == torch.int32
        for t in (sorted_token_ids, expert_ids, num_tokens_post_padded):
            assert t.dtype == torch.int32 and t.dim() == 1
        assert expert_ids.numel() == sorted_token_ids.numel() // bm
        assert tuple(num_tokens_post_padded.shape) == (1,)
        post = int(num_tokens_post_padded[0])
        assert post % bm == 0 and post <= sorted_token_ids.numel(), f"num_tokens_post_padded {post}: blocks of {bm}"
        assert bool(((sorted_token_ids >= 0) & (sorted_token_ids <= topk_ids.numel())).all()), (
            f"sorted_token_ids are token slots in [0, {topk_ids.numel()}) or the sentinel {topk_ids.numel()}")
        assert bool(((expert_ids >= -1) & (expert_ids < E)).all()), f"expert_ids in [0, {E}) or -1"
        if use_fp8_w8a8:
            assert A.dtype == fp8 and B.dtype == fp8, f"{gfx} kernels take {fp8}, got {A.dtype} / {B.dtype}"
            assert list(block_shape) == [128, 128], f"block-wise fp8 scales of 128 x 128, got {block_shape}"
            bn, bk = block_shape
            assert A_scale.dtype == torch.float32 and B_scale.dtype == torch.float32
            assert (tuple(A_scale.shape) == (M, math.ceil(K / bk))
                    and tuple(B_scale.shape) == (E, math.ceil(N / bn), math.ceil(K / bk)))
            a = A.float() * A_scale.repeat_interleave(bk, 1)[:, :K]
            b = B.float() * B_scale.repeat_interleave(bn, 1)[:, :N].repeat_interleave(bk, 2)[:, :, :K]
        else:
            assert A_scale is None and B_scale is None and block_shape is None
            assert A.dtype == C.dtype and B.dtype == C.dtype, "unquantised: A and B in C's dtype"
            a, b = A.float(), B.float()
        num_valid = topk_ids.numel()
        out = C.view(M * top_k, N)
        for blk in range(post // bm):
            tokens = sorted_token_ids[blk * bm : (blk + 1) * bm].long()
            tokens = tokens[tokens < num_valid]
            e = int(expert_ids[blk])
            if tokens.numel() and e >= 0:
                y = a[tokens // top_k] @ b[e].t()
                if mul_routed_weight:
                    y = y * topk_weights.view(-1)[tokens, None]
                out[tokens] = y.to(C.dtype)

    def gemm_a8w8_blockscale(XQ, WQ, x_scale, w_scale, dtype=torch.bfloat16, isBpreshuffled=False):
        """Y [M, N] = (XQ * x_scale per 1x128) @ (WQ * w_scale per 128x128)^T, in `dtype` (bf16 / fp16)."""
        assert XQ.dtype == fp8 and WQ.dtype == fp8, f"{gfx} kernels take {fp8}, got {XQ.dtype} / {WQ.dtype}"
        assert dtype in (torch.bfloat16, torch.float16) and not isBpreshuffled
        M, K = XQ.shape
        N = WQ.shape[0]
        assert WQ.dim() == 2 and WQ.shape[1] == K, f"XQ [M, {K}], WQ [N, K]: got {tuple(WQ.shape)}"
        assert x_scale.dtype == torch.float32 and w_scale.dtype == torch.float32
        for t in (XQ, WQ, x_scale, w_scale):
            assert t.is_contiguous(), "dense row-major operands"
        _same_device(XQ, WQ, x_scale, w_scale)
        assert (tuple(x_scale.shape) == (M, math.ceil(K / 128))
                and tuple(w_scale.shape) == (math.ceil(N / 128), math.ceil(K / 128)))
        x = XQ.float() * x_scale.repeat_interleave(128, 1)[:, :K]
        w = WQ.float() * w_scale.repeat_interleave(128, 0)[:N].repeat_interleave(128, 1)[:, :K]
        return (x @ w.t()).to(dtype)

    return {
        "aiter": SimpleNamespace(dtypes=SimpleNamespace(fp8=fp8), gemm_a8w8_blockscale=gemm_a8w8_blockscale),
        "aiter.mla": SimpleNamespace(mla_decode_fwd=mla_decode_fwd),
        "aiter.ops.topk": SimpleNamespace(top_k_per_row_prefill=top_k_per_row_prefill),
        "aiter.ops.triton.attention.fp8_mqa_logits": SimpleNamespace(fp8_mqa_logits=fp8_mqa_logits),
        "aiter.ops.triton.moe.moe_op": SimpleNamespace(fused_moe=fused_moe),
        "triton.language": SimpleNamespace(bfloat16=TL_BF16),
    }
