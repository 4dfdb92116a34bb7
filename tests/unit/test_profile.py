"""Device profiles: every shipped one loads; every validation error names the file and the field."""
from __future__ import annotations

import re

import pytest
import yaml

from dsa.errors import ConfigError, ProfileError
from dsa.hal import registry
from dsa.planning.device_profile import DEVICES_DIR, DeviceProfile, list_profiles, load_profile

SHIPPED = ["a100", "ascend-a2", "ascend-a3", "b200", "cpu", "h100", "h20", "h200", "mi300x", "mi350x", "rtx-pro-6000"]


def test_shipped_profiles_are_listed():
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name):
    p = load_profile(name)
    assert isinstance(p, DeviceProfile)
    assert p.name == name
    assert tuple(p.providers) == registry.OPS
    assert p.layout.world_size == p.devices_per_node * p.layout.nodes
    assert p.layout.world_size % p.layout.ep == 0
    for op, names in p.providers.items():
        assert names[-1] == "torch", f"{name}: {op} should end with the portable torch provider"
    text = (DEVICES_DIR / f"{name}.yaml").read_text()
    assert text.startswith("#"), "each profile starts with a comment header"


def test_family_facts():
    h200 = load_profile("h200")
    assert (h200.platform, h200.arch, h200.memory_gb) == ("cuda", "sm90", 141)
    assert h200.kv_cache.page_size == 64 and h200.providers["sparse_mla_decode"][0] == "flashmla"
    assert (h200.layout.tp, h200.layout.dp_attention, h200.layout.ep) == (1, 8, 8)
    assert load_profile("h100").memory_gb == 80 and load_profile("h20").memory_gb == 96
    assert load_profile("b200").arch == "sm100"
    a100, rtx = load_profile("a100"), load_profile("rtx-pro-6000")
    assert (a100.arch, a100.memory_gb, a100.fp8_format, a100.weights, a100.kv_cache.dtype) == (
        "sm80", 80, "none", "bf16", "bf16"
    )
    assert (rtx.arch, rtx.memory_gb, rtx.fp8_format) == ("sm120", 96, "e4m3fn")
    for p in (a100, rtx):  # no vendor kernel applies: triton first, torch behind it
        assert all(v == ("triton", "torch") for v in p.providers.values())
    mi300 = load_profile("mi300x")
    assert (mi300.arch, mi300.fp8_format, mi300.kv_cache.page_size, mi300.memory_gb) == ("gfx942", "e4m3fnuz", 1, 192)
    assert mi300.providers["sparse_mla_decode"] == ("aiter", "triton", "torch")
    assert load_profile("mi350x").fp8_format == "e4m3fn" and load_profile("mi350x").memory_gb == 288
    for name, arch in (("ascend-a2", "ascend910b"), ("ascend-a3", "ascend910_93")):
        p = load_profile(name)
        assert (p.platform, p.arch, p.fp8_format, p.weights, p.kv_cache.dtype, p.kv_cache.page_size) == (
            "npu", arch, "none", "bf16", "bf16", 128)
        assert p.collective == "hccl" and p.providers["indexer_topk"] == ("npu", "torch")
    a3 = load_profile("ascend-a3")
    assert (a3.devices_per_node, a3.layout.dp_attention, a3.layout.tp, a3.layout.ep) == (16, 2, 8, 16)
    assert load_profile("ascend-a2").layout.nodes == 2
    cpu = load_profile("cpu")
    assert (cpu.platform, cpu.arch, cpu.devices_per_node, cpu.collective, cpu.weights) == (
        "cpu", "cpu", 1, "gloo", "bf16"
    )
    assert (cpu.kv_cache.dtype, cpu.kv_cache.page_size) == ("bf16", 16)
    assert all(v == ("torch",) for v in cpu.providers.values())


def test_profile_is_frozen():
    p = load_profile("h200")
    with pytest.raises(Exception):
        p.arch = "sm100"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.providers["act_quant"] = ("torch",)  # type: ignore[index]


