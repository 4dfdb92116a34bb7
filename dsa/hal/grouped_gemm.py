"""HAL op `grouped_gemm`: one GEMM per expert over rows grouped by expert (MoE)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dsa.hal.library import hal_op


def _fake(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor, provider: str):
    out_dtype = torch.bfloat16 if x.dtype == torch.float8_e4m3fn else x.dtype
    return x.new_empty((x.shape[0], w.shape[1]), dtype=out_dtype)


@hal_op(_fake)
def grouped_gemm(
    x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor, provider: str
) -> Tensor:
    """y[rows of group e] = x[rows of group e] @ w[e]^T, for each expert e in order.

    x        [M, K]   bf16 / fp32, or float8_e4m3fn with x_scale [M, ceil(K/128)] fp32 (1x128 blocks,
                      as produced by act_quant)
    w        [E, N, K] bf16 / fp32, or float8_e4m3fn with w_scale [E, ceil(N/128), ceil(K/128)] fp32
                      (128x128 blocks, edge blocks partial)
    m_sizes  [E]      int32/int64 row counts; group e is rows [sum(m_sizes[:e]), sum(m_sizes[:e+1])).
                      Groups may be empty. sum(m_sizes) <= M: the rows after the last group are
                      padding and their output is 0.
    Either both or neither of x and w are fp8 (x_scale / w_scale None for float inputs).

    Returns y [M, N]: x.dtype for float inputs, bf16 for fp8 inputs; fp32 accumulation.
    """
    raise NotImplementedError
