"""act_quant and fp8_linear in plain PyTorch (fp8 GEMM simulated by dequantise + fp32 matmul)."""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.backends.torch import chunks
from dsa.backends.torch.blocks import dequant_rows, dequant_tiles
from dsa.hal.fp8 import FP8_E4M3_MAX, SCALE_FLOOR, num_blocks, pow2_ceil


def act_quant(x: Tensor, block_size: int, ue8m0: bool) -> tuple[Tensor, Tensor]:
    """x [..., K] -> (fp8 [..., K], fp32 scales [..., ceil(K/block_size)]). See dsa.hal.act_quant."""
    if block_size <= 0:
        raise ValueError(f"act_quant: block_size must be positive, got {block_size}")
    if not x.is_floating_point() or x.dtype == torch.float8_e4m3fn:
        raise TypeError(f"act_quant: x must be bf16 / fp16 / fp32, got {x.dtype}")
    lead, K = x.shape[:-1], x.shape[-1]
    nb = num_blocks(K, block_size)
    xf = x.float()
    pad = nb * block_size - K
    if pad:  # zero padding never raises a block's amax (amax is floored at 1e-4 anyway)
        xf = torch.nn.functional.pad(xf, (0, pad))
    xb = xf.reshape(*lead, nb, block_size)  # [..., nb, B]
    amax = xb.abs().amax(dim=-1).clamp_min(SCALE_FLOOR)  # [..., nb]
    scale = amax / FP8_E4M3_MAX
    if ue8m0:
        scale = pow2_ceil(scale)
    y = (xb / scale.unsqueeze(-1)).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    y = y.reshape(*lead, nb * block_size)[..., :K].to(torch.float8_e4m3fn)
    return y, scale


def fp8_linear(x: Tensor, weight: Tensor, weight_scale_inv: Tensor, ue8m0: bool) -> Tensor:
    """y [..., N] = act_quant(x) dequantised @ dequant(weight)^T, fp32 math, one rounding to x.dtype."""
    if weight.dtype != torch.float8_e4m3fn or weight.dim() != 2:
        raise TypeError(
            f"fp8_linear: weight must be 2-D float8_e4m3fn [N, K], got {weight.dtype} {tuple(weight.shape)}"
        )
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"fp8_linear: x has K={x.shape[-1]} but weight is [N={N}, K={K}]")
    if tuple(weight_scale_inv.shape) != (num_blocks(N), num_blocks(K)):
        raise ValueError(f"fp8_linear: weight_scale_inv has shape {tuple(weight_scale_inv.shape)}, "
                         f"expected {(num_blocks(N), num_blocks(K))} for weight [{N}, {K}] (128x128 blocks)")
    xq, xs = act_quant(x, 128, ue8m0)
    xd = dequant_rows(xq, xs).reshape(-1, K)  # [M, K] fp32
    y = torch.empty(xd.shape[0], N, dtype=torch.float32, device=x.device)
    # Dequantise the weight in row slices so the fp32 copy stays bounded: by default multiples of 128 rows
    # within the chunk budget (fp32 elements = budget / 4); chunks.current().weight_rows may be any size.
    sizes = chunks.current()
    rows = sizes.weight_rows or max(128, (sizes.budget_bytes // 4 // max(K, 1)) // 128 * 128)
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        b0 = n0 // 128  # the scale block holding row n0; a slice may start inside it
        wd = dequant_tiles(weight[b0 * 128 : n1], weight_scale_inv[b0 : num_blocks(n1)])[n0 - b0 * 128 :]
        y[:, n0:n1] = xd @ wd.t()  # wd [n1 - n0, K]
    return y.to(x.dtype).reshape(*x.shape[:-1], N)
