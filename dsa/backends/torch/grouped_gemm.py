"""grouped_gemm in plain PyTorch: one fp32 matmul per non-empty expert group."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dsa.backends.torch.blocks import dequant_rows, dequant_tiles
from dsa.hal.grouped_gemm import check_args

FP8 = torch.float8_e4m3fn


def grouped_gemm(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor) -> Tensor:
    """y[group e rows] = x[group e rows] @ w[e]^T; padding rows 0. See dsa.hal.grouped_gemm."""
    check_args(x, x_scale, w, w_scale, m_sizes)
    M, _ = x.shape
    N = w.shape[1]
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
