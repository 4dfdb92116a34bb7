"""End to end on a tiny checkpoint: our engine against transformers' DeepseekV32ForCausalLM.

One seeded random checkpoint (dsa.io.checkpoint_writer, bf16 weights, HF layout) of the built-in tiny
config with two changes: index_topk = 2048 (the real model's, so contexts above 2048 are really sparse)
and max_position_embeddings large enough for the longest context. Both engines load that directory
and compute in the same dtype with the same torch.set_num_threads.

  ours          dsa.LLM(model=DIR, device=PROFILE, dtype=...) -> Engine.generate (greedy, eos disabled):
                one prefill of the C prompt tokens, then N single-token decode steps over the paged caches
  transformers  from_pretrained(DIR, dtype=...) (its default attention, sdpa): one forward over the C
                tokens (logits_to_keep=1), then N single-token forwards with its DynamicCache; its sparse
                attention is a dense [T, S] boolean mask over the re-expanded keys of all S cached tokens

Time: per context, the two engines alternate (dsa.bench.common.interleaved), medians reported as prefill
tokens/s (C / prefill time) and decode tokens/s (N / time of the N steps). Peak RSS: each engine
again in its own fresh subprocess (`python -m dsa.bench.e2e --worker ENGINE ...`), the kernel's peak-RSS
mark reset before each context (/proc/self/clear_refs), so the numbers do not mix the two engines;
that single run's speed is kept too ("alone"), a cross-check of the interleaved medians.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from dsa.bench.common import interleaved, median, peak_rss_bytes, ratio, reset_peak_rss, rss_bytes

ENGINES = ("ours", "transformers")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
INDEX_TOPK = 2048
TRANSFORMERS_MIN = "5.24"
_HF_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false"}


def transformers_missing() -> Optional[str]:
    """Why transformers' DeepseekV32ForCausalLM cannot be used here, or None."""
    for k, v in _HF_ENV.items():
        os.environ.setdefault(k, v)
    try:
        import transformers
    except ImportError:
        return f"transformers is not installed (pip install 'transformers>={TRANSFORMERS_MIN}')"
    from packaging.version import Version

    if Version(transformers.__version__) < Version(TRANSFORMERS_MIN):
        return f"transformers {transformers.__version__} has no DeepseekV32ForCausalLM (need >= {TRANSFORMERS_MIN})"
    return None


def checkpoint_config(contexts: Sequence[int], steps: int) -> dict:
    """The tiny config.json with index_topk 2048 and room for the longest context plus the decode steps."""
    from dsa.configs import CONFIG_DIR

    raw = json.loads((CONFIG_DIR / "models" / "tiny" / "config.json").read_text())
    need = max(contexts) + steps + 1
    length = max(raw["max_position_embeddings"], 1 << (need - 1).bit_length())
    raw.update(index_topk=INDEX_TOPK, max_position_embeddings=length)
    raw["num_key_value_heads"] = raw["num_attention_heads"]  # transformers reads it (defaults to 128 otherwise)
    return raw


def make_checkpoint(out_dir: Path, raw: dict, seed: int = 0) -> Path:
    from dsa.io.checkpoint_writer import write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps(raw, indent=1))
        return write_checkpoint(cfg, out_dir, fp8=False, seed=seed, num_shards=1, overwrite=True)


def prompt(config_vocab: int, length: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, config_vocab, (length,), generator=g).tolist()  # no bos / eos ids


class Ours:
    name = "ours"

    def __init__(self, checkpoint: Path, dtype: str, max_len: int, device_profile: str = "cpu"):
        from dsa.engine.llm import LLM

        self.llm = LLM(model=str(checkpoint), device=device_profile, dtype=dtype, weights="bf16", max_seq_len=max_len)
        self.vocab = self.llm.config.vocab_size

    def describe(self) -> str:
        plan = self.llm.plan
        return (f"{self.llm!r}; page {plan.page_size}; providers "
                + ", ".join(sorted(set(plan.providers().values()))))

    def run(self, ids: list[int], steps: int) -> dict:
        from dsa.engine.sampling import SamplingParams

        engine = self.llm.engine
        out = list(engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=steps + 1, ignore_eos=True)))
        st = engine.last_stats
        assert len(out) == steps + 1 and st.decode_steps == steps, (len(out), st)
        return {"prefill": st.prefill_seconds, "decode": st.decode_seconds}


