"""Block-scaled fp8 -> fp32 dequantisation, shared by fp8_linear and grouped_gemm.

Two layouts (edge blocks may be partial, i.e. K or N need not be multiples of the block):
  rows   x [..., K] with s [..., ceil(K/B)]               (1 x B blocks: activations)
  tiles  w [..., N, K] with s [..., ceil(N/B), ceil(K/B)]  (B x B blocks: weights)
"""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.hal.fp8 import num_blocks


def dequant_rows(x: Tensor, scale: Tensor, block: int = 128) -> Tensor:
    """x [..., K] (fp8) * scale [..., ceil(K/block)] -> fp32 [..., K]."""
    K = x.shape[-1]
    expect = (*x.shape[:-1], num_blocks(K, block))
    if tuple(scale.shape) != expect:
        raise ValueError(f"activation scale has shape {tuple(scale.shape)}, expected {expect} "
                         f"(one fp32 scale per 1x{block} block of x {tuple(x.shape)})")
    s = scale.float().repeat_interleave(block, dim=-1)[..., :K]  # [..., K]
    return to_float(x) * s


def dequant_tiles(w: Tensor, scale: Tensor, block: int = 128) -> Tensor:
    """w [..., N, K] (fp8) * scale [..., ceil(N/block), ceil(K/block)] -> fp32 [..., N, K]."""
    N, K = w.shape[-2:]
    expect = (*w.shape[:-2], num_blocks(N, block), num_blocks(K, block))
    if tuple(scale.shape) != expect:
        raise ValueError(f"weight scale has shape {tuple(scale.shape)}, expected {expect} "
                         f"(one fp32 scale per {block}x{block} block of w {tuple(w.shape)})")
    s = scale.float().repeat_interleave(block, dim=-2)[..., :N, :]
    s = s.repeat_interleave(block, dim=-1)[..., :K]  # [..., N, K]
    return to_float(w) * s


_FP8_VALUES: dict[torch.device, Tensor] = {}  # [256] fp32: the value of each code
_E4M3_IN_FP16 = -16512  # int16 0xBF80: the sign bit and the 4 + 3 exponent/mantissa bits after << 7


def _code_values(device: torch.device) -> Tensor:
    table = _FP8_VALUES.get(device)
    if table is None:
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
        table = _FP8_VALUES[device] = codes.float().to(device)  # NaN codes stay NaN, as in x.float()
    return table


def fp8_has_nan(x: Tensor) -> bool:
    """Whether float8_e4m3fn x holds a NaN code (0x7F or 0xFF: the largest int8 / uint8 value)."""
    codes = x.contiguous().view(torch.int8)
    return codes.numel() > 0 and (int(codes.max()) == 0x7F or int(codes.view(torch.uint8).max()) == 0xFF)


def fp8_to_float(x: Tensor, out: Tensor | None = None, *, unscaled: bool = False,
                 has_nan: bool | None = None, scratch: Tensor | None = None) -> Tensor:
    """float8_e4m3fn -> float32, exactly as x.float() (NaN codes included), in vectorised passes.

    PyTorch's CPU cast converts one element at a time (~6 ns each): for the index keys of a long
    context (S x 128 every decode step) it cost more than the scoring matmul. e4m3 and fp16 share
    their layout below the exponent's top bit (subnormals included), so a code sign-extended to int16,
    shifted left by 7 and masked is the fp16 holding value * 2^-8 exactly; fp16 -> fp32 and * 2^8 are
    exact too. Multi-threaded elementwise passes: ~15x faster than the cast, 2-3x faster than a table
    lookup (a gather is single-threaded and its table competes with the data for cache). The two NaN
    codes would come out as +-480, so a tensor holding one takes the 256-entry table instead.

    `out` (fp32, x's shape, contiguous) lets a loop reuse one buffer. `unscaled=True` returns
    value * 2^-8 (still exact) for a caller that folds the 2^8 into a scale it applies anyway.
    `has_nan` is fp8_has_nan(x) when the caller already knows it (e.g. checked once for all chunks);
    `scratch` (int16, x's shape, contiguous) is reused for the fp16 bits instead of a fresh tensor.
    """
    if out is not None and (out.dtype != torch.float32 or out.shape != x.shape or not out.is_contiguous()):
        raise ValueError(f"fp8_to_float: out must be a contiguous fp32 tensor of shape {tuple(x.shape)}")
    codes = x.contiguous().view(torch.int8)
    if fp8_has_nan(codes) if has_nan is None else has_nan:
        values = _code_values(x.device).index_select(0, codes.view(torch.uint8).reshape(-1).int()).view(x.shape)
        out = values if out is None else out.copy_(values)
        return out.mul_(2.0 ** -8) if unscaled else out
    if scratch is not None and (
        scratch.dtype != torch.int16 or scratch.shape != x.shape or not scratch.is_contiguous()
    ):
        raise ValueError(f"fp8_to_float: scratch must be a contiguous int16 tensor of shape {tuple(x.shape)}")
    bits = codes.to(torch.int16) if scratch is None else scratch.copy_(codes)  # sign-extended codes
    half = bits.bitwise_left_shift_(7).bitwise_and_(_E4M3_IN_FP16).view(torch.float16)
    out = half.float() if out is None else out.copy_(half)
    return out if unscaled else out.mul_(256.0)


def to_float(x: Tensor) -> Tensor:
    """x as fp32: fp8 e4m3fn through fp8_to_float (exact, much faster than PyTorch's CPU cast)."""
    return fp8_to_float(x) if x.dtype == torch.float8_e4m3fn else x.float()
