"""AITER adapters: sparse MLA (prefill + decode), indexer_topk and grouped_gemm on AMD Instinct GPUs.

AITER's documented conventions (aiter/mla.py, aiter/ops/topk.py, aiter/ops/triton/.../fp8_mqa_logits.py
and moe_op.py docstrings and signatures in ROCm/aiter; vLLM's ROCM_AITER_MLA_SPARSE backend as the
reference caller) and what the adapters do about each:

sparse MLA    mla_decode_fwd(q [R, H, 576] bf16, kv_buffer [pages, page_size, 1, 576] bf16, o [R, H, 512]
              (written), qo_indptr [R+1], kv_indptr [R+1], kv_indices, kv_last_page_lens [R],
              max_seqlen_q, page_size=1, nhead_kv=1, sm_scale, ..., return_lse=True) -> (_, lse [R, H]).
              "Over ragged indices": every query row r is its own sequence whose keys are
              kv_indices[kv_indptr[r]:kv_indptr[r+1]] (page size 1: an index is a token slot), exactly
              how vLLM runs DeepSeek-V3.2 on AITER. The HAL's index rows are compacted (valid entries
              only, order kept) into that ragged list. Prefill: slot = the kv row. Decode: the paged
              cache is viewed as [blocks * page, 1, 1, 576] (so any page size works) and a logical
              position becomes block_table[b, p // page] * page + p % page. A row with no valid index
              gets one dummy slot (0) so the kernel never sees an empty sequence; its out / lse are
              then set to 0 / +inf. lse is natural (exp-based reduction). Heads: the asm kernels exist
              for 16 and 128 query heads; others are zero-padded (16, else 128; chunks of 128 above).
              The cache must be bf16: AITER's fp8 MLA decode takes one per-tensor kv scale, not the
              656-byte per-128-block format (mla_decode_fwd_ds32 reads per-block scales but is
              gfx950-only and quantises the query to fp8: not wired).
indexer_topk  fp8_mqa_logits(Q [T, H, D], KV [S, D], kv_scales [S] fp32, weights [T, H] fp32, cu_starts,
              cu_ends) -> logits [T, S] fp32, -inf outside [start, end) (the DeepGEMM formula). H must
              be a power of two: zero-padded (exact). Then top_k_per_row_prefill(logits, starts, ends,
              indices, None, T, stride0, stride1, k, stable=True): absolute column indices (vLLM
              subtracts row starts itself afterwards), -1 where a row has fewer than k keys; the
              stable option (smallest index wins ties, when the installed AITER has it) makes every
              TP rank pick the same set.
grouped_gemm  the Triton MoE GEMM fused_moe(A [M, K], B [E, N, K], C [M, top_k, N], A_scale [M, K/128],
              B_scale [E, N/128, K/128], ..., sorted_token_ids, expert_ids, num_tokens_post_padded,
              mul_routed_weight=False, top_k=1, compute_type, use_fp8_w8a8, ..., block_shape=[128, 128],
              config): C[t] = A[t] @ B[e]^T for the tokens listed (by expert, padded to BLOCK_SIZE_M with
              the sentinel M) in sorted_token_ids, expert_ids naming each block's expert. With top_k 1
              and no routing weight this is the HAL's grouped GEMM; HAL padding rows are never listed
              and stay 0 (C starts zeroed). The layout is built on the host from m_sizes (one sync).
              AITER's top-level `fused_moe` (both expert GEMMs + SiLU + routing weights, CK) does not
              fit a single grouped GEMM: it would need a whole-MoE HAL op.
fp8_linear    gemm_a8w8_blockscale(XQ [M, K], WQ [N, K], x_scale [M, K/128], w_scale [N/128, K/128],
              dtype=bf16) -> Y = dequant(X) @ dequant(W)^T: the activation is quantised by the
              contract's own rule (act_quant(x, 128, ue8m0)), then one call. bf16 out: bf16 x only.
fp8           gfx942 (MI300) computes in float8_e4m3fnuz (max 240), gfx950 (MI350) in OCP e4m3fn. The
              HAL's fp8 is e4m3fn; for an fnuz device (AITER's `dtypes.fp8`) every fp8 tensor is
              reinterpreted bit for bit as fnuz, which halves each value exactly, and its scale is
              doubled (weights carry the query scale in the indexer): products are unchanged. For the
              grouped GEMM that is one pass over the expert weights per call; converting them once at
              load time is the faster fix, left to the loader.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from dsa.backends import adapt, vendor
from dsa.hal.capability import Requires

ROOT = "aiter"
MLA = "aiter.mla"
TOPK = "aiter.ops.topk"
MQA_LOGITS = ("aiter.ops.triton.attention.fp8_mqa_logits", "aiter.ops.triton.fp8_mqa_logits")  # new, old path
MOE_OP = ("aiter.ops.triton.moe.moe_op", "aiter.ops.triton.moe_op")
ARCHS = ("gfx942", "gfx950")
MLA_HEADS = (16, 128)
D_V, D_ROPE = 512, 64
MOE_CONFIG = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1}
LOGITS_BYTES = 1 << 30

# What each op needs: AITER (and the op's submodules) importable, an MI300 / MI350 and the fp8 encoding
# that arch computes in (gfx942: e4m3fnuz, gfx950: OCP e4m3fn).
LINEAR = Requires(modules=(ROOT,), platforms=("rocm",), archs=ARCHS,
                  fp8_formats={"e4m3fnuz": ("gfx942",), "e4m3fn": ("gfx950",)}, load=vendor.importer)
PREFILL = dataclasses.replace(LINEAR, modules=(ROOT, MLA))
# The MLA decode reads a bf16 cache; the 656-byte fp8 cache needs mla_decode_fwd_ds32 (gfx950 only, fp8
# query), not wired.
DECODE = dataclasses.replace(PREFILL, kv_cache_dtypes=("bf16",))
INDEXER = dataclasses.replace(LINEAR, modules=(ROOT, TOPK, MQA_LOGITS))
GROUPED = dataclasses.replace(LINEAR, modules=(ROOT, MOE_OP, "triton.language"))


def _load_first(names: tuple[str, ...]):
    errors = []
    for name in names:
        try:
            return vendor.load(name)
        except Exception as err:
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise ImportError("; ".join(errors))


def _fnuz_device() -> bool:
    """Whether AITER computes in float8_e4m3fnuz here (gfx942) rather than e4m3fn (gfx950)."""
    return getattr(vendor.load(ROOT).dtypes, "fp8", torch.float8_e4m3fn) == torch.float8_e4m3fnuz


def _to_device_fp8(x: Tensor, scale: Tensor, fnuz: bool) -> tuple[Tensor, Tensor]:
    if not fnuz:
        return x, scale
    return adapt.e4m3fn_to_fnuz(x), scale * adapt.FNUZ_SCALE


# ---------------------------------------------------------------- checks beyond the declarations; per-call checks


def mla_reason(target) -> Optional[str]:
    """Beyond the declaration (sparse MLA ops): this AITER's mla_decode_fwd returns the log-sum-exp."""
    if adapt.accepts(vendor.load(MLA).mla_decode_fwd, "return_lse") is False:
        return "this AITER's mla_decode_fwd cannot return the log-sum-exp (no return_lse): upgrade AITER"
    return None


