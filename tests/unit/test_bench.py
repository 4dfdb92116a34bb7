"""`dsa bench`: the arithmetic (timing rotation, medians, ratios, peak memory from allocation events), the
dense baseline against the sparse ops with everything selected, the cache-byte measurement, the JSON
document and the command line. The whole `--quick` run (about 2 minutes) is skipped unless
DSA_BENCH_TESTS=1."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from dsa.bench import cache_bytes
from dsa.bench.common import fmt_bytes, fmt_time, interleaved, md_table, median, peak_bytes, peak_from_events, ratio
from dsa.bench.dense_mla import dense_mla_decode, dense_mla_prefill
from dsa.bench.run import SCHEMA, clean, render, targets
from dsa.cli import main
from dsa.hal import kv_format
from dsa.hal import sparse_mla_decode as op_decode
from dsa.hal import sparse_mla_prefill as op_prefill

LONG = pytest.mark.skipif(os.environ.get("DSA_BENCH_TESTS") != "1", reason="set DSA_BENCH_TESTS=1 (about 2 minutes)")


# ---- arithmetic ------------------------------------------------------------------------------------------
def test_interleaved_rotates_the_order_and_collects_sub_times():
    calls = []
    variants = {n: (lambda n=n: calls.append(n) or {"part": 0.5}) for n in "abc"}
    times = interleaved(variants, reps=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one later
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3, "a.part": 3, "b.part": 3, "c.part": 3}
    assert times["a.part"] == [0.5, 0.5, 0.5] and all(t >= 0 for t in times["a"])


def test_median_ratio_and_formatting():
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0]) == 1.5 and math.isnan(median([]))
    assert ratio(1.0, 4.0) == 0.25 and math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(float("nan"), 1.0))
    assert fmt_time(2.5) == "2.50 s" and fmt_time(0.0123) == "12.3 ms" and fmt_time(float("nan")) == "-"
    assert fmt_bytes(3 * 2**20) == "3.0 MiB" and fmt_bytes(None) == "-"
    table = md_table(["name", "x"], [["a", "1.0 ms"], ["b", "-"]])
    assert table.splitlines()[1] == "|---|---:|"


def test_peak_is_the_largest_running_total_of_allocations():
    assert peak_from_events([4, 8, -4, 2, -8, -2]) == 12
    assert peak_from_events([]) == 0 and peak_from_events([-5, 3]) == 0  # frees of memory held before


def test_peak_bytes_sees_torch_allocations():
    def work():
        a = torch.empty(1 << 20, dtype=torch.uint8)  # 1 MiB
        b = torch.empty(2 << 20, dtype=torch.uint8)  # 2 MiB, both alive
        del a
        c = torch.empty(1 << 19, dtype=torch.uint8)
        return b, c

    peak, method = peak_bytes(work)
    assert 3 << 20 <= peak < (3 << 20) + 4096, peak
    assert "profiler" in method


def test_json_clean_drops_nan_and_inf():
    assert clean({"a": float("nan"), "b": [1.0, float("inf")], "c": (1, 2)}) == {
        "a": None, "b": [1.0, None], "c": [1, 2]
    }


def test_targets_use_the_largest_size_and_say_when_it_is_below_the_target():
    result = {"ops": {"decode": [{"provider": "torch", "context": 1024, "speedup": 0.5},
                                 {"provider": "torch", "context": 65536, "speedup": 12.0}]},
              "e2e": {"rows": [{"context": 2048, "decode_speedup": 1.5}]},
              "cache": {"rows": [{"kv_cache_dtype": "bf16", "theory_bytes": 1284, "relative_error": 0.0,
                                  "within_tolerance": True}]}}
    t = targets(result)
    assert [x["met"] for x in t] == [True, False, True]
    assert t[0]["measured_at"] == 65536 and t[0]["at_target_size"]
    assert t[1]["measured_at"] == 2048 and not t[1]["at_target_size"]


# ---- the dense baseline equals the sparse ops when every token is selected --------------------------------
def _paged(S: int, D: int, page: int, g, fp8: bool, d_v: int):
    n = -(-S // page) + 2
    latent = torch.randn(n, page, 1, D, generator=g)
    cache = kv_format.pack(latent, d_v) if fp8 else latent.to(torch.bfloat16)
    table = torch.randperm(n, generator=g)[: -(-S // page)].to(torch.int32).unsqueeze(0)  # scattered pages
    return cache, table


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("S,s_q", [(1, 1), (300, 1), (257, 3)])
def test_dense_decode_equals_sparse_decode_over_all_tokens(S, s_q, fp8):
    g = torch.Generator().manual_seed(S + s_q)
    H, d_v, rope, page = 4, 128, 32, 16
    cache, table = _paged(S, d_v + rope, page, g, fp8, d_v)
    q = torch.randn(1, s_q, H, d_v + rope, generator=g).to(torch.bfloat16)
    seq_lens = torch.tensor([S], dtype=torch.int32)
    idx = torch.full((1, s_q, S + 5), -1, dtype=torch.int32)
    for j in range(s_q):  # causal: query j sees positions < S - s_q + j + 1
        n = S - s_q + j + 1
        idx[0, j, :n] = torch.randperm(n, generator=g).to(torch.int32)
    want_o, want_l = op_decode(q, cache, table, seq_lens, idx, 0.1, d_v, "torch")
    got_o, got_l = dense_mla_decode(q, cache, table, seq_lens, 0.1, d_v, chunk_tokens=64)
    torch.testing.assert_close(got_o.float(), want_o.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_l, want_l, atol=1e-4, rtol=1e-4)


def test_dense_prefill_rows_equal_sparse_prefill_and_handle_empty_rows():
    g = torch.Generator().manual_seed(1)
    T, H, D, d_v = 200, 4, 160, 128
    kv = torch.randn(T, 1, D, generator=g).to(torch.bfloat16)
    positions = [0, 63, 64, 150, 199]
    q = torch.randn(len(positions), H, D, generator=g).to(torch.bfloat16)
    idx = torch.full((len(positions), 256), -1, dtype=torch.int32)
    for r, p in enumerate(positions):
        idx[r, : p + 1] = torch.arange(p + 1, dtype=torch.int32)
    want_o, want_l = op_prefill(q, kv, idx, 0.2, d_v, "torch")
    got_o, got_l = dense_mla_prefill(q, kv, positions, 0.2, d_v, chunk_tokens=64)
    torch.testing.assert_close(got_o.float(), want_o.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_l, want_l, atol=1e-4, rtol=1e-4)
    from dsa.bench.dense_mla import dense_attend

    out, lse = dense_attend(q.float(), [0, 5, 0, 1, 2], lambda a, b: kv[a:b, 0].float(), 0.2, d_v)
    assert (out[0] == 0).all() and torch.isinf(lse[0]).all() and (lse[0] > 0).all()  # nothing to attend to


# ---- cache bytes -------------------------------------------------------------------------------------------
def test_cache_bytes_match_spec():
    rows = {r["kv_cache_dtype"]: r for r in cache_bytes.run()["rows"]}
    assert rows["bf16"]["total_bytes"] == pytest.approx(1284, rel=0.05) and rows["bf16"]["latent_bytes"] == 1152
    assert rows["fp8"]["total_bytes"] == pytest.approx(788, rel=0.05) and rows["fp8"]["latent_bytes"] == 656
    assert all(r["within_tolerance"] and r["planner_bytes"] == r["theory_bytes"] for r in rows.values())


# ---- the command and its JSON -----------------------------------------------------------------------------
TINY_RUN = ["bench", "--quick", "--decode-contexts", "256", "--prefill-tokens", "128", "--prefill-rows", "2",
            "--reps", "1", "--e2e-contexts", "32", "--e2e-steps", "2", "--e2e-reps", "1", "--threads", "2",
            "--e2e-threads", "1", "--serving-prompt-len", "16", "--serving-concurrency", "2",
            "--serving-long-prompt-len", "32", "--serving-long-concurrency", "1", "--serving-output-len", "2",
            "--serving-reps", "1", "--serving-prefill-len", "32", "--serving-prefill-decodes", "1",
            "--serving-chunk-tokens", "8"]  # the serving section: tests/unit/test_bench_serving.py


def _check_schema(doc: dict, sections: set[str]) -> None:
    assert doc["schema"] == SCHEMA and isinstance(doc["quick"], bool) and doc["elapsed_s"] > 0
    m = doc["machine"]
    for key in ("date", "cpu", "cores", "threads", "torch", "memory_gib", "load_start", "load_end"):
        assert key in m, key
    assert {"decode_contexts", "prefill_tokens", "reps", "e2e_contexts", "threads"} <= set(doc["settings"])
    if "ops" in sections:
        ops = doc["ops"]
        assert {p["provider"] for p in ops["providers"]} >= {"torch", "triton"}
        assert all(p["usable"] or p["reason"] for p in ops["providers"])  # skipped ones say why
        for row in ops["decode"] + ops["prefill"]:
            for key in ("sparse_s", "indexer_s", "attention_s", "dense_s", "sparse_over_dense", "speedup",
                        "sparse_peak_bytes", "dense_peak_bytes", "memory_method"):
                assert row[key] is not None, key
            assert row["sparse_over_dense"] == pytest.approx(row["sparse_s"] / row["dense_s"])
            assert row["sparse_peak_bytes"] > 0 and row["dense_peak_bytes"] > 0
        assert [r["context"] for r in ops["decode"]] == [256] and [r["tokens"] for r in ops["prefill"]] == [128]
        assert ops["prefill"][0]["rows_timed"] == 2
    if "e2e" in sections:
        e = doc["e2e"]
        assert e["skipped"] is None and [r["context"] for r in e["rows"]] == [32]
        assert e["threads"] == 1 and doc["settings"]["threads"] == 2
        row = e["rows"][0]
        for name in ("ours", "transformers"):
            assert row[name]["prefill_tps"] > 0 and row[name]["decode_tps"] > 0
        assert row["decode_speedup"] == pytest.approx(row["ours"]["decode_tps"] / row["transformers"]["decode_tps"])
    if "cache" in sections:
        assert [r["kv_cache_dtype"] for r in doc["cache"]["rows"]] == ["bf16", "fp8"]
    if "serving" in sections:
        assert [(r["prompt_len"], r["concurrency"]) for r in doc["serving"]["rows"]] == [(16, 2), (32, 1)]
        assert len(doc["serving"]["chunked"]) == 2
    assert {t["name"].split(" ")[0] for t in doc["targets"]}  # targets present for what was measured


def test_bench_quick_subset_writes_json_and_markdown(tmp_path, capsys):
    pytest.importorskip("transformers", minversion="5.24")
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    code = main([*TINY_RUN, "--no-rss", "--json", str(out), "--markdown", str(md)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out.read_text())  # strict JSON: no NaN
    _check_schema(doc, {"ops", "e2e", "cache", "serving"})
    text = md.read_text()
    assert text == stdout
    for heading in ("## 1. Op scaling", "### Decode step", "### Prefill", "## 2. End to end", "## 3. Cache bytes",
                    "## 4. Serving", "## Targets"):
        assert heading in text, heading
    assert render(doc) == text  # the report is a function of the JSON alone


@pytest.mark.parametrize("argv,words", [
    (["bench", "--sections", "ops,gpu"], ["unknown section", "gpu"]),
    (["bench", "--decode-contexts", "1K"], ["--decode-contexts", "integers"]),
    (["bench", "--json", "/no/such/dir/out.json"], ["cannot write"]),
])
def test_bench_user_errors_are_one_line(capsys, argv, words):
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


@LONG
def test_rss_workers_report_per_context_peaks(tmp_path):
    from dsa.bench import e2e

    doc = e2e.run([32, 128], steps=2, reps=1, threads=1)
    for row in doc["rows"]:
        for name in e2e.ENGINES:
            assert row[name]["peak_rss_bytes"] > 50 << 20, (name, row)
    assert not doc.get("rss_errors")


@LONG
def test_full_quick_run(tmp_path, capsys):
    out = tmp_path / "quick.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    print(f"dsa bench --quick took {doc['elapsed_s']:.0f} s (load {doc['machine']['load_start']})")
    assert doc["ops"]["decode"] and doc["e2e"]["rows"] and doc["cache"]["rows"]


# ---- the speed-ups this bench motivated in dsa/backends/torch ---------------------------------------------------
def test_fp8_table_cast_equals_torch_cast_for_every_code():
    from dsa.backends.torch.blocks import fp8_to_float

    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).reshape(4, 8, 8)
    want, got = codes.float(), fp8_to_float(codes)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))  # bit-exact, signed zero included
    assert torch.equal(torch.signbit(got), torch.signbit(want))
    strided = codes.transpose(0, 2)  # non-contiguous input
    assert torch.equal(torch.nan_to_num(fp8_to_float(strided)), torch.nan_to_num(strided.float()))


def test_fp8_fast_cast_is_bit_exact_without_nan_codes():
    """Without a NaN code the cast takes the fp16 bit path: every finite code (both zeros, subnormals, +-448)."""
    from dsa.backends.torch.blocks import fp8_to_float

    raw = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    codes = raw[(raw & 0x7F) != 0x7F].view(torch.float8_e4m3fn)  # 254 finite codes
    for x in (codes, codes[1:], codes.reshape(2, 127).t(), codes[:0]):
        want = x.float()
        for got in (fp8_to_float(x), fp8_to_float(x, out=torch.empty(x.shape))):
            assert torch.equal(got, want) and torch.equal(torch.signbit(got), torch.signbit(want))
        assert torch.equal(fp8_to_float(x, unscaled=True) * 256, want)
    with_nan = torch.cat([codes, torch.tensor([0x7F], dtype=torch.uint8).view(torch.float8_e4m3fn)])
    assert torch.isnan(fp8_to_float(with_nan)[-1]) and torch.isnan(fp8_to_float(with_nan, unscaled=True)[-1])
    with pytest.raises(ValueError, match="out must be"):
        fp8_to_float(codes, out=torch.empty(3))


@pytest.mark.parametrize("path", ["window", "gather"])
def test_sparse_prefill_window_and_gather_paths_compute_the_reference(monkeypatch, path):
    """Both ways dsa/backends/torch attends a chunk of rows (dense over a masked window / gathered keys)."""
    from dsa.backends.torch import sparse_mla
    from dsa.conformance.inputs import randn, rng, sparse_indices
    from dsa.conformance.reference.ops import ref_sparse_mla_prefill

    monkeypatch.setattr(sparse_mla, "_WINDOW_NS", 0 if path == "window" else 10**9)
    g = rng(7)
    T, H, d_v, rope, S, K = 9, 4, 32, 16, 40, 16
    q, kv = randn((T, H, d_v + rope), g, torch.float32), randn((S, 1, d_v + rope), g, torch.float32)
    n_valid = [0, 1, 3, 16, 16, 7, 2, 16, 5]  # an empty row, short rows, full rows
    indices = sparse_indices(T, K, S, g, n_valid)
    indices[3, 5] = S + 4  # out of range = skip, as -1
    calls = []
    real = sparse_mla._attend_window if path == "window" else sparse_mla._attend_gathered
    monkeypatch.setattr(sparse_mla, real.__name__, lambda *a: calls.append(1) or real(*a))
    out, lse = sparse_mla.sparse_mla_prefill(q, kv, indices, (d_v + rope) ** -0.5, d_v)
    want_out, want_lse = ref_sparse_mla_prefill(q, kv, torch.where(indices < S, indices, -1), (d_v + rope) ** -0.5, d_v)
    assert calls, f"the {path} path was not taken"
    assert torch.allclose(out.double(), want_out, atol=1e-5) and (out[0] == 0).all()
    assert torch.isposinf(lse[0]).all() and torch.allclose(lse[1:].double(), want_lse[1:], atol=1e-5)


def test_indexer_top_positions_equal_a_stable_descending_sort():
    from dsa.backends.torch.indexer import top_positions

    g = torch.Generator().manual_seed(0)
    for T, S, kk in ((1, 5000, 2048), (7, 300, 64), (3, 40, 40), (2, 10, 10)):
        sc = torch.randn(T, S, generator=g)
        sc[:, ::3] = 0.0  # exact ties, as ReLU makes them
        sc[:, 1::7] = -0.0  # ties with +0.0
        sc[:, 2::11] = sc[:, 2:3]  # ties between non-zero scores
        sc[0, -(S // 3):] = float("-inf")  # not visible
        sc[-1, :] = float("-inf") if T > 1 else sc[-1, :]
        vals, idx = torch.sort(sc, dim=1, descending=True, stable=True)
        want = idx[:, :kk].masked_fill(vals[:, :kk] == float("-inf"), -1)
        assert torch.equal(top_positions(sc, kk), want), (T, S, kk)
