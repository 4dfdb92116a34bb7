"""Code regions that must not read the device from the host: a CUDA graph capture, and its CPU stand-in.

A CUDA graph records kernels, not Python: a step captured once and replayed must neither read a tensor's
values on the host (`.item()`, `int(t)`, `bool(t)`, `.tolist()`, an output whose size depends on the
data) nor branch on them. Inside `static_region()` providers take their host-read-free paths (for
example the Triton interpreter's tile fitting, which reads CPU tensors, is skipped); `host_reads_allowed()`
tells them whether they may read.

`forbid_host_reads()` is the CPU proof of the same property: a static region in which every host read
of a tensor raises `HostReadError` naming it. It catches reads that go through PyTorch's dispatcher
(`aten._local_scalar_dense`, behind `.item()` / `int()` / `float()` / `bool()`), the data-dependent-shape
ops (`nonzero`, `masked_select`, `unique`, `bincount`, boolean-mask indexing, `repeat_interleave`
by a tensor of counts without an output size), and the Tensor methods that hand values to Python
(HOST_READ_METHODS), which can skip the dispatcher. It also refuses `torch.tensor(python data)` inside the
region (HOST_WRITE_OPS): on a GPU a host-to-device copy, which a graph would replay as a stale constant. On a GPU
the same step is checked by capturing it (a sync during capture is an error there).
Not seen: reads through a raw data pointer (ctypes, a C extension) - none of which the model's code uses.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_STATE = threading.local()

# aten ops whose result the host must see (a scalar, or a size that depends on the values)
HOST_READ_OPS = frozenset({
    "aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.bincount",
    "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive", "aten.equal",
})
# a tensor made from Python data inside the step: on a GPU a host-to-device copy, baked into a graph as a constant
HOST_WRITE_OPS = frozenset({"aten.lift_fresh", "aten.lift_fresh_copy"})


# Tensor methods that hand values to Python; patched too, since they can bypass the dispatcher (tolist and
# numpy always; item / int() / bool() for inference-mode tensors on the CPU)
HOST_READ_METHODS = ("tolist", "numpy", "item", "__bool__", "__int__", "__float__", "__index__")


class HostReadError(RuntimeError):
    """A tensor was read on the host inside a region that must not do so."""


def host_reads_allowed() -> bool:
    """False inside static_region() / forbid_host_reads(): take the path that reads nothing back."""
    return getattr(_STATE, "depth", 0) == 0


@contextlib.contextmanager
def static_region() -> Iterator[None]:
    """Mark a region as captured (or checked as if captured): providers must not read tensors on the host."""
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def _host_read_op(func, args, kwargs) -> str | None:
    name = func.overloadpacket._qualified_op_name.replace("::", ".")
    if name in HOST_READ_OPS:
        return name
    if name in HOST_WRITE_OPS:
        return f"{name} (torch.tensor of Python data)"
    if (name == "aten.repeat_interleave" and isinstance(args[-1] if len(args) < 3 else args[1], torch.Tensor)
            and kwargs.get("output_size") is None and len(args) < 4):
        return "aten.repeat_interleave by a tensor of counts (no output_size)"
    if name in ("aten.index", "aten.index_put", "aten.index_put_"):
        indices = args[1] if len(args) > 1 else ()
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
            return f"{name} with a boolean mask"
    return None


class _Detector(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = _host_read_op(func, args, kwargs)
        if what is not None:
            raise HostReadError(f"host read inside a static region: {what}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def forbid_host_reads() -> Iterator[None]:
    """A static region in which any host read of a tensor raises HostReadError (see the module docstring)."""
    patched = {}

    def refuse(name):
        def method(self, *a, **k):
            raise HostReadError(f"host read inside a static region: Tensor.{name}()")
        return method

    for name in HOST_READ_METHODS:
        patched[name] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, refuse(name))
    try:
        with static_region(), _Detector():
            yield
    finally:
        for name, method in patched.items():
            setattr(torch.Tensor, name, method)


__all__ = ["HOST_READ_METHODS", "HOST_READ_OPS", "HOST_WRITE_OPS", "HostReadError", "forbid_host_reads",
           "host_reads_allowed", "static_region"]
