"""The one place that talks to `torch.library`.

Each HAL op is declared by a *contract* function: its Python signature (with type annotations) is the
op schema, its docstring is the contract, and its last argument is the provider name. `hal_op`
registers it as `torch.ops.dsa.<name>` with a fake (meta) implementation, so the model stays one opaque
graph for torch.compile / torch.export. The real implementation looks the provider up in
`dsa.hal.registry`; which provider that is was decided by the plan, not by torch's device dispatch.

If the per-call overhead of this path ever shows in decode benchmarks, this helper is the only code
to change.
"""
from __future__ import annotations

from typing import Callable

import torch

from dsa.hal import registry

_LIB = torch.library.Library("dsa", "DEF")


def hal_op(fake: Callable) -> Callable:
    """Decorator: register `contract` as torch.ops.dsa.<contract.__name__>; return the op packet."""

    def decorate(contract: Callable):
        name = contract.__name__
        schema = torch.library.infer_schema(contract, mutates_args=())
        _LIB.define(name + schema)

        def run_provider(*args):
            *op_args, provider = args
            return registry.get(name, provider).fn(*op_args)

        _LIB.impl(name, run_provider, "CompositeExplicitAutograd")
        torch.library.register_fake(f"dsa::{name}", fake, lib=_LIB)
        op = getattr(torch.ops.dsa, name)
        op.__doc__ = contract.__doc__
        return op

    return decorate
