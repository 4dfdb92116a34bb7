"""Shared pieces of the vendor-adapter tests: targets, inputs, comparisons against the fp64 oracle."""
from __future__ import annotations

import torch

from dsa.conformance.inputs import paged_cache, quantize_rows, quantize_weight, randn, rng, sparse_indices
from dsa.conformance.reference.compare import assert_close, assert_topk_equivalent
from dsa.conformance.reference.ops import (
    ref_grouped_gemm,
    ref_indexer_scores,
    ref_sparse_mla_decode,
    ref_sparse_mla_prefill,
    ref_topk_count,
)
from dsa.conformance.tolerances import LSE, TOPK_TIE, out_tol
from dsa.hal.registry import Target

SM_SCALE = 0.1352338  # the 671B softmax scale (docs/model-and-ops.md 2.1)
D_V, ROPE = 512, 64


def target(platform="cuda", arch="sm90", fp8_format="e4m3fn", kv="fp8", page=64, heads=16, index_heads=64) -> Target:
    return Target(platform=platform, arch=arch, fp8_format=fp8_format, kv_cache_dtype=kv, page_size=page,
                  num_heads=heads, index_n_heads=index_heads)


def check_attention(out, lse, out_ref, lse_ref, label: str) -> None:
    tol = out_tol(out.dtype)
    assert lse.dtype == torch.float32
    assert_close(out, out_ref, tol.atol, tol.rtol, tol.cos_eps, f"{label} out")
    assert_close(lse, lse_ref, LSE.atol, LSE.rtol, LSE.cos_eps, f"{label} lse")


def prefill_case(T: int, H: int, S: int, K: int, seed: int):
    """bf16 q [T, H, 576], kv [S, 1, 576], indices [T, K] (row 0 empty, odd rows with junk interleaved)."""
    g = rng(seed)
    q = randn((T, H, D_V + ROPE), g, torch.bfloat16)
    kv = randn((S, 1, D_V + ROPE), g, torch.bfloat16)
    n_valid = torch.randint(1, K + 1, (T,), generator=g).tolist()
    n_valid[-1] = K
    return q, kv, sparse_indices(T, K, S, g, n_valid)


def check_prefill(fn, q, kv, indices, label):
    out, lse = fn(q, kv, indices, SM_SCALE, D_V)
    assert out.shape == q.shape[:2] + (D_V,) and out.dtype == q.dtype and lse.shape == q.shape[:2]
    out_ref, lse_ref = ref_sparse_mla_prefill(q, kv, indices, SM_SCALE, D_V)
    check_attention(out, lse, out_ref, lse_ref, label)


def decode_case(seq_lens, s_q: int, H: int, page: int, K: int, fp8: bool, seed: int):
    """q [B, s_q, H, 576] bf16, a shuffled paged cache (packed fp8 or bf16), block table, indices [B, s_q, K]."""
    g = rng(seed)
    B = len(seq_lens)
    q = randn((B, s_q, H, D_V + ROPE), g, torch.bfloat16)
    latent = randn((B, max(seq_lens), D_V + ROPE), g)
    cache, table = paged_cache(seq_lens, page, latent, D_V, fp8, g, dtype=torch.bfloat16)
    indices = torch.stack([
        sparse_indices(s_q + 1, K, n, g, [K // 2 + 3 * j for j in range(s_q + 1)])[1:] for n in seq_lens
    ])
    return q, cache, table, torch.tensor(seq_lens, dtype=torch.int32), indices


def check_decode(fn, q, cache, table, seq_lens, indices, label):
    out, lse = fn(q, cache, table, seq_lens, indices, SM_SCALE, D_V)
    assert out.shape == q.shape[:3] + (D_V,) and lse.shape == q.shape[:3]
    out_ref, lse_ref = ref_sparse_mla_decode(q, cache, table, seq_lens, indices, SM_SCALE, D_V)
    check_attention(out, lse, out_ref, lse_ref, label)


def indexer_case(T: int, H: int, S: int, seed: int, fp8: bool = True, dtype=torch.bfloat16):
    """q [T, H, 128] (fp8 with per-head scale folded into weights, or `dtype`), weights [T, H] fp32,
    k [S, 128], k_scale [S], and causal windows over two packed sequences plus one empty window."""
    g = rng(seed)
    D = 128
    q = randn((T, H, D), g)
    k = randn((S, D), g)
    w = randn((T, H), g) * H**-0.5
    if fp8:
        qq, qs = quantize_rows(q.reshape(T * H, D))
        q, w = qq.view(T, H, D), w * qs.view(T, H) * D**-0.5
        k, k_scale = quantize_rows(k)
        k_scale = k_scale.squeeze(-1)
    else:
        q, k = q.to(dtype), k.to(dtype)
        w = w.to(torch.bfloat16).float()  # values a bf16 weight holds exactly
        k_scale = torch.ones(S)
    split = S // 2  # sequence 0 = keys [0, split), sequence 1 = keys [split, S)
    pos = torch.arange(T)
    first = pos < T // 2
    starts = torch.where(first, 0, split).to(torch.int32)
    ends = torch.where(first, split - (T // 2) + pos + 1, S - (T - T // 2) + (pos - T // 2) + 1).to(torch.int32)
    ends[0] = starts[0]  # an empty window: all -1
    return q, w.float(), k, k_scale.float(), starts, ends


def check_topk(idx, q, w, k, k_scale, starts, ends, topk):
    assert idx.shape == (q.shape[0], topk) and idx.dtype == torch.int32
    scores = ref_indexer_scores(q, w, k, k_scale, starts, ends)
    assert_topk_equivalent(idx, scores, ref_topk_count(starts, ends, topk), TOPK_TIE)


def grouped_case(m_sizes, pad_rows: int, E: int, N: int, K: int, seed: int, fp8: bool = True):
    """x [sum + pad_rows, K] with 1x128 scales, w [E, N, K] with 128x128 scales (fp8), or bf16 without."""
    g = rng(seed)
    M = sum(m_sizes) + pad_rows
    x = randn((M, K), g)
    w = randn((E, N, K), g) * K**-0.5
    sizes = torch.tensor(m_sizes, dtype=torch.int32)
    if not fp8:
        return x.bfloat16(), None, w.bfloat16(), None, sizes
    xq, xs = quantize_rows(x)
    pairs = [quantize_weight(w[e]) for e in range(E)]
    return xq, xs, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), sizes


def check_grouped(y, x, x_scale, w, w_scale, m_sizes, label):
    tol = out_tol(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.shape == (x.shape[0], w.shape[1])
    assert_close(y, ref_grouped_gemm(x, x_scale, w, w_scale, m_sizes), tol.atol, tol.rtol, tol.cos_eps, label)
