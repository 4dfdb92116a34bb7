"""What every Triton provider needs: the target (declared, plan time) and the tensors (checked, call time).

    REQUIRES                   the declaration (dsa.hal.capability): CUDA sm80+ or an AMD arch Triton targets
    tensors_reason(*tensors)   -> None, or why these tensors cannot go to a Triton kernel here
    INTERPRETING               True when TRITON_INTERPRET=1 was set before triton kernels were defined
    may_read_host()            True when a provider may read its (CPU) tensors on the host for a shortcut:
                               interpreting, and outside a static region (dsa.hal.capture)

Triton decides between compiling and interpreting when a `@triton.jit` function is defined, from the
environment at that moment; `INTERPRETING` reads that decision off a probe kernel defined here, so it
agrees with every kernel of the package (all are defined at import, after this module).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from dsa.hal.capability import Requires
from dsa.hal.capture import host_reads_allowed


@triton.jit
def _probe():
    pass


INTERPRETING = isinstance(_probe, InterpretedFunction)


def may_read_host() -> bool:
    """Whether an interpreter-only shortcut may read tensors on the host here (never in a captured step)."""
    return INTERPRETING and host_reads_allowed()


NO_GPU = "needs a CUDA or ROCm GPU (TRITON_INTERPRET=1 runs it on CPU tensors for tests)"

CUDA_ARCHS = ("sm80+",)  # bf16 tensor cores
# AMD architectures Triton's AMD backend targets (CDNA2/3/4, RDNA3/4); CI compiles gfx942 and gfx950.
HIP_ARCHS = ("gfx90a", "gfx940", "gfx941", "gfx942", "gfx950", "gfx11*", "gfx12*")
REQUIRES = Requires(platforms=("cuda", "rocm"), archs=CUDA_ARCHS + HIP_ARCHS)


def tensors_reason(*tensors) -> Optional[str]:
    """Call-time check: all tensors on one CUDA/ROCm device, or on the CPU when interpreting."""
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        return f"tensors are on different devices ({', '.join(sorted(map(str, devices)))})"
    if not devices:
        return None
    (device,) = devices
    if INTERPRETING:
        return (None if device.type == "cpu"
                else f"TRITON_INTERPRET=1 is set, so kernels run on CPU tensors, not {device}")
    if device.type != "cuda":
        return f"{NO_GPU}; got {device.type} tensors"
    return None