def test_load_by_path(tmp_path):
    path = tmp_path / "h200.yaml"
    path.write_text((DEVICES_DIR / "h200.yaml").read_text())
    assert load_profile(str(path)).name == "h200"
    assert load_profile(path).arch == "sm90"


def test_unknown_name_lists_available_and_how_to_add():
    with pytest.raises(ProfileError) as exc:
        load_profile("h300")
    msg = str(exc.value)
    assert "h300" in msg and "h200" in msg and "mi300x" in msg and "cpu" in msg
    assert "copy" in msg and "name: h300" in msg
    assert isinstance(exc.value, ConfigError)


def test_missing_file_path():
    with pytest.raises(ProfileError, match="not found"):
        load_profile("/nonexistent/dir/mine.yaml")


# ---- validation error paths -----------------------------------------------------------------

def _base() -> dict:
    return yaml.safe_load((DEVICES_DIR / "h200.yaml").read_text())


def _error(tmp_path, data, name="mine") -> str:
    d = dict(data)
    d["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(ProfileError) as exc:
        load_profile(str(path))
    msg = str(exc.value)
    assert str(path.name) in msg, msg  # the file is named
    return msg


def test_valid_copy_loads(tmp_path):
    d = _base()
    d["name"] = "mine"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(d))
    assert load_profile(str(path)).name == "mine"


def test_unknown_provider(tmp_path):
    d = _base()
    d["providers"]["sparse_mla_decode"] = ["flashmlaa", "torch"]
    msg = _error(tmp_path, d)
    assert "providers.sparse_mla_decode: unknown provider 'flashmlaa'" in msg
    assert "known:" in msg and "flashmla" in msg and "torch" in msg


def test_missing_op(tmp_path):
    d = _base()
    del d["providers"]["grouped_gemm"]
    msg = _error(tmp_path, d)
    assert "providers" in msg and "grouped_gemm" in msg and "missing" in msg


def test_unknown_op(tmp_path):
    d = _base()
    d["providers"]["flash_attention"] = ["torch"]
    assert "providers.flash_attention: unknown op" in _error(tmp_path, d)


def test_empty_and_duplicate_provider_lists(tmp_path):
    d = _base()
    d["providers"]["act_quant"] = []
    assert "providers.act_quant: must be a non-empty list" in _error(tmp_path, d)
    d = _base()
    d["providers"]["act_quant"] = ["torch", "torch"]
    assert "listed twice: torch" in _error(tmp_path, d)


@pytest.mark.parametrize("field,value,expect", [
    ("platform", "gpu", "platform: 'gpu' is not one of cpu, cuda, rocm, npu"),
    ("arch", "gfx942", "arch: 'gfx942' is not an architecture of platform cuda"),
    ("fp8_format", "e5m2", "fp8_format: 'e5m2' is not one of"),
    ("collective", "mpi", "collective: 'mpi' is not one of"),
    ("collective", "hccl", "collective: hccl does not run on platform cuda"),
    ("dtype", "fp64", "dtype: 'fp64' is not one of bf16, fp16, fp32"),
    ("weights", "int8", "weights: 'int8' is not one of fp8, bf16"),
    ("memory_gb", -1, "memory_gb: must be a positive number"),
    ("devices_per_node", "eight", "devices_per_node: must be a positive integer"),
    ("description", "", "description: must be a non-empty string"),
])
def test_bad_values(tmp_path, field, value, expect):
    d = _base()
    d[field] = value
    assert expect in _error(tmp_path, d)


def test_bad_nested_values(tmp_path):
    d = _base()
    d["kv_cache"]["dtype"] = "fp4"
    assert "kv_cache.dtype: 'fp4' is not one of bf16, fp8" in _error(tmp_path, d)
    d = _base()
    d["kv_cache"]["page_size"] = 0
    assert "kv_cache.page_size: must be a positive integer" in _error(tmp_path, d)
    d = _base()
    d["layout"]["tp"] = True
    assert "layout.tp: must be a positive integer" in _error(tmp_path, d)


