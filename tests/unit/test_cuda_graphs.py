"""dsa.engine.cuda_graphs without a GPU: which sizes are captured, why decode stays eager, and the engine's
decode path through the static buffers (the graph body run uncaptured) giving the eager engine's tokens."""
from __future__ import annotations

import logging

import pytest
import torch

from dsa.engine import cuda_graphs
from dsa.engine.args import EngineArgs
from dsa.engine.cuda_graphs import DecodeGraphs, capture_shapes, capture_sizes, unavailable
from dsa.engine.llm import LLM

PROMPTS = ["def f(x):", "import os\n", "a"]


def test_capture_sizes_follow_vllm_and_the_budget():
    assert capture_sizes(256, 4, 16, 132) == [1, 2, 4] + list(range(8, 257, 8))
    assert capture_sizes(3, 4, 16, 132) == [1, 2]
    assert capture_sizes(1000, 4, 16, 132)[-1] == cuda_graphs.MAX_CAPTURE_SIZE
    # 671B at its full context: 163840 tokens x 132 bytes per sequence and layer -> the budget caps the size
    top = capture_sizes(256, 163840 // 64, 64, 132)[-1]
    assert top * 163840 * 132 <= cuda_graphs.GATHER_BUDGET_BYTES < (top + 8) * 163840 * 132
    assert capture_sizes(256, 10**7, 64, 132) == []


def test_capture_shapes_bucket_the_table_width():
    # 671B: 64-token pages, 163,840 tokens -> widths of 4K, 32K and the whole context, each within the budget
    shapes = capture_shapes(256, 2560, 64, 132)
    assert list(shapes) == [64, 512, 2560]
    assert shapes[64][-1] == 256 and shapes[512][-1] == 248 and shapes[2560][-1] == 48
    assert capture_shapes(256, 6, 16, 132) == {6: capture_sizes(256, 6, 16, 132)}  # a short context: one width


def test_shape_for_picks_the_narrowest_width_then_the_smallest_batch():
    g = DecodeGraphs(None, None, shapes={2: [1, 2, 4], 6: [1, 2]}, scratch_block=9, device=torch.device("cpu"))
    assert g.max_size == 4 and g.tables[2].shape == (4, 2) and g.tables[6].shape == (4, 6)
    assert g.shape_for(3, 1) == (4, 2) and g.shape_for(1, 2) == (1, 2)
    assert g.shape_for(2, 5) == (2, 6) and g.shape_for(3, 5) is None and g.shape_for(1, 7) is None
    with pytest.raises(ValueError, match="at least one"):
        DecodeGraphs(None, None, shapes={4: []}, scratch_block=0, device=torch.device("cpu"))


def test_unavailable_says_why(monkeypatch):
    llm = LLM(model="tiny", device="cpu", enforce_eager=False)
    assert "CUDA device" in unavailable(llm.model, torch.device("cpu"))
    assert llm.engine.core.eager_reason and "CUDA device" in llm.engine.core.eager_reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    why = unavailable(llm.model, torch.device("cuda"))  # the torch provider reads its arguments on the host
    assert "indexer_topk: torch" in why and "triton" in why
    assert "OpSet" in unavailable(torch.nn.Linear(2, 2), torch.device("cuda"))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    assert "multi-rank" in unavailable(llm.model, torch.device("cuda"))


def test_enforce_eager_flag():
    from dsa.cli import build_parser

    ns = build_parser().parse_args(["run", "--device", "cpu", "--enforce-eager", "--prompt", "x"])
    assert EngineArgs.from_cli(ns).enforce_eager is True
    ns = build_parser().parse_args(["run", "--device", "cpu", "--prompt", "x"])
    assert EngineArgs.from_cli(ns).enforce_eager is False
    with pytest.raises(Exception, match="enforce_eager"):
        EngineArgs(enforce_eager="yes")


def test_engine_decode_through_the_static_buffers_matches_eager(monkeypatch, caplog):
    eager = LLM(model="tiny", device="cpu", max_seq_len=96, enforce_eager=True)
    want = [r.token_ids for r in eager.generate(PROMPTS, max_new_tokens=30, temperature=0)]
    assert eager.engine.core.eager_reason == "enforce_eager is set" and eager.engine.core.runner.graphs is None

    # pretend capture is possible here: the engine adds the scratch block and routes decode steps through
    # DecodeGraphs, whose uncaptured run() executes the graph body (Batch.static_decode + the model) eagerly;
    # a 32-token bucket under the 96-token context makes the steps move from the narrow width to the full one
    monkeypatch.setattr("dsa.engine.core.cuda_graphs_unavailable", lambda model, device: None)
    monkeypatch.setattr(DecodeGraphs, "capture", lambda self: None)
    monkeypatch.setattr(cuda_graphs, "CONTEXT_BUCKETS", (32,))
    used = []
    real_step = DecodeGraphs.step
    monkeypatch.setattr(DecodeGraphs, "step", lambda self, B, W: used.append((B, W)) or real_step(self, B, W))
    with caplog.at_level(logging.INFO, logger="dsa.engine"):
        graphs = LLM(model="tiny", device="cpu", max_seq_len=96, max_num_seqs=8)
    core = graphs.engine.core
    assert core.runner.graphs is not None and core.runner.graphs.shapes == {2: [1, 2, 4, 8], 6: [1, 2, 4, 8]}
    assert core.cache.latent[0].shape[0] == core.blocks.num_blocks + 1  # the padding rows' scratch block
    got = [r.token_ids for r in graphs.generate(PROMPTS, max_new_tokens=30, temperature=0)]
    assert got == want
    assert (4, 2) in used and (4, 6) in used  # three requests padded to 4, at both widths
    assert "CUDA graphs captured for batch sizes 1, 2, 4, 8 at 32 tokens; 1, 2, 4, 8 at 96 tokens" in caplog.text


def test_only_capturable_providers_run_while_a_graph_is_captured(monkeypatch):
    from dsa.errors import NoProviderError
    from dsa.hal import OpSet, registry

    torch_quant = registry.get("act_quant", "torch")
    captured = registry.register("act_quant", "capturable-test", torch_quant.fn, backend="test", capturable=True)
    try:
        x = torch.randn(2, 128)
        plain = OpSet.single("torch")
        both = OpSet({**plain.selections, "act_quant": registry.Selection("act_quant", [torch_quant, captured])})
        monkeypatch.setattr("dsa.hal.opset._capturing", lambda: True)
        with pytest.raises(NoProviderError, match="torch: not capturable .* CUDA graph is being captured"):
            plain.act_quant(x, 128, True)
        y, s = both.act_quant(x, 128, True)  # the torch provider is skipped, the capturable one runs
        monkeypatch.setattr("dsa.hal.opset._capturing", lambda: False)
        y2, s2 = plain.act_quant(x, 128, True)
        assert torch.equal(y.float(), y2.float()) and torch.equal(s, s2)
    finally:
        registry.unregister("act_quant", "capturable-test")
