"""Serving on the tiny checkpoint: our continuous batching against transformers' static batches.

The checkpoint is e2e.py's (the seeded tiny config with index_topk 2048, bf16 weights, HF layout); both
engines load it, compute in the same dtype with the same torch.set_num_threads, decode greedily and make
exactly `output_len` tokens per prompt (eos never stops them).

  ours          one Engine (dsa.LLM -> EngineArgs -> setup -> make_engine): the N prompts submitted at once
                through Engine.generate_all (scheduler, chunked prefill at --max-num-batched-tokens, prefix
                cache; ignore_eos), every step one ragged forward over the running requests
  single        "today's" single-sequence path at concurrency 1: Engine.generate of the one prompt
  transformers  DeepseekV32ForCausalLM.generate on a left-padded static batch of the N prompts
                (do_sample False, min_new_tokens = max_new_tokens = output_len). Its indexer's
                torch.matmul broadcasts the keys to [batch, prompt, index_head_dim, prompt] fp32 when the
                batch holds more than one sequence; a batch whose copy would exceed `hf_memory_gib` runs as
                consecutive smaller static batches (the `batches` column says how many of what size)

Throughput points: for each (prompt length L, concurrency N) the engines alternate
(dsa.bench.common.interleaved), each call on fresh prompts (dsa.bench.serve.random_dataset, seeded by the
call's number, so call k of every engine gets the same prompts and our prefix cache never serves a previous
call's prompt). Output tok/s = N * output_len / wall time of the whole batch, median over the repetitions;
TTFT (submission -> first token) and TPOT (seconds per later token) are ours, per request, medians over the
repetitions of each call's median / p99.

Chunked prefill: `decodes` requests decode (prompts of L tokens) on an engine with
max_num_batched_tokens = `chunk_tokens`; after `BASELINE_STEPS` pure decode steps a `prefill_len`-token
prompt is submitted; the decodes' inter-token latencies (ITL) are recorded until that prompt's first token.
Reported: median, p99 and max of those ITLs, their p99 / median (the target), and the decodes' median ITL
alone (before the long prompt came). The same with chunked prefill off (the prompt in one step, so the
decodes stall for the whole prefill) shows what chunking buys. The core is stepped directly here
(EngineCore.step), so the times are the engine's, without a client's thread or event loop.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from dsa.bench.common import interleaved, median, ratio
from dsa.bench.serve import percentile, random_dataset

BASELINE_STEPS = 8  # pure decode steps before the long prompt of the chunked-prefill row
WARMUP = (2, 64, 4)  # (prompts, prompt tokens, output tokens) of each engine's first, untimed call


def transformers_batch(n: int, prompt_len: int, index_head_dim: int, hf_memory_gib: float) -> int:
    """The largest static batch (<= n) whose broadcast indexer keys (batch x L x index_head_dim x L fp32)
    stay within hf_memory_gib; 1 always runs (a single sequence is not broadcast)."""
    per_seq = prompt_len * prompt_len * index_head_dim * 4
    return max(1, min(n, int(hf_memory_gib * (1 << 30) // per_seq)))


class _Ours:
    """Our engine at one scheduler configuration; calls on fresh seeded prompts."""

    def __init__(self, engine, vocab: int, output_len: int):
        from dsa.engine.sampling import SamplingParams

        self.engine, self.vocab, self.output_len = engine, vocab, output_len
        self.params = SamplingParams(temperature=0, max_new_tokens=output_len, ignore_eos=True)

    def batch(self, prompts: list[list[int]]) -> dict:
        engine = self.engine
        before = engine.core.scheduler.num_preemptions
        hits = engine.core.blocks.hits
        outs = engine.generate_all(prompts, [self.params] * len(prompts))
        bad = [len(o.new_token_ids) for o in outs if len(o.new_token_ids) != self.output_len]
        if bad:
            raise RuntimeError(f"our engine made {bad[0]} tokens for a prompt, not {self.output_len}")
        ttft = [s.prefill_seconds for s in engine.stats]
        tpot = [s.decode_seconds / s.decode_steps for s in engine.stats if s.decode_steps]
        return {"ttft_median": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
                "tpot_median": percentile(tpot, 50) if tpot else float("nan"),
                "preemptions": engine.core.scheduler.num_preemptions - before,
                "cached_tokens": engine.core.blocks.hits - hits}

    def single(self, prompt: list[int]) -> dict:
        engine = self.engine
        hits = engine.core.blocks.hits
        n = sum(1 for _ in engine.generate(prompt, self.params))
        if n != self.output_len:
            raise RuntimeError(f"our single-sequence path made {n} tokens, not {self.output_len}")
        return {"ttft": engine.last_stats.prefill_seconds, "cached_tokens": engine.core.blocks.hits - hits}


class _Transformers:
    def __init__(self, checkpoint: Path, dtype: str, output_len: int, hf_memory_gib: float):
        import transformers

        from dsa.bench.e2e import DTYPES

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.model = transformers.DeepseekV32ForCausalLM.from_pretrained(str(checkpoint), dtype=DTYPES[dtype]).eval()
        cfg = self.model.config
        self.index_head_dim, self.output_len, self.hf_memory_gib = cfg.index_head_dim, output_len, hf_memory_gib
        eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else 1
        self.pad = eos
        self.gen = transformers.GenerationConfig(max_new_tokens=output_len, min_new_tokens=output_len,
                                                 do_sample=False, eos_token_id=eos, pad_token_id=eos,
                                                 bos_token_id=cfg.bos_token_id)

    def describe(self) -> str:
        import transformers

        return (f"transformers {transformers.__version__} DeepseekV32ForCausalLM.generate, attention "
                f"{self.model.config._attn_implementation}, static batches (left-padded), greedy")

    def batch_size(self, n: int, prompt_len: int) -> int:
        return transformers_batch(n, prompt_len, self.index_head_dim, self.hf_memory_gib)

    @torch.inference_mode()
    def batch(self, prompts: list[list[int]]) -> None:
        size = self.batch_size(len(prompts), max(len(p) for p in prompts))
        for i in range(0, len(prompts), size):
            part = prompts[i:i + size]
            width = max(len(p) for p in part)
            ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in part])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=self.gen)
            if out.shape[1] - width != self.output_len:
                raise RuntimeError(f"transformers made {out.shape[1] - width} tokens, not {self.output_len}")


class _Fresh:
    """Call k of a variant runs on prompt set k of its stream: ours and transformers share one stream (the same
    prompts), the single-sequence path has its own (it runs on our engine, whose prefix cache would otherwise
    serve it the prompt our batch call just computed, or the other way round)."""

    STREAMS = {"single": 500}  # seed offset per variant; the others: 0

    def __init__(self, n: int, prompt_len: int, output_len: int, vocab: int, seed: int):
        self.n, self.prompt_len, self.output_len, self.vocab, self.seed = n, prompt_len, output_len, vocab, seed
        self.calls: dict[str, int] = {}

    def prompts(self, variant: str) -> list[list[int]]:
        k = self.calls.get(variant, 0)
        self.calls[variant] = k + 1
        seed = self.seed + self.STREAMS.get(variant, 0) + k
        return [p for p, _ in random_dataset(self.n, self.prompt_len, self.output_len, self.vocab, seed=seed)]


def _point(ours: _Ours, hf: Optional[_Transformers], L: int, N: int, output_len: int, reps: int, vocab: int,
           seed: int) -> dict:
    fresh = _Fresh(N, L, output_len, vocab, seed)
    variants = {"ours": lambda: ours.batch(fresh.prompts("ours"))}
    if hf is not None:
        variants["transformers"] = lambda: hf.batch(fresh.prompts("transformers"))
    if N == 1:
        variants["single"] = lambda: ours.single(fresh.prompts("single")[0])
    times = interleaved(variants, reps=reps, warmup=0)
    tokens = N * output_len
    row: dict = {"prompt_len": L, "concurrency": N, "output_tokens": tokens}
    for name in variants:
        wall = median(times[name])
        row[name] = {"wall_s": wall, "output_tps": tokens / wall}
    o = row["ours"]
    o["ttft_median_s"] = median(times["ours.ttft_median"])
    o["ttft_p99_s"] = median(times["ours.ttft_p99"])
    o["tpot_median_s"] = median(times["ours.tpot_median"])
    o["preemptions"] = int(sum(times["ours.preemptions"]))
    o["cached_tokens"] = int(sum(times["ours.cached_tokens"]))  # prefix-cache hits: 0 on fresh prompts
    if "single" in row:
        row["single"]["ttft_s"] = median(times["single.ttft"])
        row["single"]["cached_tokens"] = int(sum(times["single.cached_tokens"]))
        row["ours_over_single"] = ratio(o["output_tps"], row["single"]["output_tps"])
    if hf is not None:
        size = hf.batch_size(N, L)
        row["transformers"]["batches"] = [math.ceil(N / size), size]
        row["ours_over_transformers"] = ratio(o["output_tps"], row["transformers"]["output_tps"])
    return row


def chunked_row(engine, decodes: int, decode_len: int, prefill_len: int, vocab: int, seed: int,
                baseline_steps: int = BASELINE_STEPS) -> dict:
    """`decodes` running decodes' ITLs while one `prefill_len`-token prompt is prefilled (EngineCore stepped here)."""
    from dsa.engine.sampling import SamplingParams

    core = engine.core
    dec_params = SamplingParams(temperature=0, max_new_tokens=max(1, engine.max_seq_len - decode_len - 1),
                                ignore_eos=True)
    rids = [f"itl-{seed}-{i}" for i in range(decodes)]
    long_id = f"itl-{seed}-long"
    stamps: dict[str, list[float]] = {rid: [] for rid in rids}
    limit = prefill_len + decodes * decode_len + 4 * baseline_steps + 64  # steps: a stuck scheduler must not hang

    def step() -> list:
        outs = core.step()
        now = time.perf_counter()
        for o in outs:
            if o.request_id in stamps and o.new_token_ids:
                stamps[o.request_id].append(now)
        return outs

    try:
        for rid, (p, _) in zip(rids, random_dataset(decodes, decode_len, 1, vocab, seed=seed)):
            core.add_request(rid, p, dec_params)
        n = 0
        while any(not s for s in stamps.values()):  # every decode's prompt prefilled
            step()
            n += 1
            if n > limit:
                raise RuntimeError("the decodes never started")
        for _ in range(baseline_steps + 1):
            step()
        long_prompt = random_dataset(1, prefill_len, 1, vocab, seed=seed + 1)[0][0]
        t_submit = time.perf_counter()
        core.add_request(long_id, long_prompt, SamplingParams(temperature=0, max_new_tokens=1, ignore_eos=True))
        t_first, steps = None, 0
        while t_first is None:
            outs = step()
            steps += 1
            if any(o.request_id == long_id for o in outs):
                t_first = time.perf_counter()
            if steps > limit:
                raise RuntimeError(f"the {prefill_len}-token prompt was not prefilled in {limit} steps")
    finally:
        for rid in rids + [long_id]:
            core.abort_request(rid)
    alone, during = [], []
    for s in stamps.values():
        gaps = [(b, b - a) for a, b in zip(s, s[1:])]
        alone += [g for b, g in gaps if b <= t_submit][-baseline_steps:]
        during += [g for b, g in gaps if t_submit < b <= t_first]
    med, p99 = percentile(during, 50), percentile(during, 99)
    base = percentile(alone, 50)
    sched = core.scheduler.config
    return {"chunked_prefill": sched.enable_chunked_prefill, "max_num_batched_tokens": sched.max_num_batched_tokens,
            "prefill_len": prefill_len, "decodes": decodes, "decode_prompt_len": decode_len, "window_steps": steps,
            "baseline_steps": baseline_steps,
            "prefill_s": t_first - t_submit, "itl_alone_median_s": base, "itl_median_s": med, "itl_p99_s": p99,
            "itl_max_s": max(during) if during else None, "itl_samples": len(during),
            "p99_over_median": ratio(p99, med), "max_over_alone": ratio(max(during) if during else None, base)}


