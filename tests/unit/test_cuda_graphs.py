"""dsa.engine.cuda_graphs without a GPU: which sizes are captured, why decode stays eager, and the engine's
decode path through the static buffers (the graph body run uncaptured) giving the eager engine's tokens."""
from __future__ import annotations

import logging

import pytest
import torch

from dsa.engine import cuda_graphs
from dsa.engine.args import EngineArgs
from dsa.engine.cuda_graphs import DecodeGraphs, capture_sizes, unavailable
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


def test_unavailable_says_why(monkeypatch):
    llm = LLM(model="tiny", device="cpu", enforce_eager=False)
    assert "CUDA device" in unavailable(llm.model, torch.device("cpu"))
    assert llm.engine.core.eager_reason and "CUDA device" in llm.engine.core.eager_reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    why = unavailable(llm.model, torch.device("cuda"))  # the torch provider reads its arguments on the host
    assert "indexer_topk: torch" in why and "triton" in why
    assert "OpSet" in unavailable(torch.nn.Linear(2, 2), torch.device("cuda"))


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
    want = [r.token_ids for r in eager.generate(PROMPTS, max_new_tokens=12, temperature=0)]
    assert eager.engine.core.eager_reason == "enforce_eager is set" and eager.engine.core.runner.graphs is None

    # pretend capture is possible here: the engine adds the scratch block and routes decode steps through
    # DecodeGraphs, whose uncaptured run() executes the graph body (Batch.static_decode + the model) eagerly
    monkeypatch.setattr("dsa.engine.core.cuda_graphs_unavailable", lambda model, device: None)
    monkeypatch.setattr(DecodeGraphs, "capture", lambda self: None)
    calls = []
    real_run = DecodeGraphs.run
    monkeypatch.setattr(DecodeGraphs, "run", lambda self, *a: calls.append(len(a[0])) or real_run(self, *a))
    with caplog.at_level(logging.INFO, logger="dsa.engine"):
        graphs = LLM(model="tiny", device="cpu", max_seq_len=96, max_num_seqs=8)
    core = graphs.engine.core
    assert core.runner.graphs is not None and core.runner.graphs.sizes == [1, 2, 4, 8]
    assert core.cache.latent[0].shape[0] == core.blocks.num_blocks + 1  # the padding rows' scratch block
    got = [r.token_ids for r in graphs.generate(PROMPTS, max_new_tokens=12, temperature=0)]
    assert got == want
    assert calls and max(calls) == 3  # decode steps of all three requests replayed the size-4 body
    assert "CUDA graphs captured for batch sizes 1, 2, 4, 8" in caplog.text
