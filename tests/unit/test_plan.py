"""The planner: layouts, provider selection with reasons, memory estimates, runnability."""
from __future__ import annotations

import pytest

from dsa.configs import CONFIG_DIR
from dsa.errors import DsaError, NoProviderError
from dsa.hal import OpSet, registry
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import LayoutSpec, list_profiles, load_profile
from dsa.planning.hardware import Hardware
from dsa.planning.layout import candidate_layouts
from dsa.planning.memory import MOE_SLACK, PREFILL_CHUNK, RESERVE_FRACTION, activation_terms
from dsa.planning.parameters import GiB, cache_bytes_per_token_layer, count_parameters, weight_groups
from dsa.planning.plan import make_plan, plan_report, search_layouts

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
    for op, sel in plan.selections.items():  # the first usable provider of the profile's list; torch always usable
        assert sel.chosen.name in plan.profile.providers[op] and "torch" in [p.name for p in sel.usable]
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
    """docs/model-and-ops.md 6: fp8 weights (~690 GB) fit on 8x H200 with tens of GB per GPU left for the cache."""
    h200 = load_profile("h200")
    for kwargs in ({}, {"tp": 8}):  # DP-attention 8 (default) and pure TP8
        m = make_plan(h200, big, **kwargs).memory
        assert 600 * GiB < m.weight_bytes_total < 700 * GiB  # ~672e9 params at ~1 byte + block scales
        assert m.fits, m.verdict
        assert 20 * GiB < m.free_bytes < 70 * GiB
        assert m.tokens_per_group > 163_840
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
    assert small.memory.fits and small.memory.tokens_per_group >= tiny.max_position_embeddings
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
    for name in ("flashmla", "tilelang"):  # the vendor libraries are absent here
        assert "not installed" in rejected[name] or "not importable" in rejected[name], rejected[name]
    text = plan.describe()
    assert "x flashmla: " in text and "x deepgemm: " in text


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
    assert "flashmla: " in msg and "picky_test: needs the fp8 kv cache" in msg
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


# ---- memory planning: bytes by dtype, workspace, context x batch, layout search (dsa plan) ----------

