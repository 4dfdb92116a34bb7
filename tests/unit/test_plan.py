"""The planner: layouts, provider selection with reasons, memory estimates, runnability."""
from __future__ import annotations

import pytest

from model.config import ModelConfig
from runtime import CONFIG_DIR, registry
from runtime.detect import Hardware
from runtime.errors import DsaError, NoProviderError
from runtime.ops import OpSet
from runtime.plan import (
    GiB, MIN_CACHE_TOKENS, cache_bytes_per_token_layer, count_parameters, make_plan, weight_groups,
)
from runtime.profile import list_profiles, load_profile

SHIPPED = ["ascend-a2", "ascend-a3", "b200", "cpu", "h100", "h20", "h200", "mi300x", "mi350x"]


@pytest.fixture(scope="module")
def big() -> ModelConfig:
    return ModelConfig.from_file(CONFIG_DIR / "models" / "deepseek-v3.2-exp")


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return ModelConfig.from_file(CONFIG_DIR / "models" / "tiny")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_profile_plans_671b(name, big):
    plan = make_plan(load_profile(name), big)
    assert set(plan.selections) == set(registry.OPS)
    assert plan.providers() == {op: "torch" for op in registry.OPS}  # the only backend installed here
    assert plan.target.num_heads == 128 // plan.layout.tp
    text = plan.describe()
    assert name in text and "verdict" in text
    for op in registry.OPS:
        assert op in text


def test_parameter_count_671b(big):
    groups = count_parameters(big)
    total = sum(groups.values())
    assert 665e9 < total < 680e9  # 671B without the MTP layer
    assert 650e9 < groups["routed_experts"] < 660e9
    assert groups["embed"] == groups["lm_head"] == 129280 * 7168
    assert {t.shard for t in weight_groups(big)} == {"tp", "ep", "replicated"}


def test_cache_bytes(big):
    assert cache_bytes_per_token_layer(big, "bf16") == (576 * 2, 132)
    assert cache_bytes_per_token_layer(big, "fp8") == (656, 132)


def test_h200_memory(big):
    """SPEC 6: fp8 weights (~690 GB) fit on 8x H200 with tens of GB per GPU left for the cache."""
    h200 = load_profile("h200")
    for kwargs in ({}, {"tp": 8}):  # DP-attention 8 (default) and pure TP8
        m = make_plan(h200, big, **kwargs).memory
        assert 600 * GiB < m.weight_bytes_total < 700 * GiB  # ~672e9 params at ~1 byte + block scales
        assert m.fits, m.verdict
        assert 20 * GiB < m.free_bytes < 70 * GiB
        assert m.tokens_per_group > 100_000
    tp8 = make_plan(h200, big, tp=8)
    assert tp8.layout.dp_attention == 1 and tp8.layout.ep == 8
    assert 75 * GiB < tp8.memory.weight_bytes < 90 * GiB  # ~80-90 GB per GPU under pure TP8
    dp8 = make_plan(h200, big)
    assert dp8.memory.weight_bytes > tp8.memory.weight_bytes  # attention replicated under tp=1
    assert dp8.memory.tokens_total == dp8.memory.tokens_per_group * 8


def test_h100_does_not_fit_one_node(big):
    h100 = load_profile("h100")
    plan = make_plan(h100, big)
    assert not plan.memory.fits and plan.memory.free_bytes < 0
    assert "DOES NOT FIT" in plan.describe()
    assert make_plan(h100, big, nodes=2).memory.fits  # 16 GPUs: experts over 16


def test_bf16_kv_cache_holds_fewer_tokens(big):
    h200 = load_profile("h200")
    fp8 = make_plan(h200, big).memory
    bf16 = make_plan(h200, big, kv_cache_dtype="bf16").memory
    assert bf16.tokens_per_group < fp8.tokens_per_group
    assert bf16.cache_bytes_per_token == (1152 + 132) * 61


