"""What every Triton provider checks before it runs: the target (plan time) and the tensors (call time).

    target_reason(target)      -> None, or why Triton kernels cannot run on this platform / arch
    tensors_reason(*tensors)   -> None, or why these tensors cannot go to a Triton kernel here
    INTERPRETING               True when TRITON_INTERPRET=1 was set before triton kernels were defined

Triton decides between compiling and interpreting when a `@triton.jit` function is defined, from the
environment at that moment; `INTERPRETING` reads that decision off a probe kernel defined here, so it
agrees with every kernel of the package (all are defined at import, after this module).
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from dsa.hal.registry import Target


@triton.jit
def _probe():
    pass


INTERPRETING = isinstance(_probe, InterpretedFunction)

NO_GPU = "needs a CUDA or ROCm GPU (TRITON_INTERPRET=1 runs it on CPU tensors for tests)"

# AMD architectures Triton's AMD backend targets (CDNA2/3/4, RDNA3/4); CI compiles gfx942 and gfx950.
_HIP_ARCH = re.compile(r"gfx(90a|94[0-2]|950|11[0-9a-f]{2}|12[0-9a-f]{2})$")


def target_reason(target: Target) -> Optional[str]:
    """Plan-time check shared by every Triton provider: CUDA sm80+ or a ROCm arch Triton supports."""
    if target.platform not in ("cuda", "rocm"):
        return f"{NO_GPU}; the target is {target.platform}/{target.arch}"
    if target.platform == "cuda":
        m = re.fullmatch(r"sm(\d+)", target.arch)
        if m is None or int(m.group(1)) < 80:
            return f"needs an NVIDIA GPU of sm80 or newer (bf16 tensor cores); the target is {target.arch}"
    elif not _HIP_ARCH.match(target.arch):
        return (f"Triton's AMD backend does not target {target.arch} "
                f"(supported: gfx90a, gfx942, gfx950, gfx11xx, gfx12xx)")
    return None


def tensors_reason(*tensors) -> Optional[str]:
    """Call-time check: all tensors on one CUDA/ROCm device, or on the CPU when interpreting."""
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        return f"tensors are on different devices ({', '.join(sorted(map(str, devices)))})"
    if not devices:
        return None
    (device,) = devices
    if INTERPRETING:
        return None if device.type == "cpu" else f"TRITON_INTERPRET=1 is set, so kernels run on CPU tensors, not {device}"
    if device.type != "cuda":
        return f"{NO_GPU}; got {device.type} tensors"
    return None
