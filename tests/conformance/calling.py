"""Calling an op on one provider the way the runtime does: through torch.ops.dsa.<op>(..., provider)."""
from __future__ import annotations

import pytest
import torch

from runtime import registry


def call_op(op: str, provider: str, *args):
    """Run `op` on `provider`; skip (with its reason) when the provider declines these arguments."""
    reason = registry.get(op, provider).supports_args(*args)
    if reason is not None:
        pytest.skip(f"{provider} declines this {op} case: {reason}")
    return getattr(torch.ops.dsa, op)(*args, provider)