def run(prompt_len: int, concurrency: Sequence[int], long_prompt_len: int, long_concurrency: Sequence[int],
        output_len: int, reps: int, threads: int, *, batched_tokens: int = 2048, prefill_len: int = 8192,
        prefill_decodes: int = 16, chunk_tokens: int = 512, hf_memory_gib: float = 2.0, dtype: str = "fp32",
        device_profile: str = "cpu", checkpoint: Optional[Path] = None, log=print) -> dict:
    from dsa.bench import e2e

    result: dict = {"prompt_len": prompt_len, "concurrency": list(concurrency), "long_prompt_len": long_prompt_len,
                    "long_concurrency": list(long_concurrency), "output_len": output_len, "reps": reps,
                    "threads": threads, "dtype": dtype, "max_num_batched_tokens": batched_tokens,
                    "chunk_tokens": chunk_tokens, "prefill_len": prefill_len, "prefill_decodes": prefill_decodes,
                    "hf_memory_gib": hf_memory_gib, "rows": [], "chunked": [], "skipped": None,
                    "transformers_skipped": e2e.transformers_missing()}
    raw = e2e.checkpoint_config([prompt_len, long_prompt_len, prefill_len], output_len + 4 * BASELINE_STEPS)
    max_len = raw["max_position_embeddings"]
    result["config"] = {k: raw[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                                             "index_n_heads", "index_head_dim", "index_topk", "n_routed_experts",
                                             "vocab_size", "max_position_embeddings")}
    vocab = raw["vocab_size"]
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="dsa-bench-serving-") as tmp:
        ckpt = Path(checkpoint) if checkpoint else e2e.make_checkpoint(Path(tmp) / "tiny-bench", raw)
        from dsa.engine.llm import LLM

        most = max([*concurrency, *long_concurrency, prefill_decodes + 1])
        llm = LLM(model=str(ckpt), device=device_profile, dtype=dtype, weights="bf16", max_seq_len=max_len,
                  max_num_batched_tokens=batched_tokens, max_num_seqs=max(256, most))
        ours = _Ours(llm.engine, vocab, output_len)
        hf = None
        if result["transformers_skipped"] is None:
            hf = _Transformers(ckpt, dtype, output_len, hf_memory_gib)
        plan = llm.plan
        result["engines"] = {
            "ours": f"{llm!r}; page {plan.page_size}; providers {', '.join(sorted(set(plan.providers().values())))}; "
                    f"Engine.generate_all, max_num_batched_tokens {batched_tokens}, max_num_seqs "
                    f"{llm.engine.scheduler.max_num_seqs}, {llm.engine.num_blocks} cache blocks, prefix cache on",
            "single": "the same engine's Engine.generate (one request)",
        }
        if hf is not None:
            result["engines"]["transformers"] = hf.describe()
        n, L, out = WARMUP  # first-call costs are no point's numbers
        warm = random_dataset(n, L, out, vocab, seed=999_999)
        _Ours(llm.engine, vocab, out).batch([p for p, _ in warm])
        if hf is not None:
            _with_output(hf, out).batch([p for p, _ in warm])
        points = [(prompt_len, c) for c in concurrency] + [(long_prompt_len, c) for c in long_concurrency]
        for i, (L, N) in enumerate(points):
            row = _point(ours, hf, L, N, output_len, reps, vocab, seed=1000 * (i + 1))
            result["rows"].append(row)
            log(_describe_row(row))
        for chunked in (True, False):
            args = llm.args.replace(max_seq_len=max_len, enable_chunked_prefill=chunked,
                                    max_num_batched_tokens=chunk_tokens if chunked else max_len,
                                    num_blocks=_blocks_for(prefill_decodes, prompt_len, prefill_len, max_len,
                                                           plan.page_size))
            engine = args.resolve().make_engine(llm.model)
            row = chunked_row(engine, prefill_decodes, prompt_len, prefill_len, vocab, seed=7 + chunked)
            del engine
            result["chunked"].append(row)
            log(f"  serving: {prefill_len}-token prefill beside {prefill_decodes} decodes, chunked prefill "
                f"{'on at ' + str(chunk_tokens) + ' tokens/step' if chunked else 'off'}: ITL median "
                f"{row['itl_median_s'] * 1e3:.1f} ms, p99 {row['itl_p99_s'] * 1e3:.1f} ms "
                f"({row['p99_over_median']:.2f}x), alone {row['itl_alone_median_s'] * 1e3:.1f} ms")
        del hf, ours, llm
    return result


