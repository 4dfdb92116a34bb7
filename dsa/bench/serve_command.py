"""`dsa bench serve` flags and entry: the serving benchmark of dsa.bench.serve against a running server, or
against an engine built in this process (--in-process: no server, no HTTP).

    dsa serve --device cpu &                      # the server (the built-in `mini` model)
    dsa bench serve --num-prompts 50 --request-rate 4 --max-concurrency 8
    dsa bench serve --dataset shared-prefix --prefix-len 512 --num-prefix-groups 4 --json serve.json
    dsa bench serve --in-process --device cpu --num-prompts 32 --max-concurrency 8 --max-num-batched-tokens 512

In process the engine is built as `dsa run` builds it (EngineArgs -> setup -> model -> make_engine; the engine
flags are dsa.cli's, added there) and its core is driven by an AsyncEngine thread; the same load generator and
timing run against it (dsa.bench.serve._engine_send), after one untimed warm-up request.

Exit status: 0 a result, 1 no request completed (the report says why: the first error), 2 a bad flag or a
server that cannot be reached (one `error: ...` line).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from dsa.bench.serve import DATASETS, DEFAULT_VOCAB_SIZE, BenchServeConfig, check_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `dsa bench serve` (names and defaults as in `vllm bench serve` where it has them)."""
    d = BenchServeConfig()
    p.add_argument("--base-url", default=d.base_url, metavar="URL",
                   help=f"the server's root URL (a trailing /v1 is accepted; default {d.base_url})")
    p.add_argument("--in-process", action="store_true",
                   help="no server: build the engine here (--device, --model and the engine options) and drive it "
                        "through an AsyncEngine; --base-url and --api-key are not used")
    p.add_argument("--device", help="--in-process: the device profile (see `dsa devices`; default cpu)")
    p.add_argument("--model", help="model name sent with each request (default: the first of GET /v1/models); "
                                   "--in-process: the engine's checkpoint dir, config.json or built-in name "
                                   "(default: the built-in model, mini)")
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="random: random token ids; shared-prefix: groups of prompts sharing a long prefix")
    p.add_argument("--num-prompts", type=int, default=d.num_prompts, metavar="N", help="requests to send")
    p.add_argument("--random-input-len", type=int, default=d.input_len, metavar="N",
                   help="prompt tokens (shared-prefix: the question after the prefix)")
    p.add_argument("--random-output-len", type=int, default=d.output_len, metavar="N",
                   help="output tokens per request (eos is ignored, so exactly this many)")
    p.add_argument("--random-range-ratio", type=float, default=d.range_ratio, metavar="R",
                   help="lengths uniform in [len*(1-R), len*(1+R)]; 0 = fixed (default)")
    p.add_argument("--prefix-len", type=int, default=d.prefix_len, metavar="N", help="shared-prefix: prefix tokens")
    p.add_argument("--num-prefix-groups", type=int, default=d.num_prefix_groups, metavar="G",
                   help="shared-prefix: distinct prefixes")
    p.add_argument("--request-rate", type=float, default=d.request_rate, metavar="R",
                   help="Poisson arrivals, requests/s; inf (default) sends all at once")
    p.add_argument("--max-concurrency", type=int, metavar="N", help="requests in flight at most (default: no limit)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the prompts and the arrival times")
    p.add_argument("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY)")
    p.add_argument("--timeout", type=float, default=d.timeout, metavar="S", help="seconds per request")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, metavar="V",
                   help=f"prompt ids are drawn from [2, V); default {DEFAULT_VOCAB_SIZE}, the built-in mini model's "
                        "vocab (set it to your model's vocab_size)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")


def config_from_args(args: argparse.Namespace) -> BenchServeConfig:
    """The parsed flags as a checked BenchServeConfig (InputError naming the flag for a bad value)."""
    api_key = args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY") or None
    config = BenchServeConfig(
        base_url=args.base_url, model=args.model, dataset=args.dataset, num_prompts=args.num_prompts,
        input_len=args.random_input_len, output_len=args.random_output_len, range_ratio=args.random_range_ratio,
        prefix_len=args.prefix_len, num_prefix_groups=args.num_prefix_groups, request_rate=args.request_rate,
        max_concurrency=args.max_concurrency, seed=args.seed, api_key=api_key, timeout=args.timeout,
        vocab_size=args.vocab_size)
    check_config(config)
    return config


