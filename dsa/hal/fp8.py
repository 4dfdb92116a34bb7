"""fp8 numerics every provider shares: the e4m3 range, the scale floor, the ue8m0 (power-of-two) scale rule
and the 128-block count (docs/model-and-ops.md 3 and 4)."""
from __future__ import annotations

import torch

FP8_E4M3_MAX = 448.0  # OCP float8_e4m3fn; ROCm gfx942 backends convert to e4m3fnuz (max 240) themselves
SCALE_FLOOR = 1e-4  # amax is clamped to this before computing a scale


def pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """2 ** ceil(log2(s)) exactly, for positive finite fp32 s: the ue8m0 scale rule.

    frexp gives s = m * 2**e with m in [0.5, 1); a float log2 could round an s just above a power
    of two down onto it.
    """
    mantissa, exponent = torch.frexp(s)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)  # s is already a power of two
    return torch.ldexp(torch.ones_like(s), exponent)


def num_blocks(n: int, block: int = 128) -> int:
    return (n + block - 1) // block