def test_cpu_plans_tiny_and_671b(tiny, big):
    cpu = load_profile("cpu")
    small = make_plan(cpu, tiny)
    assert small.memory.fits and small.memory.tokens_per_group >= MIN_CACHE_TOKENS
    assert small.weights == "bf16" and small.kv_cache_dtype == "bf16" and small.page_size == 16
    assert isinstance(small.opset(), OpSet) and small.opset().providers()["grouped_gemm"] == "torch"
    huge = make_plan(cpu, big)
    assert not huge.memory.fits
    assert huge.weights == "bf16"  # the fp8 checkpoint is dequantised on the CPU profile
    assert huge.memory.weight_bytes_total > 1200 * GiB
    assert any("dequantised" in n for n in huge.notes)


def test_cpu_multi_process_layout(tiny):
    plan = make_plan(load_profile("cpu"), tiny, tp=2, ep=2)
    assert (plan.layout.tp, plan.layout.dp_attention, plan.layout.ep, plan.world_size) == (2, 1, 2, 2)
    assert plan.target.num_heads == 2


def test_ascend_has_no_fp8(big):
    a3 = load_profile("ascend-a3")
    plan = make_plan(a3, big)
    assert plan.weights == "bf16" and plan.kv_cache_dtype == "bf16" and plan.page_size == 128
    with pytest.raises(DsaError, match="no fp8"):
        make_plan(a3, big, kv_cache_dtype="fp8")


# ---- layout errors ------------------------------------------------------------------------

def test_tp_must_divide_heads(tiny):
    cpu = load_profile("cpu")
    with pytest.raises(DsaError) as exc:
        make_plan(cpu, tiny, tp=3)  # 4 heads
    msg = str(exc.value)
    assert "tp=3 does not divide num_attention_heads=4" in msg and "try 1, 2" in msg


def test_tp_must_divide_devices(big):
    with pytest.raises(DsaError, match=r"tp=3 does not divide the 8 devices .* tp could be 1, 2, 4, 8"):
        make_plan(load_profile("h200"), big, tp=3)


def test_too_many_ranks_for_node(big):
    with pytest.raises(DsaError, match="needs 16 devices per node, but h200 has 8"):
        make_plan(load_profile("h200"), big, tp=8, dp_attention=2)


def test_ep_must_divide_world_and_experts(big, tiny):
    with pytest.raises(DsaError, match=r"ep=3 does not divide the world size 8 .* ep could be 1, 2, 4, 8"):
        make_plan(load_profile("h200"), big, ep=3)
    with pytest.raises(DsaError) as exc:
        make_plan(load_profile("cpu"), tiny, tp=1, dp_attention=16, ep=16)  # 8 experts
    assert "ep=16 does not divide n_routed_experts=8" in str(exc.value) and "try 1, 2, 4, 8" in str(exc.value)


def test_bad_override_values(big):
    with pytest.raises(DsaError, match="tp must be a positive integer"):
        make_plan(load_profile("h200"), big, tp=0)
    with pytest.raises(DsaError, match="kv cache dtype 'fp4'"):
        make_plan(load_profile("h200"), big, kv_cache_dtype="fp4")


# ---- provider selection -----------------------------------------------------------------------

def test_h200_reasons_not_installed(big):
    plan = make_plan(load_profile("h200"), big)
    rejected = dict(plan.selections["sparse_mla_decode"].rejected)
    for name in ("flashmla", "tilelang", "triton"):
        assert rejected[name].startswith("not installed")
    text = plan.describe()
    assert "x flashmla: not installed" in text and "x deepgemm: not installed" in text