def _json_safe(value):
    """inf / nan -> strings, so the file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# The EngineArgs fields only --in-process uses (dsa.cli adds their flags); --model is shared with the HTTP target.
def _engine_fields_given(args: argparse.Namespace) -> list[str]:
    from dsa.engine.args import FLAGS, EngineArgs

    return [FLAGS[f][0] for f in EngineArgs.field_names() if f != "model" and getattr(args, f, None) is not None]


WARMUP_PROMPT, WARMUP_TOKENS = 16, 2  # the untimed first request of --in-process (first-call costs)


def _run_in_process(config: BenchServeConfig, args: argparse.Namespace) -> dict:
    """Build the engine from the engine flags, drive its core with an AsyncEngine, run the load generator on it."""
    import asyncio
    import dataclasses

    from dsa.bench.serve import HITS_COUNTER, QUERIES_COUNTER, build_dataset, prefix_cache_hit_rate, run_bench_serve
    from dsa.engine.args import EngineArgs
    from dsa.engine.async_engine import AsyncEngine
    from dsa.engine.sampling import SamplingParams
    from dsa.errors import InputError
    from dsa.planning.hardware import detect

    setup = EngineArgs.from_cli(args).resolve()  # --device None: EngineArgs' default (cpu)
    setup.plan.check_runnable(detect())
    if setup.plan.world_size > 1:
        raise InputError(f"--in-process runs on one device, but the layout needs {setup.plan.world_size} ranks; "
                         "pass --tp 1 --ep 1 --dp 1 (or serve several ranks with `dsa serve`)")
    vocab = setup.config.vocab_size
    if config.vocab_size > vocab:
        raise InputError(f"--vocab-size {config.vocab_size} is more than model {setup.source.name}'s vocab_size "
                         f"({vocab}); pass at most {vocab}")
    requests = build_dataset(config)
    need = max(len(p) + n for p, n in requests)
    if need > setup.max_seq_len:
        raise InputError(f"the longest request needs {need} tokens (prompt + output) but the engine's context is "
                         f"{setup.max_seq_len}; lower --random-input-len / --random-output-len / --prefix-len or "
                         "raise --max-seq-len")
    tokenizer = setup.tokenizer()
    engine = setup.make_engine(setup.build_model(), tokenizer.eos_token_ids)
    print(f"[dsa] in process: model {setup.source.name} on {setup.profile.name}, {engine.num_blocks} cache blocks "
          f"of {engine.page_size}, max_num_seqs {engine.scheduler.max_num_seqs}, max_num_batched_tokens "
          f"{engine.scheduler.max_num_batched_tokens}", file=sys.stderr, flush=True)

    def make_params(max_tokens: int) -> SamplingParams:
        return SamplingParams(temperature=0, max_new_tokens=max_tokens, ignore_eos=True)

    driver = AsyncEngine(engine.core).start()
    try:
        async def warm() -> None:
            ids = [2 + i % (vocab - 2) for i in range(min(WARMUP_PROMPT, setup.max_seq_len - WARMUP_TOKENS))]
            async for _ in driver.generate(ids, make_params(WARMUP_TOKENS), "bench-warmup"):
                pass

        asyncio.run(warm())
        blocks = engine.core.blocks
        queries, hits = blocks.queries, blocks.hits
        result = run_bench_serve(dataclasses.replace(config, model=setup.source.name), engine=driver,
                                 make_params=make_params)
        # the prefix cache's own counters (prompt tokens looked up / found), as a server's /metrics reports them
        result["prefix_cache_hit_rate"] = prefix_cache_hit_rate({QUERIES_COUNTER: queries, HITS_COUNTER: hits},
                                                                {QUERIES_COUNTER: blocks.queries,
                                                                 HITS_COUNTER: blocks.hits})
        return result
    finally:
        driver.shutdown(timeout=10.0)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    """Check the flags and --json, run the benchmark, print the table; 1 when no request completed."""
    from dsa.bench.command import _check_output
    from dsa.bench.serve import format_result, run_bench_serve
    from dsa.errors import InputError

    config = config_from_args(args)
    if args.json is not None:
        _check_output("--json", args.json)
    in_process = getattr(args, "in_process", False)
    if not in_process:
        given = _engine_fields_given(args)
        if given:
            raise InputError(f"{', '.join(given)}: engine options apply to --in-process only; against a server "
                             "pass them to `dsa serve` (or add --in-process)")
    result = _run_in_process(config, args) if in_process else run_bench_serve(config)
    print(format_result(result), end="")
    if not result["completed"]:
        print(f"error: dsa bench serve completed no request ({result['failed']} failed; first error: "
              f"{result['first_error']})", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.expanduser().write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False) + "\n")
    return 0
