"""ONNX export of the DSA graph (dsa.onnx) checked in onnxruntime against our torch path.

The model is the tiny config cut to 2 layers (one dense, one MoE) with index_topk 8, so contexts below
and above top-k are a few tokens; fp32, seeded random weights, the indexer's fp8 rounding on (the default).

Tolerance: logits within atol 1e-4 of the torch path - the model-level fp32 tolerance of
docs/model-and-ops.md 7 (atol / rtol 1e-4). Both sides compute in fp32 with the same fp8-rounded index keys;
what differs is summation order (onnxruntime's MatMul / ReduceSum against torch's chunked einsum and mm) and
the attention's form (the graph runs the prefill path over gathered rows for decode steps too), ~1e-6 here.
The top-k selection is identical, ties included: both pick equal scores by the lower position (ONNX TopK's
rule and the torch provider's top_positions), so a diverging selection shows as a logit far outside 1e-4.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install -e '.[onnx]') is not installed")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dsa.configs import CONFIG_DIR  # noqa: E402
from dsa.engine.args import EngineArgs  # noqa: E402
from dsa.errors import InputError  # noqa: E402
from dsa.model.cache import Batch, PagedCache  # noqa: E402

ATOL = 1e-4
MAX_SEQ_LEN = 48
PAGE = 16
TOPK = 8


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    raw = json.loads((CONFIG_DIR / "models" / "tiny" / "config.json").read_text())
    raw.update(num_hidden_layers=2, index_topk=TOPK)
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.fixture(scope="module")
def exported(config_path, tmp_path_factory):
    from dsa.onnx.export import export_onnx

    torch.set_num_threads(1)
    return export_onnx(EngineArgs(model=config_path, max_seq_len=MAX_SEQ_LEN), tmp_path_factory.mktemp("onnx") / "x")


@pytest.fixture(scope="module")
def torch_model(config_path):
    return EngineArgs(model=config_path, dtype="fp32", max_seq_len=MAX_SEQ_LEN).resolve().build_model(progress=False)


@pytest.fixture(scope="module")
def onnx_model(exported):
    from dsa.onnx.runner import OnnxModel

    return OnnxModel(exported, threads=1)


def torch_logits(model, prompt: list[int], follow: list[int]) -> list[torch.Tensor]:
    """Our torch path (PagedCache, the real decode path): the prompt's logits [T, V], then one [1, V] per token
    of `follow` fed one at a time."""
    cfg = model.config
    cache = PagedCache(cfg, num_blocks=MAX_SEQ_LEN // PAGE, page_size=PAGE, kv_cache_dtype="bf16",
                       dtype=torch.float32, indexer_fp8=model.indexer_fp8)
    blocks = [list(range(MAX_SEQ_LEN // PAGE))]
    with torch.no_grad():
        out = [model(torch.tensor(prompt), Batch.build([len(prompt)], [0], blocks, PAGE), cache)]
        for i, token in enumerate(follow):
            out.append(model(torch.tensor([token]), Batch.build([1], [len(prompt) + i], blocks, PAGE), cache))
    return out


def onnx_logits(onnx_model, prompt: list[int], follow: list[int]) -> list[np.ndarray]:
    cache = onnx_model.new_cache()
    out = [onnx_model.step(prompt, cache)]
    out += [onnx_model.step([token], cache) for token in follow]
    return out


def test_every_hal_op_has_a_translation(monkeypatch):
    import importlib

    from dsa.hal import onnx_graph, registry
    from dsa.hal.opset import HAL_OPS

    table = onnx_graph.translation_table()
    assert set(table) == {HAL_OPS[op].default for op in registry.OPS}
    monkeypatch.delattr(importlib.import_module("dsa.hal.act_quant"), "onnx_translation")
    with pytest.raises(NotImplementedError, match="act_quant"):
        onnx_graph.translation_table()


def test_export_directory(exported):
    import onnx

    assert (exported / "model.onnx.data").stat().st_size > 0  # the weights are external data
    onnx.checker.check_model(str(exported / "model.onnx"), full_check=True)
    meta = json.loads((exported / "onnx.json").read_text())
    assert (meta["num_layers"], meta["index_topk"], meta["max_seq_len"]) == (2, TOPK, MAX_SEQ_LEN)
    ops = {node.op_type for node in onnx.load(str(exported / "model.onnx"), load_external_data=False).graph.node}
    assert {"TopK", "Gather"} <= ops and not any(op.startswith("dsa") for op in ops)


@pytest.mark.parametrize("prompt_len, total", [(5, 20), (12, 16)], ids=["prefill-below-topk", "prefill-above-topk"])
def test_logits_match_torch_path(torch_model, onnx_model, prompt_len, total):
    """Prefill, then decode steps across index_topk (8): every step's logits within ATOL of the torch path."""
    g = torch.Generator().manual_seed(prompt_len)
    tokens = torch.randint(2, torch_model.config.vocab_size, (total,), generator=g).tolist()
    prompt, follow = tokens[:prompt_len], tokens[prompt_len:]
    expected = torch_logits(torch_model, prompt, follow)
    got = onnx_logits(onnx_model, prompt, follow)
    diffs = [float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)]
    assert max(diffs) <= ATOL, f"max abs logit difference per step: {diffs}"


