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
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch


def modules(gfx: str = "gfx942") -> dict:
    fp8 = torch.float8_e4m3fnuz if gfx == "gfx942" else torch.float8_e4m3fn

    def mla_decode_fwd(q, kv_buffer, o, qo_indptr, kv_indptr, kv_indices, kv_last_page_lens, max_seqlen_q,
                       page_size=1, nhead_kv=1, sm_scale=None, logit_cap=0.0, num_kv_splits=None, return_lse=False,
                       **_):
        total_s, H, D = q.shape
        assert q.dtype == torch.bfloat16 and kv_buffer.dtype == torch.bfloat16 and o.dtype == torch.bfloat16
        assert H in (16, 128), f"the asm MLA kernels take 16 or 128 heads, got {H}"
        assert D == 576 and tuple(o.shape) == (total_s, H, 512) and q.is_contiguous()
        assert kv_buffer.dim() == 4 and kv_buffer.shape[1] == page_size == 1 and kv_buffer.shape[2] == nhead_kv == 1
        for t in (qo_indptr, kv_indptr, kv_indices, kv_last_page_lens):
            assert t.dtype == torch.int32
        assert max_seqlen_q == 1 and torch.equal(qo_indptr, torch.arange(total_s + 1, dtype=torch.int32))
        assert int(kv_indptr[-1]) == kv_indices.numel() and bool((kv_last_page_lens == 1).all())
        slots = kv_buffer.view(-1, D).float()
        lse = torch.empty(total_s, H)
        for r in range(total_s):
            rows = kv_indices[kv_indptr[r] : kv_indptr[r + 1]].long()
            assert rows.numel() > 0, "a sequence with no kv token is not something the kernel documents"
            assert bool(((rows >= 0) & (rows < slots.shape[0])).all())
            keys = slots[rows]  # [n, 576]
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
        for r in range(numRows):
            s, e = int(rowStarts[r]), int(rowEnds[r])
            cols = torch.arange(s, max(s, e))
            vals = logits[r, s:max(s, e)]
            order = sorted(range(cols.numel()), key=lambda i: (-float(vals[i]), i if stable else 0))[:k]
            indices[r, : len(order)] = cols[order].to(torch.int32)
            indices[r, len(order) :] = -1
            if values is not None:
                values[r, : len(order)] = vals[order]

    def fused_moe(A, B, C, A_scale, B_scale, B_zp, topk_weights, topk_ids, sorted_token_ids, expert_ids,
                  num_tokens_post_padded, mul_routed_weight, top_k, compute_type, use_fp8_w8a8, use_int8_w8a16,
                  use_int4_w4a16, block_shape=None, config=None):
        assert (topk_weights.stride(1) == 1 and sorted_token_ids.stride(0) == 1
                and not (use_int8_w8a16 or use_int4_w4a16))
        bm = config["BLOCK_SIZE_M"]
        M, K = A.shape
        E, N, _ = B.shape
        assert tuple(C.shape) == (M, top_k, N) and sorted_token_ids.numel() % bm == 0
        assert expert_ids.numel() == sorted_token_ids.numel() // bm
        if use_fp8_w8a8:
            assert A.dtype == fp8 and B.dtype == fp8, f"{gfx} kernels take {fp8}, got {A.dtype} / {B.dtype}"
            bn, bk = block_shape
            assert (tuple(A_scale.shape) == (M, math.ceil(K / bk))
                    and tuple(B_scale.shape) == (E, math.ceil(N / bn), math.ceil(K / bk)))
            a = A.float() * A_scale.repeat_interleave(bk, 1)[:, :K]
            b = B.float() * B_scale.repeat_interleave(bn, 1)[:, :N].repeat_interleave(bk, 2)[:, :, :K]
        else:
            assert A_scale is None and B_scale is None
            a, b = A.float(), B.float()
        num_valid = topk_ids.numel()
        out = C.view(M * top_k, N)
        for blk in range(int(num_tokens_post_padded[0]) // bm):
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
        "triton.language": SimpleNamespace(bfloat16="bf16"),
    }