def _with_output(hf: _Transformers, output_len: int) -> _Transformers:
    """A shallow copy of `hf` making output_len tokens (the warm-up's)."""
    import copy

    other = copy.copy(hf)
    other.output_len = output_len
    other.gen = copy.deepcopy(hf.gen)
    other.gen.max_new_tokens = other.gen.min_new_tokens = output_len
    return other


def _blocks_for(decodes: int, decode_len: int, prefill_len: int, max_len: int, page: int) -> int:
    """Cache blocks of the chunked-prefill engines: the decodes and the long prompt with room to spare, and at
    least one full context (the engine's rule)."""
    tokens = decodes * (decode_len + prefill_len + 8 * BASELINE_STEPS) + prefill_len
    return max(-(-max_len // page), 2 * -(-tokens // page))


def _describe_row(row: dict) -> str:
    o = row["ours"]
    text = f"  serving L={row['prompt_len']:5d} N={row['concurrency']:3d}: ours {o['output_tps']:7.1f} tok/s"
    if "transformers" in row:
        text += f" vs transformers {row['transformers']['output_tps']:7.1f} ({row['ours_over_transformers']:.2f}x)"
    if "single" in row:
        text += f"; single-sequence {row['single']['output_tps']:7.1f} ({row['ours_over_single']:.2f}x)"
    return text


def plot_rows(result: dict) -> list[dict]:
    """The rows of dsa.bench.serve.plot_throughput: output tok/s per engine, concurrency and prompt length."""
    names = {"ours": "ours (continuous batching)", "transformers": "transformers (static batches)",
             "single": "ours, single-sequence path"}
    out = []
    for row in result.get("rows", []):
        for key, label in names.items():
            if key in row:
                out.append({"engine": label, "concurrency": row["concurrency"], "prompt_len": row["prompt_len"],
                            "output_tok_s": row[key]["output_tps"]})
    return out
