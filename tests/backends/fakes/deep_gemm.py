"""deep_gemm stand-ins written from deepseek-ai/DeepGEMM's documentation.

Sources: README.md ("V3.2 MQA kernels for the indexer": the logit formula, clean_logits; "Grouped
GEMMs (contiguous layout)": expert segments aligned to get_mk_alignment_for_contiguous_layout(),
m_indices -1 = padding; the SM90 / SM100 scaling-factor notes), the pybind signatures of
m_grouped_fp8_gemm_nt_contiguous / fp8_gemm_nt (a, b as (data, scale) pairs, d written in place,
disable_ue8m0_cast) and tests/test_attention.py (reference logits, -inf outside [ks, ke)).
`module(arch)` models the one documented arch difference: SM100 casts fp32 scaling factors to UE8M0
(powers of two, rounded up here) unless disable_ue8m0_cast=True.

Every argument is checked against the documented contract and used: dtypes, exact shapes of data and
scaling factors (a scale tensor of any other shape is rejected, never sliced or broadcast), one device,
contiguous operands (DeepGEMM's host code requires them; our adapters make them so), the logits window
0 <= ks <= ke <= S per query row (DeepGEMM's tests build them so; a window past the keys or inverted is
not described, so it is rejected), m_indices in {-1} u [0, E) with each expert's rows starting a
128-row block, d [M, N] bf16 written in place. recipe / compiled_dims / c are accepted with their
defaults only (not modelled).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

ALIGN = 128


def _same_device(*tensors):
    devices = {t.device for t in tensors}
    assert len(devices) == 1, f"all tensors on one device, got {sorted(map(str, devices))}"


def _check_common(recipe, compiled_dims, disable_ue8m0_cast):
    assert recipe is None and compiled_dims == "nk", "recipe / compiled_dims: only the defaults are modelled"
    assert isinstance(disable_ue8m0_cast, bool)


def _dequant(x, scale, arch, disable_cast, block_rows: int):
    """fp8 [R, K] with scales [ceil(R/block_rows), ceil(K/128)] fp32 (exactly that shape) -> fp32 [R, K]."""
    R, K = x.shape
    want = (math.ceil(R / block_rows), math.ceil(K / 128))
    assert scale.dtype == torch.float32 and tuple(scale.shape) == want, (
        f"scaling factors for [{R}, {K}] in {block_rows}x128 blocks are {want} fp32, got {tuple(scale.shape)} "
        f"{scale.dtype}")
    assert x.is_contiguous() and scale.is_contiguous(), "contiguous data and scaling factors"
    s = scale.float()
    if arch == "sm100" and not disable_cast:
        s = torch.exp2(torch.ceil(torch.log2(s)))  # UE8M0 cast
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
        assert k.dim() == 2 and k.shape[1] == D, f"k [S, {D}], got {tuple(k.shape)}"
        assert isinstance(clean_logits, bool)
        ks, ke = cu_seq_len_k_start, cu_seq_len_k_end
        _same_device(q, k, k_scale, weights, ks, ke)
        for t in (q, k, k_scale, weights, ks, ke):
            assert t.is_contiguous(), "contiguous inputs"
        assert tuple(ks.shape) == (T,) and tuple(ke.shape) == (T,), f"ks / ke [T={T}], got {ks.shape} / {ke.shape}"
        S = k.shape[0]
        assert bool(((ks >= 0) & (ks <= ke) & (ke <= S)).all()), f"windows 0 <= ks <= ke <= S={S} per query row"
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
        _check_common(recipe, compiled_dims, disable_ue8m0_cast)
        assert x.dtype == torch.float8_e4m3fn and w.dtype == torch.float8_e4m3fn and d.dtype == torch.bfloat16
        _same_device(x, sfa, w, sfb, d, m_indices)
        M, K = x.shape
        E, N, K2 = w.shape
        assert K2 == K, f"a [M, {K}] and b [E, N, {K2}] disagree on K"
        assert tuple(d.shape) == (M, N) and d.is_contiguous(), f"d [{M}, {N}] contiguous, got {tuple(d.shape)}"
        assert m_indices.dtype == torch.int32 and tuple(m_indices.shape) == (M,), "m_indices [M] int32"
        assert bool(((m_indices >= -1) & (m_indices < E)).all()), f"m_indices are experts in [0, {E}) or -1"
        assert sfa.dtype == torch.float32 and tuple(sfa.shape) == (M, math.ceil(K / 128))
        assert sfb.dtype == torch.float32 and tuple(sfb.shape) == (E, math.ceil(N / 128), math.ceil(K / 128))
        assert w.is_contiguous() and sfb.is_contiguous()
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
        _check_common(recipe, compiled_dims, disable_ue8m0_cast)
        assert (x.dtype == torch.float8_e4m3fn and w.dtype == torch.float8_e4m3fn and d.dtype == torch.bfloat16
                and c is None)
        _same_device(x, sfa, w, sfb, d)
        assert x.dim() == 2 and w.dim() == 2 and x.shape[1] == w.shape[1], f"a [M, K], b [N, K]: {x.shape} / {w.shape}"
        assert tuple(d.shape) == (x.shape[0], w.shape[0]) and d.is_contiguous(), f"d [M, N], got {tuple(d.shape)}"
        d.copy_((_dequant(x, sfa, arch, disable_ue8m0_cast, 1)
                 @ _dequant(w, sfb, arch, disable_ue8m0_cast, 128).t()).to(d.dtype))

    return SimpleNamespace(
        fp8_mqa_logits=fp8_mqa_logits,
        get_mk_alignment_for_contiguous_layout=get_mk_alignment_for_contiguous_layout,
        m_grouped_fp8_gemm_nt_contiguous=m_grouped_fp8_gemm_nt_contiguous,
        fp8_gemm_nt=fp8_gemm_nt,
    )
