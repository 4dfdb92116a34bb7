"""DeepGEMM adapters: indexer_topk, grouped_gemm and fp8_linear.

DeepGEMM's documented conventions (README, tests/test_attention.py and the pybind signatures of
deepseek-ai/DeepGEMM) and what the adapters do about each:

indexer_topk  fp8_mqa_logits(q [T, H, D] e4m3fn, (k [S, D] e4m3fn, k_scale [S] fp32), weights [T, H]
              fp32, cu_seq_len_k_start [T], cu_seq_len_k_end [T], clean_logits=True) -> logits [T, S]
              fp32 with logits[t, s] = sum_h relu(q[t, h] . (k[s] * k_scale[s])) * weights[t, h] for
              start[t] <= s < end[t] and -inf elsewhere. That is the HAL's score (k_scale > 0 commutes
              with relu) and ks / ke are the HAL's starts / ends, passed through. DeepGEMM stops at the
              logits: the top-k is torch.topk on them, -inf picks become -1 (they sort last, so valid
              entries come first). Index heads: the kernels are built for 64 (SM90); fewer are
              zero-padded (a zero query and a zero weight add exactly 0). The [T, S] logits are made in
              query chunks of at most LOGITS_BYTES.
grouped_gemm  m_grouped_fp8_gemm_nt_contiguous((a [M', K] e4m3fn, sfa [M', K/128] fp32), (b [E, N, K], sfb
              [E, N/128, K/128] fp32), d [M', N] bf16, m_indices [M'] int32): row r of d is a[r] @
              b[m_indices[r]]^T, m_indices -1 = padding row (not computed), and every expert's rows
              must start at a multiple of get_mk_alignment_for_contiguous_layout() (128). The HAL's
              groups are consecutive runs of m_sizes rows: each is copied into a 128-aligned slot
              (zero fp8 / unit scale filler rows tagged -1), the GEMM runs, rows are copied back; HAL
              padding rows (after sum(m_sizes)) are 0. Building the layout reads m_sizes on the host
              (one sync per call; DeepGEMM's contiguous layout needs the sizes there too).
              Releases before the 2025 refactor call it m_grouped_gemm_fp8_fp8_bf16_nt_contiguous.
fp8_linear    fp8_gemm_nt((x_fp8 [M, K], sfa [M, K/128]), (w [N, K], sfb [N/128, K/128]), d [M, N] bf16):
              the activation is quantised exactly as act_quant(x, 128, ue8m0) (the torch provider's
              rule), then one GEMM. bf16 output, so bf16 x only.
scales        SM90 takes fp32 scales as they are. SM100 casts fp32 scales to UE8M0 unless
              disable_ue8m0_cast=True; the adapters pass True (exact for any fp32 scale). With ue8m0
              checkpoints and act_quant(ue8m0=True) the cast would be exact too and faster: a tuning
              option left for a benchmark to decide.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from dsa.backends import adapt, vendor
from dsa.hal.capability import Requires

MODULE = "deep_gemm"
ARCHS = ("sm90", "sm100")
INDEX_HEADS = 64  # index heads the MQA-logits kernels are built for
INDEX_DIM = 128
ALIGN = 128  # default get_mk_alignment_for_contiguous_layout()
LOGITS_BYTES = 1 << 30  # bound on one fp8_mqa_logits call's [T, S] fp32 output
PAGED_INDEX_PAGE_SM90 = 64  # fp8_paged_mqa_logits' block_kv on SM90 (see paged_index_cache)

# grouped_gemm and fp8_linear: the GEMM kernels are fp8 e4m3fn.
GEMM = Requires(modules=(MODULE,), platforms=("cuda",), archs=ARCHS, fp8_formats=("e4m3fn",), load=vendor.importer)
# indexer_topk: the MQA-logits kernels are built for INDEX_HEADS index heads (fewer are zero-padded).
INDEXER = dataclasses.replace(GEMM, max_index_heads=INDEX_HEADS)


def _lib():
    return vendor.load(MODULE)


def _first(lib, *names):
    """(name, function) of the first of `names` the library has (newest name first)."""
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return name, fn
    raise AttributeError(f"{MODULE} has none of {', '.join(names)}")


def _exact_scales(name: str, fn, newest: str) -> dict:
    """disable_ue8m0_cast=True for the current API (a pybind function without a readable signature
    is assumed to have it); the pre-2025 names predate the flag (and SM100)."""
    return (
        {"disable_ue8m0_cast": True}
        if name == newest and adapt.accepts(fn, "disable_ue8m0_cast") is not False
        else {}
    )


# ---------------------------------------------------------------- per-call checks (after the declaration's module)


def indexer_args_reason(q, weights, k, k_scale, starts, ends, topk, max_visible=None) -> Optional[str]:
    if q.dtype != torch.float8_e4m3fn or k.dtype != torch.float8_e4m3fn:
        return f"fp8_mqa_logits takes an fp8 e4m3fn query and keys, got {q.dtype} / {k.dtype}"
    if q.shape[1] > INDEX_HEADS or q.shape[2] != INDEX_DIM:
        return f"fp8_mqa_logits is built for <= {INDEX_HEADS} heads of dim {INDEX_DIM}, got {q.shape[1]} x {q.shape[2]}"
    return None


def grouped_args_reason(x, x_scale, w, w_scale, m_sizes) -> Optional[str]:
    if x.dtype != torch.float8_e4m3fn or w.dtype != torch.float8_e4m3fn:
        return f"DeepGEMM's grouped GEMM here is the fp8 one; got {x.dtype} x {w.dtype}"
    if x.shape[1] % 128:
        return f"DeepGEMM needs K divisible by 128, got {x.shape[1]}"
    return None


def linear_args_reason(x, weight, weight_scale_inv, ue8m0) -> Optional[str]:
    if x.dtype != torch.bfloat16:
        return f"fp8_gemm_nt writes bf16, so it serves bf16 activations only, got {x.dtype}"
    if weight.shape[1] % 128:
        return f"DeepGEMM needs K divisible by 128, got {weight.shape[1]}"
    return None


# ---------------------------------------------------------------- indexer


def indexer_topk(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
    max_visible: Optional[int] = None,
) -> Tensor:
    """HAL indexer_topk: DeepGEMM fp8_mqa_logits, then a top-k over the logits."""
    fn = _lib().fp8_mqa_logits
    T, S = q.shape[0], k.shape[0]
    q = adapt.pad_dim(q, 1, INDEX_HEADS).contiguous()  # zero heads contribute relu(0) * 0 = 0
    w = adapt.pad_dim(weights.float(), 1, INDEX_HEADS).contiguous()
    ks, ke = starts.to(torch.int32).contiguous(), ends.to(torch.int32).contiguous()
    kv = (k.contiguous(), k_scale.float().contiguous())
    out = torch.full((T, topk), -1, dtype=torch.int32, device=q.device)
    kk = min(topk, S)
    if kk == 0 or T == 0:
        return out
    rows = max(1, LOGITS_BYTES // (4 * S))
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        logits = fn(q[t0:t1], kv, w[t0:t1], ks[t0:t1], ke[t0:t1], clean_logits=True)  # [t, S], -inf outside
        vals, idx = logits.topk(kk, dim=-1)  # descending: invisible (-inf) picks come last
        out[t0:t1, :kk] = torch.where(torch.isneginf(vals), -1, idx).to(torch.int32)
    return out


# ---------------------------------------------------------------- grouped GEMM


def contiguous_layout(m_sizes: Tensor, align: int) -> tuple[Tensor, Tensor, int]:
    """HAL groups (consecutive rows, m_sizes[e] each) -> DeepGEMM's aligned contiguous layout.

    Returns (dest [sum(m_sizes)] int64: the padded row each source row goes to, m_indices [M'] int32:
    expert of each padded row or -1, M' = sum of the sizes rounded up to `align`).
    """
    sizes = [int(s) for s in m_sizes.tolist()]
    device = m_sizes.device
    padded = [adapt.ceil_to(s, align) for s in sizes]
    total, total_padded = sum(sizes), sum(padded)
    src_start = torch.tensor([0] + sizes[:-1], device=device).cumsum(0)
    dst_start = torch.tensor([0] + padded[:-1], device=device).cumsum(0)
    counts = torch.tensor(sizes, device=device)
    group = torch.repeat_interleave(torch.arange(len(sizes), device=device), counts)  # [total]
    rank = torch.arange(total, device=device) - src_start[group]
    dest = dst_start[group] + rank
    m_indices = torch.full((total_padded,), -1, dtype=torch.int32, device=device)
    m_indices[dest] = group.to(torch.int32)
    return dest, m_indices, total_padded


def grouped_gemm(x: Tensor, x_scale: Tensor, w: Tensor, w_scale: Tensor, m_sizes: Tensor) -> Tensor:
    """HAL grouped_gemm (fp8) on DeepGEMM's m-grouped contiguous GEMM."""
    lib = _lib()
    name, fn = _first(lib, "m_grouped_fp8_gemm_nt_contiguous", "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous")
    align_fn = getattr(lib, "get_mk_alignment_for_contiguous_layout", None) or getattr(
        lib, "get_m_alignment_for_contiguous_layout", None
    )
    align = int(align_fn()) if align_fn is not None else ALIGN
    M, K = x.shape
    N = w.shape[1]
    dest, m_indices, m_pad = contiguous_layout(m_sizes, align)
    total = dest.shape[0]
    a = torch.zeros(m_pad, K, dtype=torch.uint8, device=x.device)
    a[dest] = x[:total].view(torch.uint8)  # fp8 moved as bytes (filler rows: fp8 zeros)
    a = a.view(torch.float8_e4m3fn)
    sfa = torch.ones(m_pad, x_scale.shape[1], dtype=torch.float32, device=x.device)
    sfa[dest] = x_scale[:total].float()
    d = torch.empty(m_pad, N, dtype=torch.bfloat16, device=x.device)
    if m_pad:
        extra = _exact_scales(name, fn, "m_grouped_fp8_gemm_nt_contiguous")
        fn((a, sfa), (w, w_scale.float()), d, m_indices, **extra)
    y = torch.zeros(M, N, dtype=torch.bfloat16, device=x.device)
    y[:total] = d[dest]
    return y


# ---------------------------------------------------------------- fp8 linear


def fp8_linear(x: Tensor, weight: Tensor, weight_scale_inv: Tensor, ue8m0: bool) -> Tensor:
    """HAL fp8_linear on DeepGEMM fp8_gemm_nt (activation quantised by the contract's own rule)."""
    from dsa.backends.torch.quant import act_quant  # the contract's exact quantisation rule

    name, fn = _first(_lib(), "fp8_gemm_nt", "gemm_fp8_fp8_bf16_nt")
    N, K = weight.shape
    x2 = x.reshape(-1, K)
    xq, xs = act_quant(x2, 128, ue8m0)
    d = torch.empty(x2.shape[0], N, dtype=torch.bfloat16, device=x.device)
    fn((xq, xs), (weight, weight_scale_inv.float()), d, **_exact_scales(name, fn, "fp8_gemm_nt"))
    return d.reshape(*x.shape[:-1], N)


# ---------------------------------------------------------------- paged index cache (not a HAL op yet)


def paged_index_cache(index_k: Tensor, index_scale: Tensor) -> Tensor:
    """Our paged index cache -> the byte layout DeepGEMM's fp8_paged_mqa_logits reads.

    index_k [blocks, page, D] float8_e4m3fn and index_scale [blocks, page] fp32 (model/cache.py) ->
    uint8 [blocks, page, 1, D + 4]: within a block, the page's D-byte fp8 keys one after another, then
    the page's fp32 scales (DeepGEMM tests/test_attention.py, kv_cache_cast_to_fp8). On SM90 the
    kernel takes pages of PAGED_INDEX_PAGE_SM90 tokens. The HAL's indexer_topk takes the gathered,
    contiguous keys, so nothing calls this yet: it is here for a paged indexer op.
    """
    blocks, page, D = index_k.shape
    out = torch.empty(blocks, page * (D + 4), dtype=torch.uint8, device=index_k.device)
    out[:, : page * D] = index_k.contiguous().view(torch.uint8).reshape(blocks, page * D)
    out[:, page * D :] = index_scale.float().contiguous().view(torch.uint8).reshape(blocks, page * 4)
    return out.view(blocks, page, 1, D + 4)