@pytest.fixture
def picky_provider(monkeypatch):
    """A throwaway provider of sparse_mla_decode that only runs with an fp8 cache; removed afterwards."""
    torch_fn = registry.get("sparse_mla_decode", "torch").fn

    def supported(target: registry.Target):
        if target.kv_cache_dtype != "fp8":
            return f"needs the fp8 kv cache (plan has {target.kv_cache_dtype})"
        if target.num_heads not in (64, 128):
            return f"needs 64 or 128 heads per rank, got {target.num_heads}"
        return None

    provider = registry.register("sparse_mla_decode", "picky_test", torch_fn, backend="tests", supported=supported)
    yield provider
    registry.unregister("sparse_mla_decode", "picky_test")


def _profile_with(name: str, op: str, providers: list[str]):
    import dataclasses
    from types import MappingProxyType

    base = load_profile(name)
    return dataclasses.replace(base, providers=MappingProxyType({**base.providers, op: tuple(providers)}))


def test_supported_rejection_reason(picky_provider, big):
    prof = _profile_with("h200", "sparse_mla_decode", ["picky_test", "torch"])
    chosen = make_plan(prof, big)  # fp8 cache, 128 heads per rank
    assert chosen.providers()["sparse_mla_decode"] == "picky_test"
    assert [p.name for p in chosen.selections["sparse_mla_decode"].usable] == ["picky_test", "torch"]
    assert "(then torch)" in chosen.describe()

    rejected = make_plan(prof, big, kv_cache_dtype="bf16")
    sel = rejected.selections["sparse_mla_decode"]
    assert sel.chosen.name == "torch"
    assert sel.rejected == [("picky_test", "needs the fp8 kv cache (plan has bf16)")]
    assert "x picky_test: needs the fp8 kv cache (plan has bf16)" in rejected.describe()

    tp8 = make_plan(prof, big, tp=8)  # 16 heads per rank
    assert dict(tp8.selections["sparse_mla_decode"].rejected)["picky_test"] == "needs 64 or 128 heads per rank, got 16"


def test_no_provider_lists_every_reason(picky_provider, big):
    prof = _profile_with("h200", "sparse_mla_decode", ["flashmla", "picky_test"])
    with pytest.raises(NoProviderError) as exc:
        make_plan(prof, big, kv_cache_dtype="bf16")
    msg = str(exc.value)
    assert msg.startswith("profile h200:")
    assert "flashmla: not installed" in msg and "picky_test: needs the fp8 kv cache" in msg
    assert "providers.sparse_mla_decode" in msg
    assert "picky_test" not in registry.providers("act_quant")


# ---- runnability ----------------------------------------------------------------------------

def test_check_runnable(big, tiny):
    cpu_hw = Hardware("cpu", "cpu", "test cpu", 1, 64.0)
    with pytest.raises(DsaError) as exc:
        make_plan(load_profile("h200"), big).check_runnable(cpu_hw)
    msg = str(exc.value)
    assert msg.startswith("profile h200 is for cuda/sm90 but this machine is cpu")
    assert "use --device cpu" in msg and "H200" in msg
    make_plan(load_profile("cpu"), tiny).check_runnable(cpu_hw)  # no error
    make_plan(load_profile("cpu"), tiny, tp=2).check_runnable(cpu_hw)  # processes, not devices

    h200 = make_plan(load_profile("h200"), big)
    h200.check_runnable(Hardware("cuda", "sm90", "NVIDIA H200", 8, 139.8))
    with pytest.raises(DsaError, match="needs 8 cuda devices per node but this machine has 1"):
        h200.check_runnable(Hardware("cuda", "sm90", "NVIDIA H200", 1, 139.8))
    with pytest.raises(DsaError, match="use --device mi300x"):
        h200.check_runnable(Hardware("rocm", "gfx942", "AMD Instinct MI300X", 8, 192.0))
    with pytest.raises(DsaError, match="no shipped profile matches cuda/sm89"):
        h200.check_runnable(Hardware("cuda", "sm89", "NVIDIA L40S", 8, 44.5))


def test_list_profiles_has_all():
    assert set(SHIPPED) <= set(list_profiles())
