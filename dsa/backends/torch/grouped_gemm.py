"""grouped_gemm in plain PyTorch: one fp32 matmul per non-empty expert group."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dsa.backends.torch.blocks import dequant_rows, dequant_tiles
from dsa.hal.library import num_blocks

FP8 = torch.float8_e4m3fn


def unsupported(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor) -> Optional[str]:
    """Why these arguments are outside what this implementation (and the contract) handles, or None."""
    if (x.dtype == FP8) != (w.dtype == FP8):
        return f"x is {x.dtype} but w is {w.dtype}: both or neither must be fp8"
    if x.dtype == FP8 and (x_scale is None or w_scale is None):
        return "fp8 inputs need both x_scale and w_scale"
    return None


def grouped_gemm(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor) -> Tensor:
    """y[group e rows] = x[group e rows] @ w[e]^T; padding rows 0. See dsa.hal.grouped_gemm."""
    reason = unsupported(x, x_scale, w, w_scale, m_sizes)
    if reason:
        raise TypeError(f"grouped_gemm: {reason}")
    if x.dim() != 2 or w.dim() != 3 or m_sizes.dim() != 1:
        raise ValueError(f"grouped_gemm: expected x [M, K], w [E, N, K], m_sizes [E]; got "
                         f"{tuple(x.shape)}, {tuple(w.shape)}, {tuple(m_sizes.shape)}")
    M, K = x.shape
    E, N, Kw = w.shape
    if Kw != K or m_sizes.shape[0] != E:
        raise ValueError(f"grouped_gemm: x [M={M}, K={K}], w [E={E}, N={N}, K={Kw}], m_sizes [{m_sizes.shape[0]}] disagree")
    sizes = [int(m) for m in m_sizes.tolist()]
    if any(m < 0 for m in sizes):
        raise ValueError(f"grouped_gemm: m_sizes must be >= 0, got {sizes}")
    total = sum(sizes)
    if total > M:
        raise ValueError(f"grouped_gemm: sum(m_sizes) = {total} exceeds the {M} rows of x")
    fp8 = x.dtype == FP8
    out_dtype = torch.bfloat16 if fp8 else x.dtype
    y = torch.zeros(M, N, dtype=out_dtype, device=x.device)  # padding rows stay 0
    if fp8:
        if tuple(x_scale.shape) != (M, num_blocks(K)) or tuple(w_scale.shape) != (E, num_blocks(N), num_blocks(K)):
            raise ValueError(f"grouped_gemm: x_scale {tuple(x_scale.shape)} / w_scale {tuple(w_scale.shape)} should be "
                             f"{(M, num_blocks(K))} / {(E, num_blocks(N), num_blocks(K))} (1x128 and 128x128 blocks)")
        xd = dequant_rows(x[:total], x_scale[:total])  # [total, K] fp32
    else:
        xd = x[:total]
    start = 0
    for e, rows in enumerate(torch.split(xd, sizes)):
        m = sizes[e]
        if m:
            we = dequant_tiles(w[e], w_scale[e]) if fp8 else w[e].float()  # [N, K] fp32
            y[start:start + m] = (rows.float() @ we.t()).to(out_dtype)
        start += m
    return y