def linear_reason(target) -> Optional[str]:
    """Beyond the declaration (fp8_linear): this AITER has the block-scaled fp8 GEMM."""
    if getattr(vendor.load(ROOT), "gemm_a8w8_blockscale", None) is None:
        return "this AITER has no gemm_a8w8_blockscale"
    return None


def _mla_args(q: Tensor, kv_dtype, d_v: int) -> Optional[str]:
    if q.dtype != torch.bfloat16 or kv_dtype != torch.bfloat16:
        return f"AITER's MLA decode takes a bf16 query and a bf16 cache, got {q.dtype} / {kv_dtype}"
    if d_v != D_V or q.shape[-1] != D_V + D_ROPE:
        return f"AITER's MLA kernels are built for 576 / 512, got {q.shape[-1]} / {d_v}"
    return None


def prefill_args_reason(q, kv, indices, sm_scale, d_v) -> Optional[str]:
    return _mla_args(q, kv.dtype, d_v)


def decode_args_reason(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v) -> Optional[str]:
    return _mla_args(q, kv_cache.dtype, d_v)


def indexer_args_reason(q, weights, k, k_scale, starts, ends, topk, max_visible=None) -> Optional[str]:
    if q.dtype != torch.float8_e4m3fn or k.dtype != torch.float8_e4m3fn:
        return f"AITER's fp8_mqa_logits takes an fp8 query and keys, got {q.dtype} / {k.dtype}"
    if q.shape[2] & (q.shape[2] - 1):
        return f"AITER's fp8_mqa_logits needs a power-of-two head dim, got {q.shape[2]}"
    if topk != 2048 and adapt.accepts(vendor.load(TOPK).top_k_per_row_prefill, "k") is False:
        return f"this AITER's top_k_per_row_prefill is fixed at k=2048, asked for {topk}"
    return None


def grouped_args_reason(x, x_scale, w, w_scale, m_sizes) -> Optional[str]:
    if x.dtype not in (torch.float8_e4m3fn, torch.bfloat16):
        return f"the AITER MoE GEMM writes bf16: fp8 or bf16 inputs only, got {x.dtype}"
    return None


