"""HAL op `act_quant`: blockwise fp8 quantisation of activations."""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.hal.fp8 import num_blocks
from dsa.hal.library import hal_op


def _fake(x: Tensor, block_size: int, ue8m0: bool, provider: str):
    nb = num_blocks(x.shape[-1], block_size)
    return (
        x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
        x.new_empty((*x.shape[:-1], nb), dtype=torch.float32),
    )


@hal_op(_fake)
def act_quant(x: Tensor, block_size: int, ue8m0: bool, provider: str) -> tuple[Tensor, Tensor]:
    """Quantise x [..., K] (bf16 / fp16 / fp32) to float8_e4m3fn in blocks of `block_size` along K.

    For each block b of the last dimension (the last block may be partial):
        amax  = max(max|x_b|, 1e-4)
        s_b   = amax / 448                      (fp32)
        s_b   = 2 ** ceil(log2(s_b))            if ue8m0 (scale is a power of two)
        y_b   = clamp(x_b / s_b, -448, 448) -> float8_e4m3fn (round to nearest even)

    Returns (y [..., K] float8_e4m3fn, s [..., ceil(K / block_size)] float32); x ~= y * s.
    """
    raise NotImplementedError  # the registered op dispatches to a provider


def onnx_translation():
    """This op in standard ONNX ops (dsa.hal.onnx_graph.act_quant), for custom_translation_table;
    imports onnxscript (the `onnx` extra) only when asked."""
    from dsa.hal import onnx_graph

    def act_quant_onnx(x, block_size, ue8m0, provider):
        return onnx_graph.act_quant(x, block_size, ue8m0)

    return act_quant_onnx
