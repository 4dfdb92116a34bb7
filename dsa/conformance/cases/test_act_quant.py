"""act_quant against the oracle: fp8 values and scales must be identical (tolerances.ACT_QUANT_EXACT)."""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.calling import call_op
from dsa.conformance.inputs import randn, rng
from dsa.conformance.reference.fp8 import E4M3_MAX, decode, round_to_e4m3
from dsa.conformance.reference.ops import ref_act_quant

pytestmark = pytest.mark.op("act_quant")


def awkward_rows(shape, dtype, seed: int) -> torch.Tensor:
    """randn rows plus: an all-zero block, a block below the 1e-4 amax floor, huge and tiny values."""
    g = rng(seed)
    x = randn(shape, g)
    flat = x.reshape(-1, shape[-1])
    flat[0, :64] = 0.0  # zero block (amax floor)
    if flat.shape[0] > 1:
        flat[1] *= 3e-6  # whole row below the 1e-4 amax floor
    if flat.shape[0] > 2:
        flat[2, ::7] = 3e3  # outliers: small values of their block become fp8 subnormals
    if flat.shape[0] > 4:  # amax / 448 lands one fp32 ulp above a power of two (log2 in fp32 misses it)
        flat[3:5] *= 0.05
        flat[3, 5] = 0.4375000298023224  # s = 2^-10 * (1 + 2^-23): ue8m0 scale must be 2^-9
        flat[4, 0] = 56.000003814697266  # s = 2^-3 * (1 + 2^-23): ue8m0 scale must be 2^-2
        flat[4, -1] = 56.0  # s = 2^-3 exactly: ue8m0 keeps it, the value maps to 448
    return x.to(dtype)


CASES = [
    # (name, shape, dtype, block_size) -- K not a multiple of the block gives a partial last block
    ("bf16_T13_K256", (13, 256), torch.bfloat16, 128),
    ("fp32_3d_K200_partial", (2, 7, 200), torch.float32, 128),
    ("fp16_K96_block64_partial", (5, 96), torch.float16, 64),
    ("bf16_671B_hidden", (3, 7168), torch.bfloat16, 128),
]


@pytest.mark.parametrize("ue8m0", [False, True], ids=["plain", "ue8m0"])
@pytest.mark.parametrize("name,shape,dtype,block", CASES, ids=[c[0] for c in CASES])
def test_act_quant(provider, name, shape, dtype, block, ue8m0):
    x = awkward_rows(shape, dtype, seed=len(name))
    y, s = call_op("act_quant", provider, x, block, ue8m0)
    y_ref, s_ref = ref_act_quant(x, block, ue8m0)

    assert y.dtype == torch.float8_e4m3fn and y.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == s_ref.shape
    s_diff = (s.cpu() != s_ref).nonzero()
    assert len(s_diff) == 0, (
        f"scales differ at {s_diff[:5].tolist()}: {s.cpu()[tuple(s_diff[0])]} vs {s_ref[tuple(s_diff[0])]}"
    )
    a, e = decode(y.cpu()), decode(y_ref)
    y_diff = (a != e).nonzero()  # value compare: +0 == -0
    assert len(y_diff) == 0, (
        f"{len(y_diff)} fp8 values differ; first at {y_diff[0].tolist()}: "
        f"actual {a[tuple(y_diff[0])].item()} expected {e[tuple(y_diff[0])].item()} (x = {x[tuple(y_diff[0])].item()})"
    )
    if ue8m0:
        assert torch.equal(torch.exp2(torch.log2(s.cpu()).round()), s.cpu()), "ue8m0 scales must be powers of two"


def test_oracle_rounding_matches_ieee_rne():
    """Self-check of the oracle's own fp8 rounding against torch's fp32 -> e4m3fn conversion."""
    g = rng(0)
    grid = decode(torch.arange(0, 0x7F, dtype=torch.uint8))
    midpoints = (grid[1:] + grid[:-1]) / 2  # exact ties: must go to the even code
    v = torch.cat([grid, midpoints, -midpoints, randn((4000,), g, scale=50).double().clamp(-E4M3_MAX, E4M3_MAX)])
    v = v.float().double()  # values representable in fp32, so torch's conversion sees the same number
    assert torch.equal(decode(round_to_e4m3(v)), decode(v.float().to(torch.float8_e4m3fn)))
