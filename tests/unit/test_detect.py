"""Hardware detection: CPU here; CUDA, ROCm and Ascend through stand-ins for torch.cuda / torch_npu."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from dsa.planning import hardware as det
from dsa.planning.device_profile import list_profiles, load_profile
from dsa.planning.hardware import Hardware, ascend_arch, cuda_arch, detect, matching_profiles


@pytest.fixture(scope="module")
def profiles():
    return {n: load_profile(n) for n in list_profiles()}


def test_detect_cpu_here():
    hw = detect()
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert hw.platform == "cpu" and hw.arch == "cpu" and hw.device_count == 1
    assert hw.name and hw.memory_gb > 0
    assert "cpu/cpu" in hw.describe()


def test_cpu_matches_cpu_profile(profiles):
    assert matching_profiles(Hardware("cpu", "cpu", "some cpu", 1, 64.0), profiles) == ["cpu"]
    assert matching_profiles(Hardware("cpu", "cpu", "x", 1, 8.0), list(profiles.values())) == ["cpu"]


def test_arch_names():
    assert cuda_arch((9, 0)) == "sm90" and cuda_arch((10, 0)) == "sm100" and cuda_arch((12, 0)) == "sm120"
    assert cuda_arch((8, 0)) == "sm80"
    for soc in range(220, 226):
        assert ascend_arch(soc) == "ascend910b"
    for soc in range(250, 256):
        assert ascend_arch(soc) == "ascend910_93"
    assert ascend_arch(100) == "ascend_soc100"


def _fake_cuda(monkeypatch, *, name, capability=(9, 0), gib=139.8, count=8, hip=None, gcn=""):
    props = types.SimpleNamespace(name=name, total_memory=int(gib * (1 << 30)), gcnArchName=gcn)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
    monkeypatch.setattr(torch.version, "hip", hip, raising=False)


def test_detect_cuda(monkeypatch, profiles):
    _fake_cuda(monkeypatch, name="NVIDIA H200", capability=(9, 0), gib=139.8)
    hw = detect()
    assert (hw.platform, hw.arch, hw.name, hw.device_count) == ("cuda", "sm90", "NVIDIA H200", 8)
    assert hw.memory_gb == pytest.approx(139.8, abs=0.01)
    matches = matching_profiles(hw, profiles)
    assert matches[0] == "h200" and set(matches) == {"h200", "h20", "h100"}


def test_detect_blackwell(monkeypatch, profiles):
    _fake_cuda(monkeypatch, name="NVIDIA B200", capability=(10, 0), gib=178.4)
    hw = detect()
    assert hw.arch == "sm100" and matching_profiles(hw, profiles) == ["b200"]


def test_detect_rocm(monkeypatch, profiles):
    _fake_cuda(monkeypatch, name="AMD Instinct MI300X", capability=(9, 4), gib=191.98, hip="6.2",
               gcn="gfx942:sramecc+:xnack-")
    hw = detect()
    assert (hw.platform, hw.arch) == ("rocm", "gfx942")
    assert matching_profiles(hw, profiles) == ["mi300x"]


def test_broken_cuda_falls_back_to_cpu(monkeypatch):
    def boom(i=0):
        raise RuntimeError("driver mismatch")

    _fake_cuda(monkeypatch, name="x")
    monkeypatch.setattr(torch.cuda, "get_device_properties", boom)
    monkeypatch.setattr(det, "_detect_npu", lambda: None)
    assert detect().platform == "cpu"


def _fake_torch_npu(monkeypatch, soc: int, count: int = 16):
    npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: count,
        get_soc_version=lambda: soc,
        get_device_name=lambda i=0: "Ascend910_9391",
        get_device_properties=lambda i=0: types.SimpleNamespace(total_memory=61 * (1 << 30)),
    )
    module = types.ModuleType("torch_npu")
    module.npu = npu
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torch_npu" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("soc,arch,profile", [(251, "ascend910_93", "ascend-a3"), (223, "ascend910b", "ascend-a2")])
def test_detect_ascend(monkeypatch, profiles, soc, arch, profile):
    _fake_torch_npu(monkeypatch, soc)
    hw = detect()
    assert (hw.platform, hw.arch, hw.device_count) == ("npu", arch, 16)
    assert matching_profiles(hw, profiles) == [profile]


def test_torch_npu_absent_is_never_imported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_npu" else real(name, *a))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    assert detect().platform == "cpu"
    assert "torch_npu" not in sys.modules


def test_broken_torch_npu_falls_back_to_cpu(monkeypatch):
    _fake_torch_npu(monkeypatch, 251)

    def boom():
        raise RuntimeError("libhccl.so: cannot open shared object file")

    sys.modules["torch_npu"].npu.get_soc_version = boom
    assert detect().platform == "cpu"


def test_unknown_gpu_matches_nothing(profiles):
    assert matching_profiles(Hardware("cuda", "sm89", "NVIDIA L40S", 4, 44.5), profiles) == []