def test_weight_bytes_by_dtype(big):
    """fp8 values + fp32 block scales + bf16 (embeddings, lm_head, router, indexer weights_proj) + fp32 norms."""
    m = make_plan(load_profile("h200"), big, tp=8).memory  # tp 8, ep 8
    d = m.weight_bytes_by_dtype
    assert list(d) == ["fp8", "fp32 scales", "bf16", "fp32"]
    assert sum(d.values()) == m.weight_bytes == sum(m.weight_bytes_by_group.values())
    L, moe, D, V = 61, 58, 7168, 129280
    # embed + lm_head over tp; router, weights_proj
    assert d["bf16"] == 2 * (2 * V * D // 8 + moe * 256 * D + L * 64 * D)
    norms = 4 * (D + 2 * L * D + L * 1536 + L * 512 + 2 * L * 128 + moe * 256)  # incl. e_score_correction_bias
    assert d["fp32"] == norms
    assert 4 / 128**2 * 0.99 < d["fp32 scales"] / d["fp8"] < 4 / 128**2 * 1.2  # one fp32 per 128x128 block
    bf16 = make_plan(load_profile("h200"), big, tp=8, weights="bf16").memory.weight_bytes_by_dtype
    assert list(bf16) == ["bf16", "fp32"] and bf16["fp32"] == norms


def test_workspace_formula(big):
    h200 = load_profile("h200")
    plan = make_plan(h200, big, tp=8)
    m = plan.memory
    assert m.context == 163_840 and m.batch == 1 and m.step_tokens == PREFILL_CHUNK
    assert m.activation_terms["index scores"] == PREFILL_CHUNK * 163_840 * 4
    assert m.activation_terms["ffn"] == MOE_SLACK * PREFILL_CHUNK * 8 // 8 * (2 * 7168 + 3 * 2048) * 2 \
        + PREFILL_CHUNK * 3 * 2048 // 8 * 2  # routed share + shared expert (> the dense FFN)
    assert m.activation_terms["logits"] == 129280 // 8 * 4
    assert m.activation_bytes == sum(m.activation_terms.values())
    assert m.reserve_bytes == int(RESERVE_FRACTION * 141 * GiB)
    assert m.free_bytes == m.device_bytes - m.weight_bytes - m.workspace_bytes
    assert m.tokens_per_group == m.free_bytes // m.cache_bytes_per_token // 64 * 64
    # DP-attention: 8x the tokens reach the experts of each rank, and every rank runs all 128 heads
    dp8 = make_plan(h200, big).memory
    assert dp8.activation_terms["ffn"] > 7 * m.activation_terms["ffn"]
    assert dp8.activation_terms["attention"] == 8 * m.activation_terms["attention"]
    terms, step = activation_terms(big, plan.layout, "bf16", 100, 2)
    assert step == 200 and terms["index scores"] == 200 * 100 * 4  # a request shorter than one chunk


def test_h200_public_facts(big):
    """docs/model-and-ops.md 6: fp8 ~690 GB fit 8x H200 with ~55-60 GB per GPU left under TP8; the DP-attention layout
    replicates attention (and holds the whole embedding / lm_head) so it leaves less."""
    h200 = load_profile("h200")
    tp8 = make_plan(h200, big, tp=8).memory
    dp8 = make_plan(h200, big).memory
    assert 55 * GiB < tp8.after_weights_bytes < 62 * GiB
    assert 40 * GiB < dp8.after_weights_bytes < 50 * GiB
    assert tp8.fits and dp8.fits and tp8.free_bytes > 45 * GiB
    assert tp8.sequences_per_group >= 6 and dp8.sequences_per_group >= 4
    search = search_layouts(h200, big)
    assert search.chosen.layout == h200.layout  # 8 devices is the fewest; the profile's DP8 shape fits
    assert [r.world_size for r in search.rows] == [1, 2, 4, 8]


def test_h100_needs_two_nodes(big):
    h100 = load_profile("h100")
    search = search_layouts(h100, big)
    assert not search.default.memory.fits and search.default.memory.after_weights_bytes < 0  # 80.1 GiB > 80
    c = search.chosen
    assert (c.layout.nodes, c.world_size, c.layout.tp, c.layout.dp_attention, c.layout.ep) == (2, 16, 8, 2, 16)
    assert c.memory.fits and c.memory.free_bytes > 25 * GiB
    assert search_layouts(h100, big, max_nodes=1).chosen is None
    text = plan_report(h100, big, nodes=1)
    assert "none up to 1 node(s)" in text and "DOES NOT FIT" in text


@pytest.mark.parametrize("name, nodes_bf16, nodes_w8a8", [("ascend-a2", 4, 2), ("ascend-a3", 2, 1)])
def test_ascend_needs_bf16_dies_or_w8a8(big, name, nodes_bf16, nodes_w8a8):
    """No fp8 on A2/A3: bf16 weights (1.25 TiB) need 32 dies of 64 GiB; int8 W8A8 would fit 16 (one A3
    node, two A2 nodes, as deployed), which this runtime does not load yet - the verdict says so."""
    prof = load_profile(name)
    search = search_layouts(prof, big)
    assert not search.default.memory.fits
    assert "int8 W8A8" in search.default.memory.verdict and "does not load W8A8 yet" in search.default.memory.verdict
    assert search.chosen.weights == "bf16" and search.chosen.world_size == 32
    assert search.chosen.layout.nodes == nodes_bf16
    lay, m = search.int8
    assert lay.world_size == 16 and lay.nodes == nodes_w8a8 and m.fits
    assert lay == prof.layout  # the profile's layout is the W8A8 deployment
    assert "bf16 weights need 32 devices" in search.summary() and "int8 W8A8 would fit 16 devices" in search.summary()


def test_context_and_batch(big):
    h200 = load_profile("h200")
    m = make_plan(h200, big, tp=8, context=100, batch=3).memory
    assert m.tokens_needed == 3 * 128  # each sequence rounded up to whole 64-token pages
    assert m.fits and m.sequences_per_group == m.tokens_per_group // 128
    many = make_plan(h200, big, tp=8, batch=50).memory  # 50 x 163,840 = 8.2M tokens > 1.1M
    assert not many.fits and many.free_bytes > 0
    assert "needs 8,192,000" in many.verdict and "smaller --batch / --context" in many.verdict
    wide = search_layouts(h200, big, batch=10)  # 10 x 163,840 per DP group: more devices
    assert wide.chosen is not None and wide.chosen.world_size > 8
    assert wide.chosen.memory.tokens_per_group >= 10 * 163_840
    with pytest.raises(DsaError, match="context 200,000 is longer"):
        make_plan(h200, big, context=200_000)
    with pytest.raises(DsaError, match="batch must be a positive integer"):
        search_layouts(h200, big, batch=0)


def test_candidate_layouts(big, tiny):
    groups = candidate_layouts(load_profile("h100"), big, 2)
    assert [g[0].world_size for g in groups] == [1, 2, 4, 8, 16]
    assert groups[-1][0] == LayoutSpec(tp=8, dp_attention=2, ep=16, nodes=2)  # the profile's tp 8 first
    assert all(lay.ep == lay.world_size for g in groups for lay in g)
    assert {lay.tp for lay in groups[-1]} == {1, 2, 4, 8, 16}
    # ascend-a3's tp 8 does not divide tiny's 4 heads: the default is invalid, the search still works
    search = search_layouts(load_profile("ascend-a3"), tiny)
    assert search.default is None and "tp=8 does not divide" in search.default_error
    assert search.chosen.world_size == 1


def test_fewest_devices_first(big):
    chosen = search_layouts(load_profile("mi350x"), big).chosen  # 288 GiB: 4 GPUs hold 628 GiB of fp8
    assert chosen.world_size == 4 and chosen.layout.tp == 4 and chosen.memory.fits


def test_plan_report_and_cli(big, capsys):
    from dsa.cli import main

    h200 = load_profile("h200")
    searched = plan_report(h200, big)
    assert "layout search" in searched and "profile default" in searched and "<- chosen" in searched
    exact = plan_report(h200, big, tp=8)
    assert "layout search" not in exact and "tp 8 x dp_attention 1" in exact
    for text in (searched, exact):
        for word in ("by dtype: fp8", "fp32 scales", "after weights", "workspace", "index scores",
                     "788 B per token per layer", "48,068 B per token", "request", "verdict"):
            assert word in text, word
    assert main(["plan", "--device", "h100", "--model", "deepseek-v3.2-exp", "--context", "8192",
                 "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 x 8,192 tokens per DP group" in out and "smallest fit     2 nodes x 8 = 16" in out
    assert main(["plan", "--device", "h100", "--model", "deepseek-v3.2-exp", "--context", "0"]) == 2
    assert "context must be a positive integer" in capsys.readouterr().err


def test_readme_table_is_current(big):
    """README.md's memory-planning table is dsa/bench/plan_table.py's output."""
    from pathlib import Path

    from dsa.bench import plan_table

    table = plan_table.markdown_table(big)
    assert table in (Path(__file__).resolve().parents[2] / "README.md").read_text(), (
        "regenerate: .venv/bin/python -m dsa.bench.plan_table"
    )
