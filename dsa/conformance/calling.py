"""Calling an op on one provider the way the runtime does: through torch.ops.dsa.<op>(..., provider).

The cases build their inputs on the CPU. Where $DSA_TEST_DEVICE names an accelerator ("cuda" for CUDA
and ROCm, "npu" for Ascend; `dsa conformance` sets it from the hardware it finds), the inputs are moved
there before the call and the outputs brought back for the comparison with the oracle.
"""
from __future__ import annotations

import os

import pytest
import torch

from dsa.hal import registry

DEVICE_ENV = "DSA_TEST_DEVICE"


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def call_op(op: str, provider: str, *args):
    """Run `op` on `provider`; skip (with its reason) when the provider declines these arguments."""
    device = os.environ.get(DEVICE_ENV, "cpu")
    if device != "cpu":
        args = _to(args, device)
    reason = registry.get(op, provider).supports_args(*args)
    if reason is not None:
        pytest.skip(f"{provider} declines this {op} case: {reason}")
    out = getattr(torch.ops.dsa, op)(*args, provider)
    return out if device == "cpu" else _to(out, "cpu")
