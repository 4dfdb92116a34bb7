"""Reading the packed fp8 latent-cache token (dsa/hal/kv_format.py docstring) byte by byte.

Written from the layout description, not from kv_format's code. One token, little-endian:
    bytes [0, d_v)                    latent values, float8_e4m3fn
    bytes [d_v, d_v + 4 * d_v/128)    one float32 scale per 128 latent values
    remaining bytes                   rope values, bfloat16 (2 bytes each)
latent = fp8 value * scale of its group; rope is taken as is.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .fp8 import decode

GROUP = 128


def f32_from_bits(bits: Tensor) -> Tensor:
    """IEEE-754 binary32 bit patterns (int64 holding 0..2^32-1) -> float64 values."""
    bits = bits.long()
    sign = torch.where((bits >> 31) & 1 == 1, -1.0, 1.0).double()
    exponent = (bits >> 23) & 0xFF
    mantissa = (bits & 0x7FFFFF).double() / 2.0**23
    normal = (1.0 + mantissa) * torch.exp2((exponent - 127).double())
    subnormal = mantissa * 2.0**-126
    special = torch.where(mantissa == 0, torch.full_like(mantissa, float("inf")),
                          torch.full_like(mantissa, float("nan")))
    value = torch.where(exponent == 0, subnormal, torch.where(exponent == 0xFF, special, normal))
    return sign * value


def little_endian_words(raw: Tensor, width: int) -> Tensor:
    """uint8 [..., n * width] -> int64 [..., n]: each `width` consecutive bytes, least significant first."""
    b = raw.long().reshape(*raw.shape[:-1], raw.shape[-1] // width, width)
    word = torch.zeros(b.shape[:-1], dtype=torch.int64)
    for i in range(width):
        word |= b[..., i] << (8 * i)
    return word


def unpack_parts(packed: Tensor, d_v: int) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 [..., P] packed tokens -> float64 (fp8 values [..., d_v/128, 128], their scales [..., d_v/128],
    rope [..., r])."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed tokens are uint8, got {packed.dtype}")
    n_groups = d_v // GROUP
    scale_end = d_v + 4 * n_groups
    lead = packed.shape[:-1]
    values = decode(packed[..., :d_v]).reshape(*lead, n_groups, GROUP)
    scales = f32_from_bits(little_endian_words(packed[..., d_v:scale_end], 4))  # [..., n_groups]
    rope = f32_from_bits(little_endian_words(packed[..., scale_end:], 2) << 16)  # bf16 = top half of fp32
    return values, scales, rope


def unpack_tokens(packed: Tensor, d_v: int) -> Tensor:
    """uint8 [..., P] packed tokens -> float64 [..., d_v + r] (dequantised latent, then rope)."""
    values, scales, rope = unpack_parts(packed, d_v)
    latent = (values * scales.unsqueeze(-1)).reshape(*packed.shape[:-1], d_v)
    return torch.cat([latent, rope], dim=-1)