def linear_args_reason(x, weight, weight_scale_inv, ue8m0) -> Optional[str]:
    if x.dtype != torch.bfloat16:
        return f"gemm_a8w8_blockscale writes bf16 here, so it serves bf16 activations only, got {x.dtype}"
    return None


# ---------------------------------------------------------------- sparse MLA


def _ragged_mla(q: Tensor, kv_slots: Tensor, slots: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """q [R, H, 576], kv_slots [N, 1, 1, 576], slots [R, K] (-1 = skip) -> out [R, H, d_v], lse [R, H]."""
    mla_decode_fwd = vendor.load(MLA).mla_decode_fwd
    R, H, _ = q.shape
    valid = slots >= 0
    counts = valid.sum(-1)
    empty = counts == 0
    if kv_slots.shape[0] == 0 or R == 0:  # nothing to read: every row is empty
        out = torch.zeros(R, H, d_v, dtype=q.dtype, device=q.device)
        return out, torch.full((R, H), float("inf"), device=q.device)
    compact = adapt.valid_first(slots, valid)  # [R, K]: valid slots first
    compact = torch.where(empty[:, None] & (torch.arange(compact.shape[-1], device=q.device) == 0), 0, compact)
    keep = torch.arange(compact.shape[-1], device=q.device)[None, :] < counts.clamp_min(1)[:, None]
    kv_indices = compact[keep].to(torch.int32)  # row-major: row 0's slots, then row 1's, ...
    kv_indptr = torch.zeros(R + 1, dtype=torch.int32, device=q.device)
    kv_indptr[1:] = counts.clamp_min(1).cumsum(0)
    qo_indptr = torch.arange(R + 1, dtype=torch.int32, device=q.device)
    last_page_lens = torch.ones(R, dtype=torch.int32, device=q.device)
    outs, lses = [], []
    for start, count, padded in adapt.head_chunks(H, MLA_HEADS):
        qc = adapt.pad_dim(q[:, start : start + count], 1, padded).contiguous()
        o = torch.empty(R, padded, d_v, dtype=q.dtype, device=q.device)
        _, lse = mla_decode_fwd(qc, kv_slots, o, qo_indptr, kv_indptr, kv_indices, last_page_lens, 1,
                                page_size=1, nhead_kv=1, sm_scale=sm_scale, return_lse=True)
        outs.append(o[:, :count])
        lses.append(lse.reshape(R, padded)[:, :count].float())
    out, lse = torch.cat(outs, dim=1), torch.cat(lses, dim=1)
    return adapt.empty_rows_to_convention(out, lse, empty)


def sparse_mla_prefill(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """HAL sparse_mla_prefill on AITER mla_decode_fwd, one ragged sequence per query token."""
    S = kv.shape[0]
    slots = torch.where(adapt.prefill_valid(indices, S), indices.long(), -1)
    return _ragged_mla(q, kv.contiguous().view(S, 1, 1, kv.shape[-1]), slots, sm_scale, d_v)


def sparse_mla_decode(q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor,
                      sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """HAL sparse_mla_decode on AITER mla_decode_fwd over the paged cache viewed as page-1 slots."""
    B, s_q, H, D = q.shape
    blocks, page = kv_cache.shape[:2]
    slots = adapt.logical_to_slots(indices, block_table, seq_lens, page).reshape(B * s_q, -1)
    kv_slots = kv_cache.contiguous().view(blocks * page, 1, 1, D)
    out, lse = _ragged_mla(q.reshape(B * s_q, H, D), kv_slots, slots.long(), sm_scale, d_v)
    return out.view(B, s_q, H, d_v), lse.view(B, s_q, H)


# ---------------------------------------------------------------- indexer


def indexer_topk(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
    max_visible: Optional[int] = None,
) -> Tensor:
    """HAL indexer_topk on AITER fp8_mqa_logits + top_k_per_row_prefill."""
    logits_fn = _load_first(MQA_LOGITS).fp8_mqa_logits
    topk_fn = vendor.load(TOPK).top_k_per_row_prefill
    T, H, _ = q.shape
    S = k.shape[0]
    fnuz = _fnuz_device()
    heads = 1 << max(0, (H - 1).bit_length())  # next power of two
    q = adapt.pad_dim(q, 1, heads)
    w = adapt.pad_dim(weights.float(), 1, heads)
    q, w = _to_device_fp8(q, w, fnuz)  # the query's scale lives in the weights
    k, ks = _to_device_fp8(k, k_scale.float(), fnuz)
    q, w, k, ks = q.contiguous(), w.contiguous(), k.contiguous(), ks.contiguous()
    st, en = starts.to(torch.int32).contiguous(), ends.to(torch.int32).contiguous()
    out = torch.full((T, topk), -1, dtype=torch.int32, device=q.device)
    if T == 0 or S == 0:
        return out
    clean = {"clean_logits": True} if adapt.accepts(logits_fn, "clean_logits") else {}
    extra = {}
    if adapt.accepts(topk_fn, "k") is not False:
        extra["k"] = topk
    if adapt.accepts(topk_fn, "stable"):
        extra["stable"] = True
    rows = max(1, LOGITS_BYTES // (4 * max(S, topk)))
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        logits = logits_fn(q[t0:t1], k, ks, w[t0:t1], st[t0:t1], en[t0:t1], **clean)  # [t, S]
        if S < topk:  # columns past S are outside every window; they only give the kernel room for k
            logits = adapt.pad_dim(logits, 1, topk, float("-inf"))
        logits = logits.contiguous()
        idx = out[t0:t1].contiguous()
        topk_fn(logits, st[t0:t1], en[t0:t1], idx, None, t1 - t0, logits.stride(0), logits.stride(1), **extra)
        out[t0:t1] = idx
    return out


# ---------------------------------------------------------------- grouped GEMM


def moe_layout(m_sizes: Tensor, block_m: int, num_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """HAL groups -> (sorted_token_ids [EM] int32, expert_ids [EM / block_m] int32, num_tokens_post_padded [1]).

    Expert e's rows (consecutive in the HAL layout) are listed in order and padded to a multiple of
    block_m with the sentinel `num_rows` (= topk_ids.numel(), "not a token"); empty experts get no block.
    """
    sizes = [int(s) for s in m_sizes.tolist()]
    device = m_sizes.device
    ids, experts, start = [], [], 0
    for e, n in enumerate(sizes):
        nblocks = -(-n // block_m)
        if nblocks:
            block = torch.full((nblocks * block_m,), num_rows, dtype=torch.int32, device=device)
            block[:n] = torch.arange(start, start + n, dtype=torch.int32, device=device)
            ids.append(block)
            experts.append(torch.full((nblocks,), e, dtype=torch.int32, device=device))
        start += n
    sorted_ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int32, device=device)
    expert_ids = torch.cat(experts) if experts else torch.zeros(0, dtype=torch.int32, device=device)
    return sorted_ids, expert_ids, torch.tensor([sorted_ids.numel()], dtype=torch.int32, device=device)


def grouped_gemm(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor) -> Tensor:
    """HAL grouped_gemm on AITER's Triton MoE GEMM with top_k = 1 and no routing weights."""
    fused_moe = _load_first(MOE_OP).fused_moe
    tl = vendor.load("triton.language")
    M, _ = x.shape
    N = w.shape[1]
    fp8 = x.dtype == torch.float8_e4m3fn
    if fp8:
        fnuz = _fnuz_device()
        x, x_scale = _to_device_fp8(x, x_scale.float(), fnuz)
        w, w_scale = _to_device_fp8(w, w_scale.float(), fnuz)
    sorted_ids, expert_ids, post_padded = moe_layout(m_sizes, MOE_CONFIG["BLOCK_SIZE_M"], M)
    c = torch.zeros(M, 1, N, dtype=torch.bfloat16, device=x.device)
    if sorted_ids.numel():
        topk_ids = torch.zeros(M, 1, dtype=torch.int32, device=x.device)  # only its numel (the sentinel) is read
        topk_weights = torch.ones(M, 1, dtype=torch.float32, device=x.device)
        fused_moe(x.contiguous(), w.contiguous(), c, x_scale.contiguous() if fp8 else None,
                  w_scale.contiguous() if fp8 else None, None, topk_weights, topk_ids, sorted_ids, expert_ids,
                  post_padded, False, 1, tl.bfloat16, fp8, False, False,
                  block_shape=[128, 128] if fp8 else None, config=dict(MOE_CONFIG))
    return c.view(M, N)


# ---------------------------------------------------------------- fp8 linear


def fp8_linear(x: Tensor, weight: Tensor, weight_scale_inv: Tensor, ue8m0: bool) -> Tensor:
    """HAL fp8_linear on AITER gemm_a8w8_blockscale (activation quantised by the contract's rule)."""
    from dsa.backends.torch.quant import act_quant  # the contract's exact quantisation rule

    lib = vendor.load(ROOT)
    N, K = weight.shape
    xq, xs = act_quant(x.reshape(-1, K), 128, ue8m0)
    fnuz = _fnuz_device()
    xq, xs = _to_device_fp8(xq, xs, fnuz)
    wq, ws = _to_device_fp8(weight, weight_scale_inv.float(), fnuz)
    y = lib.gemm_a8w8_blockscale(
        xq.contiguous(), wq.contiguous(), xs.contiguous(), ws.contiguous(), dtype=torch.bfloat16
    )
    return y.reshape(*x.shape[:-1], N)
