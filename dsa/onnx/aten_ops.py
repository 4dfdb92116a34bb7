"""ONNX translations of the aten ops the model uses that torch.onnx's registry lacks.

`aten.sort.stable` (MoE: token rows ordered by expert with `argsort(stable=True)`): ONNX TopK with
k = the whole axis is a sort, and TopK breaks ties by the lower index (the ONNX spec), which is exactly
a stable sort - ascending with largest=0, descending with largest=1.
"""
from __future__ import annotations

import torch


def _sort_stable(x, stable=None, dim: int = -1, descending: bool = False):
    from onnxscript import opset19 as op

    from dsa.hal.onnx_graph import dim as shape_dim

    values, indices = op.TopK(x, shape_dim(x, dim), axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def aten_table() -> dict:
    return {torch.ops.aten.sort.stable: _sort_stable}
