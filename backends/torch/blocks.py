"""Block-scaled fp8 -> fp32 dequantisation, shared by fp8_linear and grouped_gemm.

Two layouts (edge blocks may be partial, i.e. K or N need not be multiples of the block):
  rows   x [..., K] with s [..., ceil(K/B)]               (1 x B blocks: activations)
  tiles  w [..., N, K] with s [..., ceil(N/B), ceil(K/B)]  (B x B blocks: weights)
"""
from __future__ import annotations

import torch
from torch import Tensor

from runtime.ops._library import num_blocks


def dequant_rows(x: Tensor, scale: Tensor, block: int = 128) -> Tensor:
    """x [..., K] (fp8) * scale [..., ceil(K/block)] -> fp32 [..., K]."""
    K = x.shape[-1]
    expect = (*x.shape[:-1], num_blocks(K, block))
    if tuple(scale.shape) != expect:
        raise ValueError(f"activation scale has shape {tuple(scale.shape)}, expected {expect} "
                         f"(one fp32 scale per 1x{block} block of x {tuple(x.shape)})")
    s = scale.float().repeat_interleave(block, dim=-1)[..., :K]  # [..., K]
    return x.float() * s


def dequant_tiles(w: Tensor, scale: Tensor, block: int = 128) -> Tensor:
    """w [..., N, K] (fp8) * scale [..., ceil(N/block), ceil(K/block)] -> fp32 [..., N, K]."""
    N, K = w.shape[-2:]
    expect = (*w.shape[:-2], num_blocks(N, block), num_blocks(K, block))
    if tuple(scale.shape) != expect:
        raise ValueError(f"weight scale has shape {tuple(scale.shape)}, expected {expect} "
                         f"(one fp32 scale per {block}x{block} block of w {tuple(w.shape)})")
    s = scale.float().repeat_interleave(block, dim=-2)[..., :N, :]
    s = s.repeat_interleave(block, dim=-1)[..., :K]  # [..., N, K]
    return w.float() * s


_FP8_VALUES: dict[torch.device, Tensor] = {}


def fp8_to_float(x: Tensor) -> Tensor:
    """float8_e4m3fn -> float32, exactly as x.float(), through a 256-entry table.

    PyTorch's CPU cast converts one element at a time (~6 ns each): for the index keys of a long
    context (S x 128 every decode step) the cast cost several times the scoring matmul. A table
    lookup over the raw bytes is exact and about 4x faster.
    """
    table = _FP8_VALUES.get(x.device)
    if table is None:
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
        table = _FP8_VALUES[x.device] = codes.float().to(x.device)  # NaN codes stay NaN, as in x.float()
    return table.index_select(0, x.contiguous().view(torch.uint8).reshape(-1).int()).view(x.shape)
