"""What a provider is asked to run on: the hardware and formats of one plan, and the architecture names.

Profiles (dsa/configs/devices), hardware detection (dsa.planning.hardware) and every backend's declared
capabilities (dsa.hal.capability) speak these names: sm80 / sm90 / sm100 / sm120 for NVIDIA compute
capability, gfx942 / gfx950 for AMD, ascend910b (A2) / ascend910_93 (A3) for Ascend.
"""
from __future__ import annotations

from dataclasses import dataclass

# torch_npu.npu.get_soc_version() ranges (docs/model-and-ops.md 5.1, "Hardware names").
_ASCEND_SOCS = ((range(220, 226), "ascend910b"), (range(250, 256), "ascend910_93"))


@dataclass(frozen=True)
class Target:
    """What a provider's `supported()` is asked about: the hardware and formats of one plan."""

    platform: str  # cpu | cuda | rocm | npu
    arch: str  # cpu, sm80, sm90, sm100, sm120, gfx942, gfx950, ascend910b, ascend910_93, ...
    fp8_format: str  # e4m3fn | e4m3fnuz | none
    kv_cache_dtype: str  # bf16 | fp8  (fp8 = the 656-byte token layout, dsa.hal.kv_format)
    page_size: int
    num_heads: int = 0  # MLA query heads per rank (0 = not known yet)
    index_n_heads: int = 0


def cuda_arch(capability: tuple[int, int]) -> str:
    """(9, 0) -> "sm90", (10, 0) -> "sm100", (12, 0) -> "sm120", (8, 9) -> "sm89"."""
    major, minor = capability
    return f"sm{major}{minor}"


def ascend_arch(soc_version: int) -> str:
    """torch_npu soc version -> profile arch (220-225 = A2 / 910B, 250-255 = A3 / 910C)."""
    for socs, arch in _ASCEND_SOCS:
        if soc_version in socs:
            return arch
    return f"ascend_soc{soc_version}"  # unknown family: no shipped profile matches
