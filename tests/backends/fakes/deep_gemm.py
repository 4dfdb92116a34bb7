"""deep_gemm stand-ins written from deepseek-ai/DeepGEMM's documentation.

Sources: README.md ("V3.2 MQA kernels for the indexer": the logit formula, clean_logits; "Grouped
GEMMs (contiguous layout)": expert segments aligned to get_mk_alignment_for_contiguous_layout(),
m_indices -1 = padding; the SM90 / SM100 scaling-factor notes), the pybind signatures of
m_grouped_fp8_gemm_nt_contiguous / fp8_gemm_nt (a, b as (data, scale) pairs, d written in place,
disable_ue8m0_cast) and tests/test_attention.py (reference logits, -inf outside [ks, ke)).
`module(arch)` models the one documented arch difference: SM100 casts fp32 scaling factors to UE8M0
(powers of two, rounded up here) unless disable_ue8m0_cast=True.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

ALIGN = 128


def _dequant(x, scale, arch, disable_cast, block_rows: int):
    """fp8 [R, K] with scales [ceil(R/block_rows), ceil(K/128)] -> fp32 [R, K]."""
    s = scale.float()
    if arch == "sm100" and not disable_cast:
        s = torch.exp2(torch.ceil(torch.log2(s)))  # UE8M0 cast
    R, K = x.shape
    s = s.repeat_interleave(block_rows, 0)[:R].repeat_interleave(128, 1)[:, :K]
    return x.float() * s


def module(arch: str = "sm90") -> SimpleNamespace:
    def fp8_mqa_logits(q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits=True):
        """logits [T, S] fp32: out[i, j] = sum_h relu(q[i, h] . (kv[0][j] * kv[1][j])) * weights[i, h]."""
        k, k_scale = kv
        assert q.dtype == torch.float8_e4m3fn and k.dtype == torch.float8_e4m3fn
        T, H, D = q.shape
        assert H == 64 and D == 128, f"built for 64 heads of dim 128, got {H} x {D}"
        assert weights.dtype == torch.float32 and tuple(weights.shape) == (T, H)
        assert cu_seq_len_k_start.dtype == torch.int32 and cu_seq_len_k_end.dtype == torch.int32
        assert k_scale.dtype == torch.float32 and tuple(k_scale.shape) == (k.shape[0],)
        S = k.shape[0]
        kj = k.float() * k_scale[:, None]
        logits = torch.einsum("thd,sd->ths", q.float(), kj).relu()
        logits = torch.einsum("ths,th->ts", logits, weights)
        j = torch.arange(S)
        inside = (j[None, :] >= cu_seq_len_k_start.long()[:, None]) & (j[None, :] < cu_seq_len_k_end.long()[:, None])
        unfilled = -math.inf if clean_logits else math.nan  # not cleaned: whatever the buffer held
        return logits.masked_fill(~inside, unfilled)

    def get_mk_alignment_for_contiguous_layout():
        return ALIGN

    def m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices, recipe=None, compiled_dims="nk", disable_ue8m0_cast=False):
        """d[r] = a[r] @ b[m_indices[r]]^T for rows with m_indices[r] >= 0; -1 rows are not computed."""
        (x, sfa), (w, sfb) = a, b
        assert x.dtype == torch.float8_e4m3fn and w.dtype == torch.float8_e4m3fn and d.dtype == torch.bfloat16
        M, K = x.shape
        E, N, _ = w.shape
        assert tuple(d.shape) == (M, N) and m_indices.dtype == torch.int32 and m_indices.numel() == M
        assert sfa.dtype == torch.float32 and tuple(sfa.shape) == (M, math.ceil(K / 128))
        assert sfb.dtype == torch.float32 and tuple(sfb.shape) == (E, math.ceil(N / 128), math.ceil(K / 128))
        assert M % ALIGN == 0, f"the contiguous layout is made of {ALIGN}-row blocks, got {M} rows"
        for block in m_indices.view(-1, ALIGN):  # each aligned block belongs to one expert (or is all padding)
            experts = block[block >= 0].unique()
            assert experts.numel() <= 1, f"an {ALIGN}-row block mixes experts {experts.tolist()}"
            assert bool((block[: int((block >= 0).sum())] >= 0).all()), "an expert's rows start at its block's start"
        xd = _dequant(x, sfa, arch, disable_ue8m0_cast, 1)
        d.fill_(math.nan)  # rows tagged -1 hold nothing meaningful
        for e in range(E):
            rows = (m_indices == e).nonzero().squeeze(-1)
            if rows.numel():
                wd = _dequant(w[e], sfb[e], arch, disable_ue8m0_cast, 128)
                d[rows] = (xd[rows] @ wd.t()).to(torch.bfloat16)

    def fp8_gemm_nt(a, b, d, c=None, recipe=None, compiled_dims="nk", disable_ue8m0_cast=False):
        """d = a @ b^T with 1x128 scales for a and 128x128 scales for b; bf16 out."""
        (x, sfa), (w, sfb) = a, b
        assert (x.dtype == torch.float8_e4m3fn and w.dtype == torch.float8_e4m3fn and d.dtype == torch.bfloat16
                and c is None)
        d.copy_((_dequant(x, sfa, arch, disable_ue8m0_cast, 1)
                 @ _dequant(w, sfb, arch, disable_ue8m0_cast, 128).t()).to(d.dtype))

    return SimpleNamespace(
        fp8_mqa_logits=fp8_mqa_logits,
        get_mk_alignment_for_contiguous_layout=get_mk_alignment_for_contiguous_layout,
        m_grouped_fp8_gemm_nt_contiguous=m_grouped_fp8_gemm_nt_contiguous,
        fp8_gemm_nt=fp8_gemm_nt,
    )
