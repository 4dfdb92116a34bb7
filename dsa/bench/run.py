"""`dsa bench`: run the sections, print Markdown tables, write --json / --markdown.

The settings of a run (`Settings`) come from `--quick` or the full defaults, then any explicit flag.
Everything measured goes into one JSON document (schema SCHEMA, described in bench/RESULTS.md's
"JSON" section and checked by tests/unit/test_bench.py); the Markdown report is rendered from it.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional

from dsa.bench.common import fmt_bytes, fmt_ratio, fmt_time, fmt_tokens, load_average, machine, md_table

SCHEMA = "dsa-bench/1"
SECTIONS = ("ops", "e2e", "cache", "serving", "onnx")
DECODE_TARGET, E2E_TARGET, CACHE_TARGET = 10.0, 3.0, 0.05
# serving (issue 13): output tok/s over transformers at 64 x 256 and 16 x 4096 prompts; concurrency 1 against the
# single-sequence path (within SINGLE_TOLERANCE, the timing noise of two runs of one code path); chunked prefill's
# p99 / median ITL of running decodes while an 8K prompt is prefilled
SERVING_SHORT_TARGET, SERVING_LONG_TARGET, SINGLE_TOLERANCE, ITL_TARGET = 1.5, 4.0, 0.95, 3.0


@dataclasses.dataclass
class Settings:
    decode_contexts: list[int]
    prefill_tokens: list[int]
    prefill_rows: int
    reps: int
    e2e_contexts: list[int]
    e2e_steps: int
    e2e_reps: int
    dtype: str = "fp32"
    threads: int = 0  # 0 = torch's default (the number of cores)
    e2e_threads: int = 0  # 0 = threads
    sections: tuple[str, ...] = SECTIONS
    providers: Optional[list[str]] = None
    e2e_rss: bool = True
    device_profile: str = "cpu"
    serving_prompt_len: int = 256
    serving_concurrency: list[int] = dataclasses.field(default_factory=lambda: [1, 4, 16, 64])
    serving_long_prompt_len: int = 4096
    serving_long_concurrency: list[int] = dataclasses.field(default_factory=lambda: [1, 4, 16])
    serving_output_len: int = 32
    serving_reps: int = 3
    serving_threads: int = 0  # 0 = threads
    serving_batched_tokens: int = 2048
    serving_prefill_len: int = 8192
    serving_prefill_decodes: int = 16
    serving_chunk_tokens: int = 512
    serving_hf_memory: float = 2.0
    onnx_contexts: list[int] = dataclasses.field(default_factory=lambda: [512, 4096, 16384])
    onnx_chunk: int = 2048  # prefill chunk (the engine's max_num_batched_tokens)
    onnx_decodes: int = 16


FULL = dict(decode_contexts=[1024, 4096, 16384, 65536], prefill_tokens=[1024, 2048, 4096, 8192, 16384],
            prefill_rows=64, reps=5, e2e_contexts=[512, 2048, 8192, 16384], e2e_steps=32, e2e_reps=3,
            serving_prompt_len=256, serving_concurrency=[1, 4, 16, 64], serving_long_prompt_len=4096,
            serving_long_concurrency=[1, 4, 16], serving_output_len=32, serving_reps=3, serving_prefill_len=8192,
            serving_prefill_decodes=16, serving_chunk_tokens=512, onnx_contexts=[512, 4096, 16384], onnx_chunk=2048,
            onnx_decodes=16)
QUICK = dict(decode_contexts=[1024, 4096, 16384], prefill_tokens=[1024, 4096], prefill_rows=16, reps=3,
             e2e_contexts=[256, 1024], e2e_steps=8, e2e_reps=2,
             serving_prompt_len=64, serving_concurrency=[1, 4], serving_long_prompt_len=512,
             serving_long_concurrency=[1, 2], serving_output_len=8, serving_reps=2, serving_prefill_len=1024,
             serving_prefill_decodes=4, serving_chunk_tokens=128, onnx_contexts=[128, 512], onnx_chunk=256,
             onnx_decodes=4)


def settings(quick: bool, **overrides) -> Settings:
    base = dict(QUICK if quick else FULL)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**base)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(s: Settings, quick: bool = False, command: str = "dsa bench", log=_log) -> dict:
    import torch

    if s.threads:
        torch.set_num_threads(s.threads)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    result: dict = {"schema": SCHEMA, "quick": quick, "command": command, "machine": machine(threads),
                    "settings": dataclasses.asdict(s) | {"threads": threads}}
    if "cache" in s.sections:
        from dsa.bench import cache_bytes

        log("[bench] cache bytes per token per layer")
        result["cache"] = cache_bytes.run()
    if "ops" in s.sections:
        from dsa.bench import ops

        log("[bench] op scaling, one layer at the 671B shapes")
        result["ops"] = ops.run(s.decode_contexts, s.prefill_tokens, s.prefill_rows, s.reps, providers=s.providers,
                                log=log)
        result["ops"]["load_after"] = load_average()
    if "e2e" in s.sections:
        from dsa.bench import e2e

        log("[bench] end to end, tiny checkpoint: ours vs transformers")
        result["e2e"] = e2e.run(s.e2e_contexts, s.e2e_steps, s.e2e_reps, s.e2e_threads or threads, dtype=s.dtype,
                                device_profile=s.device_profile, rss=s.e2e_rss, log=log)
        torch.set_num_threads(threads)
        result["e2e"]["load_after"] = load_average()
    if "serving" in s.sections:
        from dsa.bench import serving

        log("[bench] serving, tiny checkpoint: continuous batching vs transformers' static batches")
        result["serving"] = serving.run(
            s.serving_prompt_len, s.serving_concurrency, s.serving_long_prompt_len, s.serving_long_concurrency,
            s.serving_output_len, s.serving_reps, s.serving_threads or threads, batched_tokens=s.serving_batched_tokens,
            prefill_len=s.serving_prefill_len, prefill_decodes=s.serving_prefill_decodes,
            chunk_tokens=s.serving_chunk_tokens, hf_memory_gib=s.serving_hf_memory, dtype=s.dtype,
            device_profile=s.device_profile, log=log)
        torch.set_num_threads(threads)
        result["serving"]["load_after"] = load_average()
    if "onnx" in s.sections:
        from dsa.bench import onnx_runtime

        log("[bench] onnx: onnxruntime over `dsa export onnx` vs the torch path")
        result["onnx"] = onnx_runtime.run(s.onnx_contexts, s.onnx_chunk, s.onnx_decodes, threads, log)
        torch.set_num_threads(threads)
        result["onnx"]["load_after"] = load_average()
    result["targets"] = targets(result)
    result["machine"]["load_end"] = load_average()
    result["elapsed_s"] = time.perf_counter() - t0
    return result


# ---- targets (shown, not asserted) ------------------------------------------------------------------------


def targets(result: dict) -> list[dict]:
    out = []
    decode = [r for r in result.get("ops", {}).get("decode", []) if r["provider"] == "torch"] or \
        result.get("ops", {}).get("decode", [])
    if decode:
        r = max(decode, key=lambda r: r["context"])
        out.append({"name": f"decode attention (indexer + sparse MLA) >= {DECODE_TARGET:g}x cheaper than dense at 64K",
                    "measured_at": r["context"], "provider": r["provider"], "value": r["speedup"],
                    "target": DECODE_TARGET, "at_target_size": r["context"] == 65536,
                    "met": bool(r["speedup"] >= DECODE_TARGET)})
    rows = result.get("e2e", {}).get("rows", [])
    if rows:
        r = max(rows, key=lambda r: r["context"])
        out.append({"name": f"end-to-end decode >= {E2E_TARGET:g}x faster than transformers at 16K (tiny model)",
                    "measured_at": r["context"], "value": r["decode_speedup"], "target": E2E_TARGET,
                    "at_target_size": r["context"] == 16384, "met": bool(r["decode_speedup"] >= E2E_TARGET)})
    for r in result.get("cache", {}).get("rows", []):
        out.append({"name": f"{r['kv_cache_dtype']} cache bytes per token per layer within 5% of docs/model-and-ops.md "
                            f"({r['theory_bytes']} B)", "measured_at": None, "value": r["relative_error"],
                    "target": CACHE_TARGET, "at_target_size": True, "met": bool(r["within_tolerance"])})
    out += _serving_targets(result.get("serving", {}))
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and x == x and abs(x) != float("inf")


def _serving_targets(sv: dict) -> list[dict]:
    out = []
    rows = sv.get("rows", [])
    for plen, want_n, want_len, goal in ((sv.get("prompt_len"), 64, 256, SERVING_SHORT_TARGET),
                                         (sv.get("long_prompt_len"), 16, 4096, SERVING_LONG_TARGET)):
        here = [r for r in rows if r["prompt_len"] == plen and _finite(r.get("ours_over_transformers"))]
        if not here:
            continue
        r = max(here, key=lambda r: r["concurrency"])
        out.append({"name": f"serving: {want_n} concurrent {want_len}-token prompts >= {goal:g}x transformers' "
                            "output tok/s (tiny model)", "measured_at": r["concurrency"],
                    "where": f"{r['concurrency']} x {fmt_tokens(r['prompt_len'])}",
                    "value": r["ours_over_transformers"],
                    "target": goal, "at_target_size": r["concurrency"] == want_n and r["prompt_len"] == want_len,
                    "met": bool(r["ours_over_transformers"] >= goal)})
    for r in rows:
        if r["concurrency"] == 1 and _finite(r.get("ours_over_single")):
            out.append({"name": f"serving: concurrency 1 ({fmt_tokens(r['prompt_len'])}-token prompt) no slower than "
                                f"the single-sequence path (>= {SINGLE_TOLERANCE:g}x: timing noise)",
                        "measured_at": 1, "where": f"1 x {fmt_tokens(r['prompt_len'])}",
                        "value": r["ours_over_single"], "target": SINGLE_TOLERANCE, "at_target_size": True,
                        "met": bool(r["ours_over_single"] >= SINGLE_TOLERANCE)})
    for r in sv.get("chunked", []):
        if r["chunked_prefill"] and _finite(r.get("p99_over_median")):
            out.append({"name": f"serving: chunked prefill, p99 ITL of running decodes < {ITL_TARGET:g}x their median "
                                "while an 8K prompt is prefilled", "measured_at": r["prefill_len"],
                        "where": f"{fmt_tokens(r['prefill_len'])}-token prompt, {r['decodes']} decodes, "
                                 f"{r['max_num_batched_tokens']} tokens/step",
                        "value": r["p99_over_median"], "target": ITL_TARGET, "at_target_size": r["prefill_len"] == 8192,
                        "met": bool(r["p99_over_median"] < ITL_TARGET)})
    return out


# ---- Markdown --------------------------------------------------------------------------------------------


def render(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    parts = [
        f"# dsa bench results ({'quick' if result['quick'] else 'full'} run)",
        "",
        f"- date: {m['date']}",
        f"- machine: {m['cpu']} ({m['platform']}: {m['device']}), {m['cores']} cores, {m['memory_gib']} GiB; "
        f"torch {m['torch']} with {m['threads']} thread(s); transformers {m['transformers'] or 'not installed'}; "
        f"Python {m['python']}",
        f"- load average (1/5/15 min) at start {_load(m.get('load_start'))}, at end {_load(m.get('load_end'))}",
        f"- command: `{result['command']}` ({result['elapsed_s']:.0f} s)",
        "",
    ]
    if "ops" in result:
        parts += _render_ops(result["ops"], s)
    if "e2e" in result:
        parts += _render_e2e(result["e2e"])
    if "cache" in result:
        parts += _render_cache(result["cache"])
    if "serving" in result:
        parts += _render_serving(result["serving"])
    if "onnx" in result:
        from dsa.bench.onnx_runtime import render as render_onnx

        parts += render_onnx(result["onnx"])
    if result.get("targets"):
        parts += ["## Targets (shown, not asserted)", ""]
        rows = []
        for t in result["targets"]:
            where = t.get("where") or (None if t["measured_at"] is None else fmt_tokens(t["measured_at"]))
            at = "" if where is None else f" (measured at {where}" + \
                ("" if t["at_target_size"] else ", below the target size") + ")"
            value = f"{t['value'] * 100:+.2f}%" if t["measured_at"] is None else f"{t['value']:.2f}x"
            rows.append([t["name"], value + at, "yes" if t["met"] else "no"])
        parts += [md_table(["target", "measured", "met"], rows), ""]
    return "\n".join(parts).rstrip() + "\n"


def _load(x) -> str:
    return "/".join(f"{v:.2f}" for v in x) if x else "unknown"


def _render_ops(ops: dict, s: dict) -> list[str]:
    sh = ops["shapes"]
    out = [
        "## 1. Op scaling: one layer at the 671B shapes",
        "",
        f"{sh['heads']} heads x {sh['latent'] + sh['rope']} (value {sh['latent']}), indexer {sh['index_heads']} "
        f"heads x {sh['index_dim']} fp8, top-k {sh['topk']}; {ops['kv_cache_dtype']} paged latent cache "
        f"({ops['page_size']}-token pages), device {ops['device']}. Sparse = `indexer_topk` + `sparse_mla_*` of the "
        "provider; dense = `dsa/bench/dense_mla.py` (absorbed MLA over every token, chunked online softmax). Median of "
        f"{s['reps']} interleaved repetitions; ratio = sparse time / dense time (below 1: sparse is cheaper).",
        "",
    ]
    skipped = [p for p in ops["providers"] if not p["usable"]]
    used = [p["provider"] for p in ops["providers"] if p["usable"]]
    out += [f"Providers benchmarked: {', '.join(used) or 'none'}."]
    if skipped:
        out += ["Skipped: " + "; ".join(f"{p['provider']} ({p['reason']})" for p in skipped) + "."]
    out += [""]
    method = next((r["memory_method"] for r in ops["decode"] + ops["prefill"]), None)
    if ops["decode"]:
        out += ["### Decode step (1 new token over S cached tokens)", ""]
        rows = [[r["provider"], fmt_tokens(r["context"]), fmt_time(r["sparse_s"]), fmt_time(r["indexer_s"]),
                 fmt_time(r["attention_s"]), fmt_time(r["dense_s"]), fmt_ratio(r["sparse_over_dense"], 3),
                 f"{r['speedup']:.1f}x", fmt_bytes(r["sparse_peak_bytes"]), fmt_bytes(r["dense_peak_bytes"])]
                for r in ops["decode"]]
        out += [md_table(["provider", "S", "sparse step", "of it: indexer", "of it: attention", "dense",
                          "sparse/dense", "dense/sparse", "peak mem sparse", "peak mem dense"], rows), ""]
    if ops["prefill"]:
        out += ["### Prefill (T tokens, causal)", "",
                "Timed on R query rows (blocks of 8 consecutive positions centred at evenly spaced points), scaled by "
                "T/R (exact when R = T); peak memory is that of the R-row call (both implementations work in bounded "
                "chunks).", ""]
        rows = [[r["provider"], fmt_tokens(r["tokens"]), r["rows_timed"], fmt_time(r["sparse_s"]),
                 fmt_time(r["indexer_s"]), fmt_time(r["attention_s"]), fmt_time(r["dense_s"]),
                 fmt_ratio(r["sparse_over_dense"], 3), f"{r['speedup']:.1f}x", fmt_bytes(r["sparse_peak_bytes"]),
                 fmt_bytes(r["dense_peak_bytes"])] for r in ops["prefill"]]
        out += [md_table(["provider", "T", "R", "sparse (est. T rows)", "of it: indexer", "of it: attention", "dense",
                          "sparse/dense", "dense/sparse", "peak mem sparse", "peak mem dense"], rows), ""]
    if method:
        out += [f"Peak memory: {method}.", ""]
    return out


def _render_e2e(e: dict) -> list[str]:
    out = ["## 2. End to end: tiny checkpoint, ours vs transformers", ""]
    if e.get("skipped"):
        return out + [f"Skipped: {e['skipped']}.", ""]
    c = e["config"]
    out += [
        f"Tiny config ({c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} heads, "
        f"kv_lora {c['kv_lora_rank']}, indexer {c['index_n_heads']}x{c['index_head_dim']}, top-k {c['index_topk']}, "
        f"{c['n_routed_experts']} experts), seeded bf16 checkpoint, both computing in {e['dtype']} with "
        f"{e['threads']} thread(s). Prefill = one forward over the C-token prompt; decode = {e['decode_steps']} "
        f"single-token steps after it. Median of {e['reps']} interleaved repetitions. Peak RSS: each engine in its "
        "own subprocess, peak reset per context; 'over loaded' = peak minus the RSS after loading the model.",
        "",
    ]
    for name, desc in e.get("engines", {}).items():
        out += [f"- {name}: {desc}"]
    out += [""]
    rows = []
    for r in e["rows"]:
        o, t = r["ours"], r["transformers"]
        rows.append([fmt_tokens(r["context"]), f"{o['prefill_tps']:.0f}", f"{t['prefill_tps']:.0f}",
                     f"{r['prefill_speedup']:.2f}x", f"{o['decode_tps']:.1f}", f"{t['decode_tps']:.1f}",
                     f"{r['decode_speedup']:.2f}x", fmt_bytes(o.get("peak_rss_bytes")),
                     fmt_bytes(t.get("peak_rss_bytes")),
                     fmt_bytes(o.get("peak_rss_over_loaded_bytes")), fmt_bytes(t.get("peak_rss_over_loaded_bytes"))])
    out += [md_table(["context", "prefill tok/s ours", "prefill tok/s transformers", "ours/theirs",
                      "decode tok/s ours", "decode tok/s transformers", "ours/theirs", "peak RSS ours",
                      "peak RSS transformers", "over loaded, ours", "over loaded, transformers"], rows), ""]
    alone = [r for r in e["rows"] if "alone_decode_tps" in r["ours"] and "alone_decode_tps" in r["transformers"]]
    if alone:
        out += ["Cross-check: one more run of each engine alone in its own process "
                "(the peak-RSS run, 1 repetition):", ""]
        out += [md_table(["context", "prefill tok/s ours", "prefill tok/s transformers", "decode tok/s ours",
                          "decode tok/s transformers", "decode ours/theirs"],
                         [[fmt_tokens(r["context"]), f"{r['ours']['alone_prefill_tps']:.0f}",
                           f"{r['transformers']['alone_prefill_tps']:.0f}", f"{r['ours']['alone_decode_tps']:.1f}",
                           f"{r['transformers']['alone_decode_tps']:.1f}",
                           f"{r['ours']['alone_decode_tps'] / r['transformers']['alone_decode_tps']:.2f}x"]
                          for r in alone]), ""]
    for name, err in e.get("rss_errors", {}).items():
        out += [f"Peak RSS of {name} not measured: {err}", ""]
    return out


def _render_cache(c: dict) -> list[str]:
    out = ["## 3. Cache bytes per token per layer (671B config, measured on PagedCache)", "",
           "Sum of the bytes of the tensors `dsa.model.cache.PagedCache` allocates "
           "(latent + index keys + index scales), "
           "divided by tokens x layers; docs/model-and-ops.md 2.2: 576 bf16 values + 132 indexer bytes = 1284 B, "
           "or 656 + 132 = 788 B with the packed fp8 cache.", ""]
    rows = [[r["kv_cache_dtype"], f"{r['latent_bytes']:.1f}", f"{r['index_bytes']:.1f}", f"{r['total_bytes']:.1f}",
             r["theory_bytes"], r["planner_bytes"], f"{r['relative_error'] * 100:+.2f}%",
             "yes" if r["within_tolerance"] else "no"] for r in c["rows"]]
    out += [md_table(["kv cache", "latent B", "index B", "total B", "docs B", "planner B", "difference", "within 5%"],
                     rows), ""]
    return out


def _ms(x) -> str:
    return "-" if x is None or x != x else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def _render_serving(sv: dict) -> list[str]:
    out = ["## 4. Serving: continuous batching vs static batches (tiny checkpoint)", ""]
    if sv.get("skipped"):
        return out + [f"Skipped: {sv['skipped']}.", ""]
    c = sv["config"]
    out += [
        f"The e2e section's checkpoint recipe (tiny config, {c['num_hidden_layers']} layers, hidden "
        f"{c['hidden_size']}, top-k {c['index_topk']}, seeded bf16 weights), both engines computing in {sv['dtype']} "
        f"with {sv['threads']} thread(s), greedy, exactly {sv['output_len']} output tokens per prompt (eos ignored). "
        "Per point: N prompts of L random token ids; ours submits all N at once (`Engine.generate_all`: continuous "
        f"batching, chunked prefill at {sv['max_num_batched_tokens']} tokens per step, prefix cache on), transformers "
        "runs them as a left-padded static batch (`generate`); at concurrency 1 also our single-sequence path "
        f"(`Engine.generate`). Output tok/s = N x {sv['output_len']} / wall time of the batch, median of "
        f"{sv['reps']} interleaved repetitions, each on fresh prompts (the same for ours and transformers; the "
        "single-sequence path has its own, so the prefix cache serves none: column 'prefix-cache hits', prompt "
        "tokens). TTFT / TPOT: ours, per request (median of the repetitions' median / p99).",
        "",
    ]
    for name, desc in sv.get("engines", {}).items():
        out += [f"- {name}: {desc}"]
    if sv.get("transformers_skipped"):
        out += [f"- transformers: not measured ({sv['transformers_skipped']})"]
    out += [""]
    big = [r for r in sv["rows"] if r.get("transformers", {}).get("batches", [1])[0] > 1]
    if big:
        out += [f"transformers' indexer broadcasts its keys to [batch, L, index_head_dim, L] fp32 when a batch holds "
                f"more than one sequence; a batch that would need more than {sv['hf_memory_gib']:g} GiB for that copy "
                "runs as consecutive smaller static batches (column 'transformers batches': count x size).", ""]
    rows = []
    for r in sv["rows"]:
        o, t, one = r["ours"], r.get("transformers"), r.get("single")
        rows.append([fmt_tokens(r["prompt_len"]), r["concurrency"], f"{o['output_tps']:.1f}",
                     f"{t['output_tps']:.1f}" if t else "-", fmt_ratio(r.get("ours_over_transformers")) +
                     ("x" if t else ""), f"{one['output_tps']:.1f}" if one else "-",
                     (fmt_ratio(r["ours_over_single"]) + "x") if one else "-", _ms(o["ttft_median_s"]),
                     _ms(o["ttft_p99_s"]), _ms(o["tpot_median_s"]),
                     " x ".join(map(str, t["batches"])) if t else "-", o["preemptions"],
                     o.get("cached_tokens", 0) + (one or {}).get("cached_tokens", 0)])
    out += [md_table(["L", "N", "output tok/s ours", "output tok/s transformers", "ours/transformers",
                      "single-sequence tok/s", "ours/single", "TTFT median", "TTFT p99", "TPOT median",
                      "transformers batches", "preemptions", "prefix-cache hits"], rows), ""]
    if sv.get("plot"):
        out += [f"![output tok/s vs concurrency]({sv['plot']})", ""]
    elif sv.get("plot_error"):
        out += [f"Plot not written: {sv['plot_error']}.", ""]
    if sv.get("chunked"):
        out += ["### Chunked prefill: running decodes while a long prompt is prefilled", "",
                f"{sv['prefill_decodes']} requests decode (prompts of {sv['prompt_len']} tokens); after "
                f"{sv['chunked'][0]['baseline_steps']} pure decode steps one {fmt_tokens(sv['prefill_len'])}-token "
                "prompt arrives. ITL = the gaps between a decode's tokens while that prompt is prefilled "
                "(submission to its first token; the core stepped directly); 'alone' = the same decodes' median ITL "
                "just before it arrived. With chunked prefill off the prompt runs in one step and the decodes wait "
                "for all of it.", ""]
        rows = [[("on" if r["chunked_prefill"] else "off"), r["max_num_batched_tokens"], fmt_tokens(r["prefill_len"]),
                 r["decodes"], _ms(r["prefill_s"]), r["window_steps"], _ms(r["itl_alone_median_s"]),
                 _ms(r["itl_median_s"]), _ms(r["itl_p99_s"]), _ms(r["itl_max_s"]),
                 fmt_ratio(r["p99_over_median"]) + "x", fmt_ratio(r["max_over_alone"], 1) + "x"]
                for r in sv["chunked"]]
        out += [md_table(["chunked prefill", "max-num-batched-tokens", "long prompt", "decodes", "prefill time",
                          "steps", "ITL alone (median)", "ITL median", "ITL p99", "ITL max", "p99/median",
                          "max/alone"], rows), ""]
    return out


# ---- entry points -----------------------------------------------------------------------------------------


def clean(x):
    """JSON-safe copy: NaN / inf become null (strict JSON has neither), tuples become lists."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def main_with(s: Settings, quick: bool, json_path: Optional[Path], markdown_path: Optional[Path], command: str) -> int:
    result = run(s, quick=quick, command=command)
    text = render(result)
    print(text, end="")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(clean(result), indent=1, allow_nan=False) + "\n")
    if markdown_path is not None:
        Path(markdown_path).write_text(text)
    return 0