def test_unknown_keys(tmp_path):
    d = _base()
    d["memory"] = 141
    assert "memory: unknown key" in _error(tmp_path, d)
    d = _base()
    d["kv_cache"]["pagesize"] = 64
    assert "kv_cache.pagesize: unknown key" in _error(tmp_path, d)
    d = _base()
    d["layout"]["pp"] = 2
    assert "layout.pp: unknown key" in _error(tmp_path, d)


def test_missing_field(tmp_path):
    d = _base()
    del d["arch"]
    assert "arch: required field is missing" in _error(tmp_path, d)
    d = _base()
    del d["layout"]["ep"]
    assert "layout.ep: required field is missing" in _error(tmp_path, d)


def test_layout_world_size_mismatch(tmp_path):
    d = _base()
    d["layout"] = {"tp": 8, "dp_attention": 8, "ep": 8, "nodes": 1}
    msg = _error(tmp_path, d)
    assert "layout: world size tp * dp_attention = 8 * 8 = 64" in msg and "devices_per_node * nodes = 8 * 1 = 8" in msg


def test_layout_ep_must_divide_world(tmp_path):
    d = _base()
    d["layout"]["ep"] = 3
    msg = _error(tmp_path, d)
    assert "layout.ep: ep = 3 must divide the world size 8" in msg and "1, 2, 4, 8" in msg


def test_fp8_consistency(tmp_path):
    d = _base()
    d["fp8_format"] = "none"
    assert "weights: fp8 weights need an fp8 format" in _error(tmp_path, d)
    d = _base()
    d.update(fp8_format="none", weights="bf16")
    assert "kv_cache.dtype: an fp8 KV cache needs an fp8 format" in _error(tmp_path, d)
    d = yaml.safe_load((DEVICES_DIR / "mi300x.yaml").read_text())
    d["fp8_format"] = "e4m3fn"
    assert "gfx942 (MI300) uses e4m3fnuz" in _error(tmp_path, d)
    d = yaml.safe_load((DEVICES_DIR / "ascend-a3.yaml").read_text())
    d["fp8_format"] = "e4m3fn"
    assert "fp8_format: Ascend ascend910_93 has no fp8" in _error(tmp_path, d)


def test_name_must_match_file_stem(tmp_path):
    d = _base()  # name: h200
    path = tmp_path / "my-gpu.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ProfileError, match=r"name: is 'h200' but must equal the file name stem 'my-gpu'"):
        load_profile(str(path))


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nproviders: [torch\n  act_quant: x\n")
    with pytest.raises(ProfileError, match=r"broken\.yaml: not valid YAML at line \d+"):
        load_profile(str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(ProfileError, match="expected a YAML mapping"):
        load_profile(str(path))
    path.write_text("")
    with pytest.raises(ProfileError, match="expected a YAML mapping"):
        load_profile(str(path))


@pytest.fixture
def myvendor():
    registry.register("act_quant", "myvendor", lambda *a: None, backend="tests")
    yield
    registry.unregister("act_quant", "myvendor")


def test_registered_out_of_tree_provider_name_is_accepted(tmp_path, myvendor):
    """A provider registered at runtime (e.g. by an entry-point backend) is a valid name."""
    d = _base()
    d["name"] = "mine"
    d["providers"]["act_quant"] = ["myvendor", "torch"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(d))
    assert load_profile(str(path)).providers["act_quant"] == ("myvendor", "torch")


def test_error_message_shape_matches_spec(tmp_path):
    """'<file>: <field>: <problem>' - the file is shown relative to the repo when inside it."""
    d = _base()
    d["providers"]["sparse_mla_decode"] = ["flashmlaa"]
    msg = _error(tmp_path, d)
    assert re.match(r"^\S*mine\.yaml: providers\.sparse_mla_decode: unknown provider 'flashmlaa' \(known: ", msg)
