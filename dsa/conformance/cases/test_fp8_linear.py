"""fp8_linear against the oracle (act_quant of x, block-dequantised weight, one fp64 matmul)."""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.calling import call_op
from dsa.conformance.inputs import quantize_weight, randn, rng
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.ops import ref_fp8_linear
from dsa.conformance.tolerances import out_tol

pytestmark = pytest.mark.op("fp8_linear")

CASES = [
    # (name, x shape, N, x dtype) -- K=200 / N=136 give partial 128-blocks on both weight axes
    ("bf16_T7_partial", (7, 200), 136, torch.bfloat16),
    ("fp32_3d_partial", (2, 3, 200), 136, torch.float32),
    ("bf16_671B_kv_a_proj", (5, 7168), 576, torch.bfloat16),  # 576 = 4.5 blocks
]


@pytest.mark.parametrize("ue8m0", [False, True], ids=["plain", "ue8m0"])
@pytest.mark.parametrize("name,x_shape,N,dtype", CASES, ids=[c[0] for c in CASES])
def test_fp8_linear(provider, name, x_shape, N, dtype, ue8m0):
    g = rng(len(name) + 7 * ue8m0)
    K = x_shape[-1]
    x = randn(x_shape, g, dtype)
    w, w_scale = quantize_weight(randn((N, K), g, scale=K**-0.5))  # outputs O(1)
    y = call_op("fp8_linear", provider, x, w, w_scale, ue8m0)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], N)
    tol = out_tol(dtype)
    assert_close(y, ref_fp8_linear(x, w, w_scale, ue8m0), tol.atol, tol.rtol, tol.cos_eps, f"fp8_linear {name}")
