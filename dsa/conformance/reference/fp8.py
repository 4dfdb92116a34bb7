"""float8_e4m3fn by hand in float64: decoding bytes and rounding onto the grid.

Independent of torch's fp8 conversions, so the oracle does not share a conversion bug with a backend.
e4m3fn byte: sign (bit 7), exponent (bits 6..3, bias 7), mantissa (bits 2..0). Exponent 0 is
subnormal (m/8 * 2^-6); exponent 15 with mantissa 7 is NaN; there is no infinity; max is 448.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

E4M3_MAX = 448.0


def _byte_value(byte: int) -> float:
    sign = -1.0 if byte & 0x80 else 1.0
    exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return math.nan
    if exponent == 0:
        return sign * mantissa / 8 * 2.0**-6
    return sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)


DECODE_TABLE = torch.tensor([_byte_value(b) for b in range(256)], dtype=torch.float64)  # [256]
_GRID = DECODE_TABLE[:0x7F]  # the 127 non-negative finite values, ascending with the byte code


def raw_bytes(x: Tensor) -> Tensor:
    """The uint8 storage of a float8_e4m3fn (or already uint8) tensor."""
    if x.dtype == torch.uint8:
        return x
    if x.dtype != torch.float8_e4m3fn:
        raise TypeError(f"expected float8_e4m3fn or uint8, got {x.dtype}")
    return x.contiguous().view(torch.uint8)


def decode(x: Tensor) -> Tensor:
    """float8_e4m3fn (or its uint8 bytes) -> float64 values, element by element."""
    return DECODE_TABLE[raw_bytes(x).long()]


def to_f64(x: Tensor) -> Tensor:
    """Any op input as float64: fp8 through the hand decoder, everything else exactly."""
    if x.dtype == torch.float8_e4m3fn:
        return decode(x)
    return x.to(torch.float64)


def round_to_e4m3(v: Tensor) -> Tensor:
    """float64 values with |v| <= 448 -> float8_e4m3fn, round to nearest, ties to even."""
    v = v.to(torch.float64)
    if torch.isnan(v).any() or (v.abs() > E4M3_MAX).any():
        raise ValueError("round_to_e4m3 needs finite values within +-448 (clamp first)")
    a = v.abs()
    hi = torch.searchsorted(_GRID, a)  # first code whose value >= a
    lo = (hi - 1).clamp_min(0)
    d_hi, d_lo = _GRID[hi] - a, a - _GRID[lo]
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))  # even code = even mantissa
    code = torch.where(take_hi, hi, lo)
    code = code | (torch.signbit(v).long() << 7)
    return code.to(torch.uint8).view(torch.float8_e4m3fn)
