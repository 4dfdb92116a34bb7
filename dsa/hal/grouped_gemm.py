"""HAL op `grouped_gemm`: one GEMM per expert over rows grouped by expert (MoE)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dsa.hal.fp8 import num_blocks
from dsa.hal.library import hal_op

FP8 = torch.float8_e4m3fn


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

def onnx_translation():
    """This op in standard ONNX ops (dsa.hal.onnx_graph.grouped_gemm), for custom_translation_table;
    imports onnxscript (the `onnx` extra) only when asked."""
    from dsa.hal import onnx_graph

    def grouped_gemm_onnx(x, x_scale, w, w_scale, m_sizes, provider):
        return onnx_graph.grouped_gemm(x, x_scale, w, w_scale, m_sizes)

    return grouped_gemm_onnx



def args_reason(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor],
                m_sizes: Tensor) -> Optional[str]:
    """Why the arguments break the contract's shape and dtype rules (None: they keep them), shared by
    every provider. No device sync: what m_sizes holds is not read."""
    if x.dim() != 2 or w.dim() != 3 or m_sizes.dim() != 1:
        return (f"expected x [M, K], w [E, N, K], m_sizes [E]; got "
                f"{tuple(x.shape)}, {tuple(w.shape)}, {tuple(m_sizes.shape)}")
    if w.shape[2] != x.shape[1] or m_sizes.shape[0] != w.shape[0]:
        return f"x {tuple(x.shape)}, w {tuple(w.shape)} and m_sizes {tuple(m_sizes.shape)} disagree"
    if m_sizes.dtype not in (torch.int32, torch.int64):
        return f"m_sizes must be int32 / int64, got {m_sizes.dtype}"
    if (x.dtype == FP8) != (w.dtype == FP8):
        return f"x is {x.dtype} but w is {w.dtype}: both or neither must be fp8"
    if x.dtype == FP8:
        if x_scale is None or w_scale is None:
            return "fp8 inputs need both x_scale and w_scale"
        (M, K), (E, N, _) = x.shape, w.shape
        x_blocks, w_blocks = (M, num_blocks(K)), (E, num_blocks(N), num_blocks(K))
        if tuple(x_scale.shape) != x_blocks or tuple(w_scale.shape) != w_blocks:
            return (f"x_scale {tuple(x_scale.shape)} / w_scale {tuple(w_scale.shape)} should be "
                    f"{x_blocks} / {w_blocks} (1x128 and 128x128 blocks)")
    return None


def check_args(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor) -> None:
    """`args_reason` as a ValueError (for providers that raise on arguments outside the contract)."""
    reason = args_reason(x, x_scale, w, w_scale, m_sizes)
    if reason:
        raise ValueError(f"grouped_gemm: {reason}")
