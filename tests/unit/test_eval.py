"""`dsa eval` end to end on a small random-weight checkpoint written here (top-k 8, context 128, the byte-level
tokenizer): every metric present and finite, dense == sparse exactly at a context <= top-k, the passkey cases'
layout, the exit codes (0 measured, 1 nothing measured, 2 a bad flag with one `error:` line)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dsa.cli import main
from dsa.io.checkpoint_writer import load_config_json, write_checkpoint

TOPK, CONTEXT = 8, 128
SMALL = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
             first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=32, kv_lora_rank=32,
             qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=4, n_group=2, topk_group=1,
             index_n_heads=2, index_head_dim=32, index_topk=TOPK, max_position_embeddings=CONTEXT, rope_scaling=None)
TRAIN_JSON = {"eval": {stage: {"dense_loss": 2.0 + i, "sparse_loss": 2.01 + i, "recall": 0.95 - 0.3 * (i == 0),
                               "recall_per_layer": [0.9, 0.96]}
                       for i, stage in enumerate(("after_dense", "after_warmup", "after_sparse"))},
              "recipe": {"eval_windows": 8}, "seconds_total": 60.0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight checkpoint of a small config with the byte-level tokenizer files."""
    root = tmp_path_factory.mktemp("eval")
    config = root / "config.json"
    config.write_text(json.dumps(load_config_json("tiny") | SMALL))
    return write_checkpoint(str(config), root / "ck", fp8=False, seed=0, num_shards=1)


@pytest.fixture(scope="module")
def quick(checkpoint, tmp_path_factory) -> tuple[int, dict, Path]:
    """One `dsa eval --quick` run with every output: (exit status, the JSON, the report's directory)."""
    out = tmp_path_factory.mktemp("report")
    (out / "train.json").write_text(json.dumps(TRAIN_JSON))
    rc = main(["eval", "--model", str(checkpoint), "--quick", "--threads", "1", "--json", str(out / "e.json"),
               "--markdown", str(out / "EVAL.md"), "--train-report", str(out / "train.json")])
    return rc, json.loads((out / "e.json").read_text()), out


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_quick_measures_everything(quick):
    rc, result, _ = quick
    assert rc == 0
    assert result["contexts"] == [TOPK, 8 * TOPK] and result["index_topk"] == TOPK
    assert [p["context"] for p in result["perplexity"]] == result["contexts"]
    for p in result["perplexity"]:
        assert _finite(p["dense_ppl"], p["sparse_ppl"], p["sparse_vs_dense_pct"],
                       p["sparse_vs_dense_pct_all_positions"])
    (ret,) = result["retrieval"]  # context 8 leaves no room for 2 x top-k of filler
    assert ret["context"] == 8 * TOPK and ret["cases"] == 4 and ret["distance_min"] >= 2 * TOPK
    assert _finite(ret["dense_acc_pct"], ret["sparse_acc_pct"], ret["dense_logprob"], ret["sparse_logprob"])
    assert ret["chance_pct"] == 25.0
    assert isinstance(ret["dense_above_chance"], bool)
    (cp,) = result["copy"]
    assert cp["context"] == 8 * TOPK and cp["distance"] >= 2 * TOPK
    assert _finite(cp["dense_first_pct"], cp["dense_second_pct"], cp["sparse_first_pct"], cp["sparse_second_pct"])
    short, long_ = result["recall"]
    assert short["rows"] == 0 and long_["rows"] > 0  # no row sees more than top-k keys at context top-k
    assert _finite(long_["recall"], *long_["recall_per_layer"]) and len(long_["recall_per_layer"]) == 2
    assert [g["context"] for g in result["agreement"]] == result["contexts"]
    for g in result["agreement"]:
        assert _finite(g["agreement_to_divergence"], g["identical"])
    assert result["train_report"]["eval"]["after_warmup"]["recall"] == pytest.approx(0.95)


def test_dense_equals_sparse_within_top_k(quick):
    _, result, _ = quick
    p = result["perplexity"][0]
    assert p["context"] == TOPK and p["dense_ppl"] == p["sparse_ppl"]  # the same selection: every visible key
    assert p["dense_ppl_all_positions"] == p["sparse_ppl_all_positions"]
    g = result["agreement"][0]
    assert g["agreement_to_divergence"] == 1.0 and g["identical"] == 1.0


def test_report_files(quick):
    _, result, out = quick
    text = (out / "EVAL.md").read_text()
    for heading in ("## Targets (measured)", "## Perplexity", "## Retrieval", "### In-context copying",
                    "## Indexer recall",
                    "## Greedy agreement", "## The recipe's numbers"):
        assert heading in text
    assert (out / "eval_perplexity.png").stat().st_size > 0 and (out / "eval_recall.png").stat().st_size > 0
    names = [t["target"] for t in result["targets"]]
    assert any("before the warm-up" in n for n in names) and any("after the warm-up" in n for n in names)
    before = next(t for t in result["targets"] if "before the warm-up" in t["target"])
    assert before["holds"] is False and before["measured"] == "0.650"


def test_retrieval_case_layout(checkpoint):
    from dsa.train import eval as ev

    held = ev.heldout(checkpoint / "tokenizer.json", max_files=2)
    cases = ev.retrieval_cases(held, 8 * TOPK, TOPK, 5, 4, seed=1)
    assert len(cases) == 5
    for case in cases:
        text = held.tokenizer.decode(case.ids.tolist())
        assert case.ids.numel() == 8 * TOPK and case.answer in case.candidates and len(case.candidates) == 4
        name = text.rsplit("\n", 1)[1].removesuffix(' = "')
        assert name.startswith("KEY_") and text.count(f'{name} = "') == 2
        assert f'{name} = "{held.tokenizer.decode([case.answer])}"\n' in text
        assert case.distance >= 2 * TOPK
    assert ev.retrieval_cases(held, TOPK, TOPK, 5, 4, seed=1) == []  # too short for 2 x top-k of filler


def test_nothing_measured_exits_1(checkpoint, capsys):
    rc = main(["eval", "--model", str(checkpoint), "--quick", "--windows", "0", "--retrieval-cases", "0",
               "--prompts", "0", "--recall-windows", "0"])
    assert rc == 1
    assert "error: dsa eval measured nothing" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--contexts", "1"], "--contexts: 1 is outside [2, 128]"),
    (["--contexts", "8", str(CONTEXT + 1)], f"--contexts: {CONTEXT + 1} is outside"),
    (["--windows", "-1"], "--windows must be >= 0"),
    (["--candidates", "1"], "--candidates must be >= 2"),
    (["--new-tokens", "0"], "--new-tokens must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--train-report", "/nonexistent/train.json"], "--train-report /nonexistent/train.json not found"),
    (["--json", "/nonexistent/dir/e.json"], "cannot write --json"),
    (["--windows", "many"], "invalid int value"),
])
def test_bad_flags_exit_2(checkpoint, capsys, flags, message):
    assert main(["eval", "--model", str(checkpoint), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_bad_models_exit_2(tmp_path, capsys):
    for model, message in (("tiny", "is not a trained checkpoint"), (str(tmp_path / "none"), "not found")):
        assert main(["eval", "--model", model, "--quick"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_foreign_train_report_exits_2(checkpoint, tmp_path, capsys):
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps({"eval": {}}))
    assert main(["eval", "--model", str(checkpoint), "--train-report", str(bad)]) == 2
    assert "is not a `dsa train` report" in capsys.readouterr().err
