"""What hardware is present: CUDA / ROCm GPUs through torch, Ascend NPUs through torch_npu, else the CPU.

    hw = detect()        # Hardware(platform="cuda", arch="sm90", name="NVIDIA H200", device_count=8, memory_gb=139.8)
    matching_profiles(hw, {n: load_profile(n) for n in list_profiles()})   # ["h200", "h20", "h100"]

torch_npu is only imported when it is installed (`importlib.util.find_spec`); it is never required.
memory_gb is GiB per device, the unit device profiles use.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import platform as _platform
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

from dsa.hal.target import ascend_arch, cuda_arch

log = logging.getLogger("dsa.detect")

GiB = 1 << 30

@dataclass(frozen=True)
class Hardware:
    platform: str  # cpu | cuda | rocm | npu
    arch: str  # cpu, sm90, gfx942, ascend910b, ...
    name: str  # human-readable device name
    device_count: int
    memory_gb: float  # per device, GiB

    def describe(self) -> str:
        count = f"{self.device_count} x " if self.device_count != 1 else ""
        return f"{count}{self.name} ({self.platform}/{self.arch}, {self.memory_gb:.1f} GiB each)"


def detect() -> Hardware:
    """The accelerator this process can use; CUDA/ROCm first, then Ascend, then the CPU."""
    hw = _detect_cuda() or _detect_npu()
    return hw if hw is not None else _detect_cpu()


def _detect_cuda() -> Hardware | None:
    try:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return None
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        if getattr(torch.version, "hip", None):
            arch = str(getattr(props, "gcnArchName", "") or "gfx").split(":")[0]  # "gfx942:sramecc+:xnack-"
            platform = "rocm"
        else:
            arch = cuda_arch(torch.cuda.get_device_capability(0))
            platform = "cuda"
        return Hardware(platform, arch, props.name, count, props.total_memory / GiB)
    except Exception as err:  # a broken driver must not hide the CPU path
        log.warning("CUDA/ROCm detection failed (%s); treating this machine as CPU-only", err)
        return None


def _detect_npu() -> Hardware | None:
    try:
        present = importlib.util.find_spec("torch_npu") is not None
    except (ImportError, ValueError):
        present = False
    if not present:
        return None
    try:
        torch_npu = importlib.import_module("torch_npu")
        npu = torch_npu.npu
        if not npu.is_available() or npu.device_count() == 0:
            return None
        count = npu.device_count()
        arch = ascend_arch(int(npu.get_soc_version()))
        name = str(npu.get_device_name(0))
        props = npu.get_device_properties(0)
        return Hardware("npu", arch, name, count, props.total_memory / GiB)
    except Exception as err:  # torch_npu without CANN fails to import: report it, fall back to CPU
        log.warning("torch_npu is installed but Ascend detection failed (%s); treating this machine as CPU-only", err)
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "CPU"


def cpu_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 0.0


def _detect_cpu() -> Hardware:
    return Hardware("cpu", "cpu", cpu_name(), 1, cpu_memory_gb())


ProfileLike = object  # anything with .name, .platform, .arch, .memory_gb (dsa.planning.device_profile.DeviceProfile)


def matching_profiles(hw: Hardware, profiles: Union[Mapping[str, ProfileLike], Iterable[ProfileLike]]) -> list[str]:
    """Names of the profiles whose platform and arch are this hardware's, closest memory size first."""
    items = profiles.values() if isinstance(profiles, Mapping) else profiles
    hits = [p for p in items if p.platform == hw.platform and p.arch == hw.arch]
    hits.sort(key=lambda p: (abs(p.memory_gb - hw.memory_gb) if hw.platform != "cpu" else 0.0, p.name))
    return [p.name for p in hits]


__all__ = ["Hardware", "detect", "matching_profiles", "cuda_arch", "ascend_arch"]
