"""HAL op `fp8_linear`: y = x @ W^T with W stored as fp8 + 128x128 block scales."""
from __future__ import annotations

from torch import Tensor

from dsa.hal.library import hal_op


def _fake(x: Tensor, weight: Tensor, weight_scale_inv: Tensor, ue8m0: bool, provider: str):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@hal_op(_fake)
def fp8_linear(x: Tensor, weight: Tensor, weight_scale_inv: Tensor, ue8m0: bool, provider: str) -> Tensor:
    """y [..., N] = x [..., K] @ dequant(weight)^T, in x's dtype.

    weight            [N, K] float8_e4m3fn
    weight_scale_inv  [ceil(N/128), ceil(K/128)] float32; the value of weight[n, k] is
                      weight[n, k] * weight_scale_inv[n // 128, k // 128] (edge blocks partial).
    The activation is first quantised exactly as `act_quant(x, 128, ue8m0)` (1x128 blocks), then
    y = sum_k (xq * xs)[.., k] * (w * ws)[n, k], accumulated in fp32 and rounded once to x.dtype.
    (This is what the fp8 GEMMs of the reference implementation and DeepGEMM compute.)
    """
    raise NotImplementedError


def onnx_translation():
    """This op in standard ONNX ops (dsa.hal.onnx_graph.fp8_linear), for custom_translation_table;
    imports onnxscript (the `onnx` extra) only when asked."""
    from dsa.hal import onnx_graph

    def fp8_linear_onnx(x, weight, weight_scale_inv, ue8m0, provider):
        return onnx_graph.fp8_linear(x, weight, weight_scale_inv, ue8m0)

    return fp8_linear_onnx
