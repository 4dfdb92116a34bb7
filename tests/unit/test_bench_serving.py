"""`dsa bench serve` wiring (a sub-subcommand of `dsa bench`, which keeps its flags), `--in-process` end to end,
and the `serving` section of `dsa bench` on micro sizes (a few seconds each; nothing about speed is asserted)."""
from __future__ import annotations

import json
import math

import pytest

from dsa.bench import serving
from dsa.bench.command import _measured
from dsa.bench.run import render, targets
from dsa.cli import build_parser, main

# the serving section at micro sizes: 2 points of 16-token prompts, 1 of 32, a 64-token chunked prefill
MICRO = ["--serving-prompt-len", "16", "--serving-concurrency", "1,2", "--serving-long-prompt-len", "32",
         "--serving-long-concurrency", "1", "--serving-output-len", "3", "--serving-reps", "1",
         "--serving-prefill-len", "64", "--serving-prefill-decodes", "2", "--serving-chunk-tokens", "16",
         "--serving-threads", "1"]


def _one_error_line(capsys) -> str:
    _, err = capsys.readouterr()
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ---- wiring -----------------------------------------------------------------------------------------------
def test_bench_serve_help(capsys):
    assert main(["bench", "serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--in-process", "--base-url", "--max-concurrency", "--device", "--max-num-batched-tokens",
                 "--enable-chunked-prefill"):
        assert flag in out, flag
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and "--serving-concurrency" in out and "--quick" in out


def test_bench_flags_parse_as_before():
    a = build_parser().parse_args(["bench", "--quick", "--sections", "cache,serving", "--json", "x.json",
                                   "--dtype", "bf16", "--serving-concurrency", "1,8"])
    assert a.command == "bench" and a.bench_command is None and a.quick and a.dtype == "bf16"
    assert a.sections == ["cache", "serving"] and a.serving_concurrency == [1, 8] and str(a.json) == "x.json"
    a = build_parser().parse_args(["bench"])
    assert a.bench_command is None and not a.quick and a.sections is None and a.serving_reps is None
    a = build_parser().parse_args(["bench", "serve", "--num-prompts", "3", "--in-process", "--dtype", "fp32",
                                   "--max-num-batched-tokens", "64"])
    assert a.bench_command == "serve" and a.in_process and a.num_prompts == 3 and a.dtype == "fp32"
    assert a.max_num_batched_tokens == 64 and a.device is None and a.model is None


@pytest.mark.parametrize("argv, words", [
    (["bench", "serve", "--num-prompts", "0"], ["--num-prompts must be"]),
    (["bench", "serve", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["bench", "serve", "--max-num-seqs", "4"], ["--max-num-seqs", "--in-process only"]),
    (["bench", "serve", "--device", "cpu"], ["--device", "--in-process only"]),
    (["bench", "--quick", "serve"], ["own flags after `serve`", "--quick"]),
    (["bench", "nosuch"], ["invalid choice: 'nosuch'"]),
    (["bench", "serve", "--in-process", "--random-input-len", "4000", "--random-output-len", "200"],
     ["needs 4200 tokens", "context is 1024"]),
    (["bench", "serve", "--in-process", "--vocab-size", "3000"], ["--vocab-size 3000", "vocab_size (2048)"]),
    (["bench", "--serving-concurrency", "0"], ["--serving-concurrency", "positive"]),
    (["bench", "--serving-hf-memory", "-1"], ["--serving-hf-memory"]),
    (["bench", "--sections", "serving", "--serving-chunk-tokens", "4", "--serving-prefill-decodes", "4"],
     ["--serving-chunk-tokens (4) must be more than --serving-prefill-decodes (4)"]),
])
def test_bad_flags_exit_2_with_one_line(capsys, argv, words):
    assert main(argv) == 2
    err = _one_error_line(capsys)
    for w in words:
        assert w in err, (w, err)


def test_serving_plot_next_to_a_directory_is_refused(tmp_path, capsys):
    (tmp_path / "serving.png").mkdir()
    assert main(["bench", "--sections", "serving", "--markdown", str(tmp_path / "r.md")]) == 2
    assert "serving plot" in _one_error_line(capsys)


# ---- dsa bench serve --in-process ---------------------------------------------------------------------------
def test_bench_serve_in_process_end_to_end(tmp_path, capsys):
    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--in-process", "--device", "cpu", "--num-prompts", "6", "--random-input-len", "20",
               "--random-output-len", "3", "--max-concurrency", "3", "--max-num-batched-tokens", "32",
               "--max-num-seqs", "2", "--json", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "| successful requests | 6 |" in stdout and "| target | in-process |" in stdout
    data = json.loads(out.read_text())
    assert data["completed"] == 6 and data["failed"] == 0 and data["first_error"] is None
    assert data["total_output_tokens"] == 18 and data["total_input_tokens"] == 120 and data["model"] == "mini"
    assert data["ttft_median_ms"] > 0 and data["output_throughput"] > 0
    assert data["prefix_cache_hit_rate"] == 0.0  # random prompts share no full block


def test_the_default_vocab_is_the_builtin_models():
    from dsa.bench.serve import DEFAULT_VOCAB_SIZE
    from dsa.io.model_source import resolve_model

    assert DEFAULT_VOCAB_SIZE == resolve_model(None).config.vocab_size


def test_bench_serve_in_process_shared_prefix_hits_the_cache(capsys):
    rc = main(["bench", "serve", "--in-process", "--dataset", "shared-prefix", "--prefix-len", "32",
               "--num-prefix-groups", "1", "--num-prompts", "3", "--random-input-len", "4", "--random-output-len",
               "2", "--max-concurrency", "1"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    rate = next(line for line in stdout.splitlines() if "prefix-cache hit rate" in line)
    assert "- |" not in rate and " 0.0 %" not in rate, rate  # requests 2 and 3 reuse the 32-token prefix


# ---- the serving section -------------------------------------------------------------------------------------
def test_transformers_batch_keeps_the_broadcast_keys_under_the_budget():
    assert serving.transformers_batch(64, 256, 64, 2.0) == 64  # 64 x 256 x 64 x 256 x 4 B = 1 GiB
    assert serving.transformers_batch(16, 4096, 64, 2.0) == 1  # 4 GiB per sequence
    assert serving.transformers_batch(16, 4096, 64, 8.0) == 2 and serving.transformers_batch(16, 4096, 64, 17.0) == 4
    assert serving.transformers_batch(3, 4096, 64, 100) == 3
    assert serving.transformers_batch(2, 100000, 64, 0.5) == 1  # one sequence always runs


def _row(L, N, ours, hf=None, single=None):
    row = {"prompt_len": L, "concurrency": N, "ours": {"output_tps": ours}}
    if hf is not None:
        row["transformers"] = {"output_tps": hf}
        row["ours_over_transformers"] = ours / hf
    if single is not None:
        row["single"] = {"output_tps": single}
        row["ours_over_single"] = ours / single
    return row


def test_serving_targets():
    sv = {"prompt_len": 256, "long_prompt_len": 4096,
          "rows": [_row(256, 1, 10.0, 20.0, 10.1), _row(256, 64, 300.0, 100.0), _row(4096, 1, 5.0, 5.0, 6.0),
                   _row(4096, 4, 8.0, 4.0)],
          "chunked": [{"chunked_prefill": True, "p99_over_median": 2.5, "prefill_len": 8192, "decodes": 16,
                       "max_num_batched_tokens": 512},
                      {"chunked_prefill": False, "p99_over_median": 1.0, "prefill_len": 8192, "decodes": 16,
                       "max_num_batched_tokens": 16384}]}
    t = targets({"serving": sv})
    short, long = [x for x in t if "concurrent" in x["name"]]
    assert "64 concurrent 256-token" in short["name"] and "16 concurrent 4096-token" in long["name"]
    assert short["value"] == 3.0 and short["met"] and short["at_target_size"] and short["where"] == "64 x 256"
    assert long["value"] == 2.0 and not long["met"] and not long["at_target_size"]  # measured at 4, not 16
    one = [x for x in t if "no slower" in x["name"]]
    assert [x["met"] for x in one] == [True, False]  # 10 / 10.1 within the tolerance; 5 / 6 not
    itl = [x for x in t if "chunked prefill" in x["name"]]
    assert len(itl) == 1 and itl[0]["met"] and itl[0]["value"] == 2.5  # only the chunked row has the target
    assert _measured({"serving": sv}) == ["serving"] and _measured({"serving": {"rows": [], "chunked": []}}) == []


def test_serving_section_micro(tmp_path, capsys):
    pytest.importorskip("transformers", minversion="5.24")
    pytest.importorskip("matplotlib")
    out, md = tmp_path / "bench.json", tmp_path / "RESULTS.md"
    rc = main(["bench", "--sections", "serving", *MICRO, "--json", str(out), "--markdown", str(md)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out.read_text())
    sv = doc["serving"]
    assert [(r["prompt_len"], r["concurrency"]) for r in sv["rows"]] == [(16, 1), (16, 2), (32, 1)]
    for r in sv["rows"]:
        assert r["ours"]["output_tps"] > 0 and r["transformers"]["output_tps"] > 0
        assert r["ours_over_transformers"] == pytest.approx(r["ours"]["output_tps"] / r["transformers"]["output_tps"])
        assert r["ours"]["ttft_median_s"] > 0 and r["ours"]["tpot_median_s"] > 0
        assert r["transformers"]["batches"] == [1, r["concurrency"]]
        assert ("ours_over_single" in r) == (r["concurrency"] == 1)
        assert r["ours"]["cached_tokens"] == 0 and r.get("single", {}).get("cached_tokens", 0) == 0  # fresh prompts
    on, off = sv["chunked"]
    assert on["chunked_prefill"] and on["max_num_batched_tokens"] == 16 and on["window_steps"] > 1
    assert not off["chunked_prefill"] and off["window_steps"] == 1
    for r in (on, off):
        assert r["itl_samples"] == r["window_steps"] * 2 and r["itl_median_s"] > 0
        assert r["p99_over_median"] == pytest.approx(r["itl_p99_s"] / r["itl_median_s"]) and r["p99_over_median"] >= 1
    assert sv["plot"] == "serving.png"
    png = tmp_path / "serving.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert text == stdout and "## 4. Serving" in text and "![output tok/s vs concurrency](serving.png)" in text
    assert "### Chunked prefill" in text and render(doc) == text
    names = [t["name"] for t in doc["targets"]]
    assert sum("no slower" in n for n in names) == 2 and any("chunked prefill" in n for n in names)
    assert all(not t["at_target_size"] for t in doc["targets"] if "concurrent" in t["name"])


def test_serving_section_without_transformers_measures_ours(monkeypatch, capsys):
    from dsa.bench import e2e

    monkeypatch.setattr(e2e, "transformers_missing", lambda: "transformers is not installed (test)")
    assert main(["bench", "--sections", "serving", *MICRO, "--serving-prefill-len", "32",
                 "--serving-prefill-decodes", "1"]) == 0
    stdout, _ = capsys.readouterr()
    assert "transformers: not measured (transformers is not installed (test))" in stdout
    assert "concurrent" not in stdout.split("## Targets")[1]  # no ratio, no throughput target
    assert math.isfinite(float(stdout.split("| 16 | 1 | ")[1].split(" |")[0]))  # ours' tok/s is there