def test_greedy_tokens_identical(torch_model, exported):
    from dsa.engine.sampling import SamplingParams
    from dsa.onnx.runner import generate

    prompt = [5, 17, 99, 3, 42, 7]
    n = 14  # to position 20: past top-k
    cache = PagedCache(torch_model.config, num_blocks=MAX_SEQ_LEN // PAGE, page_size=PAGE, kv_cache_dtype="bf16",
                       dtype=torch.float32, indexer_fp8=torch_model.indexer_fp8)
    blocks = [list(range(MAX_SEQ_LEN // PAGE))]
    expected, step, ctx = [], prompt, 0
    with torch.no_grad():
        for _ in range(n):
            logits = torch_model(torch.tensor(step), Batch.build([len(step)], [ctx], blocks, PAGE), cache)
            ctx += len(step)
            step = [int(logits[-1].argmax())]
            expected.append(step[0])
    params = SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True)
    assert list(generate(exported, prompt, params=params, threads=1)) == expected


@pytest.mark.parametrize("change, flag", [
    (dict(tp=2), "--tp 1"), (dict(kv_cache_dtype="fp8"), "--kv-cache-dtype bf16"),
    (dict(dtype="bf16"), "--dtype fp32"), (dict(device="h200"), "--device cpu"),
])
def test_unsupported_options_refused(config_path, tmp_path, change, flag):
    from dsa.onnx.export import export_onnx

    with pytest.raises(InputError, match=flag):
        export_onnx(EngineArgs(model=config_path, max_seq_len=MAX_SEQ_LEN, **change), tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_runner_refuses_bad_prompts(exported):
    from dsa.onnx.runner import generate

    for prompt, words in (([], "empty"), ([5, 10_000], "outside the vocabulary"), ([3] * MAX_SEQ_LEN, "positions")):
        with pytest.raises(InputError, match=words):
            next(generate(exported, prompt, 4))


def test_seeded_sampling_reproducible(exported):
    from dsa.engine.sampling import SamplingParams
    from dsa.onnx.runner import generate

    params = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_new_tokens=8, ignore_eos=True)
    first = list(generate(exported, [5, 17, 99], params=params, threads=1))
    assert len(first) == 8 and first == list(generate(exported, [5, 17, 99], params=params, threads=1))


def test_stops_where_the_engine_stops(exported, torch_model):
    """The export's generate ends by the engine's rules: prompt + output fill the context (as `dsa run`), a stop
    token is not yielded and is reported as stop_token, max_new_tokens is length."""
    from dsa.engine.engine import Engine, GenerationStats
    from dsa.engine.sampling import SamplingParams
    from dsa.onnx.runner import generate

    prompt = [5, 17, 99]
    params = SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True)
    engine = Engine(torch_model, torch_model.config, page_size=PAGE, kv_cache_dtype="bf16", dtype=torch.float32,
                    max_seq_len=MAX_SEQ_LEN)
    by_engine = list(engine.generate(prompt, params))
    stats = GenerationStats()
    out = list(generate(exported, prompt, params=params, threads=1, stats=stats))
    assert len(prompt) + len(out) == MAX_SEQ_LEN == len(prompt) + len(by_engine)
    assert stats.stop_reason == engine.last_stats.stop_reason == "context"

    stop = out[5]
    stats = GenerationStats()
    cut = list(generate(exported, prompt, params=SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True,
                                                                 stop_token_ids=[stop]), threads=1, stats=stats))
    assert cut == out[:out.index(stop)] and stats.stop_reason == "stop_token"
    stats = GenerationStats()
    assert list(generate(exported, prompt, 4, params=params, threads=1, stats=stats)) == out[:4]
    assert stats.stop_reason == "length"
