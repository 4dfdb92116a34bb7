"""grouped_gemm against the oracle's per-expert fp64 loop: empty / uneven groups, padding rows."""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.calling import call_op
from dsa.conformance.inputs import quantize_rows, quantize_weight, randn, rng
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.ops import ref_grouped_gemm
from dsa.conformance.tolerances import out_tol

pytestmark = pytest.mark.op("grouped_gemm")

CASES = [
    # (name, m_sizes, padding rows, K, N, input kind, m_sizes dtype)
    ("fp8_uneven_empty_pad", [5, 0, 3, 1], 2, 200, 136, "fp8", torch.int32),  # M=11, partial blocks
    ("fp8_671B_hidden", [6, 0, 7], 0, 7168, 256, "fp8", torch.int64),  # M=13, no padding
    ("bf16_uneven_pad", [0, 4, 1, 0, 2], 2, 200, 72, torch.bfloat16, torch.int32),
    ("fp32_all_empty", [0, 0, 0], 3, 64, 40, torch.float32, torch.int64),  # only padding rows
    ("fp32_single_group", [7], 0, 96, 48, torch.float32, torch.int32),
]


@pytest.mark.parametrize(
    "name,m_sizes,pad,K,N,kind,size_dtype", CASES, ids=[c[0] for c in CASES]
)
def test_grouped_gemm(provider, name, m_sizes, pad, K, N, kind, size_dtype):
    g = rng(len(name))
    E, M = len(m_sizes), sum(m_sizes) + pad
    x = randn((M, K), g)
    w = randn((E, N, K), g, scale=K**-0.5)
    sizes = torch.tensor(m_sizes, dtype=size_dtype)
    if kind == "fp8":
        x, x_scale = quantize_rows(x)
        pairs = [quantize_weight(w[e]) for e in range(E)]
        w, w_scale = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        out_dtype = torch.bfloat16
    else:
        x, w, x_scale, w_scale = x.to(kind), w.to(kind), None, None
        out_dtype = kind

    y = call_op("grouped_gemm", provider, x, x_scale, w, w_scale, sizes)
    assert y.dtype == out_dtype and y.shape == (M, N)
    tol = out_tol(out_dtype)
    assert_close(y, ref_grouped_gemm(x, x_scale, w, w_scale, sizes), tol.atol, tol.rtol, tol.cos_eps,
                 f"grouped_gemm {name}")
    assert torch.count_nonzero(y[sum(m_sizes):].float()) == 0, "padding rows must be exactly 0"