class Transformers:
    name = "transformers"

    def __init__(self, checkpoint: Path, dtype: str):
        reason = transformers_missing()
        if reason:
            raise RuntimeError(reason)
        import transformers

        transformers.utils.logging.disable_progress_bar()
        self.model = transformers.DeepseekV32ForCausalLM.from_pretrained(str(checkpoint), dtype=DTYPES[dtype]).eval()
        self.vocab = self.model.config.vocab_size

    def describe(self) -> str:
        import transformers

        return (f"transformers {transformers.__version__} DeepseekV32ForCausalLM, "
                f"attention {self.model.config._attn_implementation}")

    @torch.inference_mode()
    def run(self, ids: list[int], steps: int) -> dict:
        t0 = time.perf_counter()
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        token = out.logits[0, -1].argmax()
        prefill = time.perf_counter() - t0
        cache = out.past_key_values
        t0 = time.perf_counter()
        for _ in range(steps):
            out = self.model(input_ids=token.view(1, 1), cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            token = out.logits[0, -1].argmax()
        return {"prefill": prefill, "decode": time.perf_counter() - t0}


def load(engine: str, checkpoint: Path, dtype: str, max_len: int, device_profile: str = "cpu"):
    return Ours(checkpoint, dtype, max_len, device_profile) if engine == "ours" else Transformers(checkpoint, dtype)


# ---- peak RSS, one subprocess per engine -----------------------------------------------------------------


def worker(engine: str, checkpoint: Path, dtype: str, threads: int, contexts: Sequence[int], steps: int,
           max_len: int, device_profile: str) -> dict:
    """Runs in a fresh process: load one engine, then each context once, recording the peak RSS of each."""
    torch.set_num_threads(threads)
    eng = load(engine, checkpoint, dtype, max_len, device_profile)
    eng.run(prompt(eng.vocab, 16), 2)  # warm up lazily initialised state before the baseline
    loaded = rss_bytes()
    rows = []
    for C in contexts:
        ok = reset_peak_rss()
        before = rss_bytes()
        t = eng.run(prompt(eng.vocab, C), steps)
        rows.append({"context": C, "peak_rss_bytes": peak_rss_bytes() if ok else None, "rss_before_bytes": before,
                     "prefill_s": t["prefill"], "decode_s": t["decode"]})
    return {"engine": engine, "loaded_rss_bytes": loaded, "rows": rows, "reset_supported": reset_peak_rss()}


def rss_in_subprocess(engine: str, checkpoint: Path, dtype: str, threads: int, contexts: Sequence[int], steps: int,
                      max_len: int, device_profile: str, timeout: float = 3600) -> dict:
    from dsa.dist.launch import child_pythonpath

    cmd = [sys.executable, "-m", "dsa.bench.e2e", "--worker", engine, "--checkpoint", str(checkpoint), "--dtype", dtype,
           "--threads", str(threads), "--steps", str(steps), "--max-len", str(max_len), "--device-profile",
           device_profile, "--contexts", ",".join(map(str, contexts))]
    env = dict(os.environ, **_HF_ENV)
    env["PYTHONPATH"] = child_pythonpath(env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{engine} RSS worker failed (exit {proc.returncode}): {' | '.join(tail)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the section -------------------------------------------------------------------------------------------


def run(contexts: Sequence[int], steps: int, reps: int, threads: int, dtype: str = "fp32",
        device_profile: str = "cpu", checkpoint: Optional[Path] = None, rss: bool = True, log=print) -> dict:
    result = {"contexts": list(contexts), "decode_steps": steps, "reps": reps, "dtype": dtype, "threads": threads,
              "index_topk": INDEX_TOPK, "rows": [], "skipped": None}
    reason = transformers_missing()
    if reason:
        result["skipped"] = reason
        return result
    raw = checkpoint_config(contexts, steps)
    max_len = raw["max_position_embeddings"]
    result["config"] = {k: raw[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                                             "index_n_heads", "index_head_dim", "index_topk", "n_routed_experts",
                                             "vocab_size", "max_position_embeddings")}
    with tempfile.TemporaryDirectory(prefix="dsa-bench-") as tmp:
        ckpt = Path(checkpoint) if checkpoint else make_checkpoint(Path(tmp) / "tiny-bench", raw)
        torch.set_num_threads(threads)
        engines = {name: load(name, ckpt, dtype, max_len, device_profile) for name in ENGINES}
        result["engines"] = {name: e.describe() for name, e in engines.items()}
        for e in engines.values():  # warm-up: first-call costs are not part of any context's numbers
            e.run(prompt(e.vocab, 64), 2)
        for C in contexts:
            ids = prompt(engines["ours"].vocab, C)
            times = interleaved({name: (lambda e=e: e.run(ids, steps)) for name, e in engines.items()},
                                reps=reps, warmup=0)
            row = {"context": C}
            for name in ENGINES:
                pre, dec = median(times[f"{name}.prefill"]), median(times[f"{name}.decode"])
                row[name] = {"prefill_s": pre, "decode_s": dec, "prefill_tps": C / pre, "decode_tps": steps / dec}
            row["prefill_speedup"] = ratio(row["ours"]["prefill_tps"], row["transformers"]["prefill_tps"])
            row["decode_speedup"] = ratio(row["ours"]["decode_tps"], row["transformers"]["decode_tps"])
            result["rows"].append(row)
            log(f"  e2e C={C:6d}: prefill ours {row['ours']['prefill_tps']:8.0f} tok/s vs transformers "
                f"{row['transformers']['prefill_tps']:8.0f} | decode ours {row['ours']['decode_tps']:6.1f} tok/s vs "
                f"{row['transformers']['decode_tps']:6.1f} ({row['decode_speedup']:.2f}x)")
        del engines
        if rss:
            for name in ENGINES:
                try:
                    w = rss_in_subprocess(name, ckpt, dtype, threads, contexts, steps, max_len, device_profile)
                except Exception as err:  # memory numbers are reported missing, the timings stand
                    result.setdefault("rss_errors", {})[name] = str(err)
                    continue
                by_ctx = {r["context"]: r for r in w["rows"]}
                for row in result["rows"]:
                    r = by_ctx.get(row["context"])
                    if r is None:
                        continue
                    if r["peak_rss_bytes"] is not None:
                        row[name]["peak_rss_bytes"] = r["peak_rss_bytes"]
                        row[name]["peak_rss_over_loaded_bytes"] = r["peak_rss_bytes"] - w["loaded_rss_bytes"]
                    # one more (single) run, alone in its process: a cross-check of the interleaved medians
                    row[name]["alone_prefill_tps"] = row["context"] / r["prefill_s"]
                    row[name]["alone_decode_tps"] = steps / r["decode_s"]
                result.setdefault("loaded_rss_bytes", {})[name] = w["loaded_rss_bytes"]
    return result


def _main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsa.bench.e2e",
                                description="peak-RSS worker of `dsa bench` (one engine)")
    p.add_argument("--worker", choices=ENGINES, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--contexts", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-len", type=int, required=True)
    p.add_argument("--device-profile", default="cpu")
    a = p.parse_args(argv)
    contexts = [int(c) for c in a.contexts.split(",")]
    print(json.dumps(worker(a.worker, a.checkpoint, a.dtype, a.threads, contexts, a.steps, a.max_len,
                            a.device_profile)))
    return 0


if __name__ == "__main__":
    for _k, _v in _HF_ENV.items():
        os.environ.setdefault(_k, _v)
    sys.exit(_main())
