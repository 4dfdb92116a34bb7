"""`dsa`: run | serve | plan | devices | make-checkpoint | conformance | bench. A thin layer: the flags become an
EngineArgs (dsa.engine.args), which resolves the profile, model and plan and builds the engine.

Exit status: 0 ok, 1 a failure (a conformance case failed, a bench measured nothing), 2 a usage or input
error (`DsaError`: one line `error: ...` on stderr, no traceback), 130 interrupted. Several ranks: only
rank 0 (RANK, set by torchrun and `--nproc`) prints the error line (dsa.dist.launch passes the others' on).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from dsa.errors import DsaError, InputError

DEFAULT_PROMPT = "def read_config(path):\n    \"\"\""  # the built-in model writes Python (its corpus: the stdlib)
# reads of a prompt file / stdin stop at what the context can hold: a generous 16 bytes per token, plus slack
BYTES_PER_TOKEN, READ_SLACK = 16, 4096
# a rank other than 0 of a `--nproc` launch writes its error line to this file (the parent prints it if needed)
ERROR_FILE_ENV = "DSA_RANK_ERROR_FILE"


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with a one-line message like every other user error."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


# How each EngineArgs field is given on the command line (the flag names themselves: dsa.engine.args.FLAGS).
_ENGINE_FLAG_OPTIONS = {
    "model": dict(help="checkpoint dir, config.json, or built-in model name (default: mini, the trained one)"),
    "device": dict(required=True, help="device profile name (see `dsa devices`) or a .yaml path"),
    "dtype": dict(help="compute dtype (default: the profile's)"),
    "kv_cache_dtype": dict(help="latent cache format (default: the profile's)"),
    "weights": dict(help="fp8 keeps a checkpoint's fp8 weights, bf16 dequantises them (default: the profile's)"),
    "indexer_fp8": dict(action=argparse.BooleanOptionalAction, default=None,
                        help="round the indexer's q / k to fp8 as the release does (default: on)"),
    "max_seq_len": dict(type=int, metavar="N", help="context limit (default: the model's max_position_embeddings)"),
    "page_size": dict(type=int, metavar="N", help="KV-cache tokens per page (default: the profile's)"),
    "weights_seed": dict(type=int, metavar="S", help="seed of the random weights of config-only models (default 0)"),
    "tp": dict(type=int, metavar="N", help="tensor-parallel degree (default: the profile's)"),
    "ep": dict(type=int, metavar="N", help="expert-parallel degree (default: the profile's)"),
    "dp_attention": dict(type=int, metavar="N", help="DP-attention degree (default: the profile's)"),
    "nodes": dict(type=int, metavar="N", help="number of nodes (default: the profile's)"),
    "max_num_seqs": dict(type=int, metavar="N", help="requests scheduled in one step at most (default 256)"),
    "max_num_batched_tokens": dict(type=int, metavar="N",
                                   help="tokens computed in one step at most; longer prompts are chunked "
                                   "(default 2048)"),
    "enable_prefix_caching": dict(action=argparse.BooleanOptionalAction, default=None,
                                  help="reuse the cache blocks of shared prompt prefixes (default: on)"),
    "enable_chunked_prefill": dict(action=argparse.BooleanOptionalAction, default=None,
                                   help="split long prompts over steps so decodes keep running (default: on)"),
    "num_blocks": dict(type=int, metavar="N", help="KV-cache blocks (of --page-size tokens) per DP group "
                       "(default: from --kv-cache-memory or the plan)"),
    "kv_cache_memory": dict(type=float, metavar="GIB", help="GiB for the KV + index cache per DP group (default: "
                            "what the plan leaves after weights; on a CPU host at most 1)"),
    "enforce_eager": dict(action="store_true", default=None,
                          help="never capture decode steps in CUDA graphs (default: capture on CUDA when every "
                          "chosen provider is capturable)"),
}
PLAN_FIELDS = ("model", "device", "dtype", "kv_cache_dtype", "weights", "page_size", "tp", "ep", "dp_attention",
               "nodes")


def _add_engine_flags(p: argparse.ArgumentParser, names=tuple(_ENGINE_FLAG_OPTIONS)) -> None:
    """One flag (with its vLLM-style aliases) per EngineArgs field; each sets the attribute of the field's name.
    Named values (dtype, kv_cache_dtype, weights) offer EngineArgs' own choices."""
    from dsa.engine.args import CHOICES, FLAGS

    for name in names:
        choices = {"choices": CHOICES[name]} if name in CHOICES else {}
        p.add_argument(*FLAGS[name], dest=name, **choices, **_ENGINE_FLAG_OPTIONS[name])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsa", description="DeepSeek-V3.2 (sparse attention) on any hardware")
    parser.add_argument("-v", "--verbose", action="store_true", help="log provider choices and fallbacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="generate text")
    _add_engine_flags(run, tuple(n for n in _ENGINE_FLAG_OPTIONS if n != "device"))
    run.add_argument("--device", help="device profile name (see `dsa devices`) or a .yaml path (required, except "
                     "with --onnx)")
    run.add_argument("--onnx", type=Path, metavar="DIR", help="generate with an ONNX export (`dsa export onnx`) on "
                     "onnxruntime's CPU provider instead of the torch graph")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--prompt", help=f"prompt text (default: {DEFAULT_PROMPT!r})")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from a UTF-8 file")
    src.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line")
    run.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate at most (default 200)")
    run.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6)")
    run.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    run.add_argument("--seed", type=int, help="sampling seed (default: random)")
    fmt = run.add_mutually_exclusive_group()
    fmt.add_argument("--chat", dest="chat", action="store_const", const=True, default=None,
                     help="format the prompt with the checkpoint's chat template (the default when it has one)")
    fmt.add_argument("--raw", dest="chat", action="store_const", const=False, help="send the prompt text as is")
    run.add_argument("--nproc", type=int, help="start this many local processes (one per rank of the layout); "
                     "multi-node: launch with torchrun instead (README, Multi-device and multi-node)")

    from dsa.server.command import add_arguments as add_serve_arguments

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, /metrics)")
    _add_engine_flags(serve)
    add_serve_arguments(serve)

    plan = sub.add_parser("plan", help="memory per device and the smallest layout that fits; providers per op")
    _add_engine_flags(plan, PLAN_FIELDS)
    plan.add_argument("--context", type=int, help="tokens per sequence to hold (default: max_position_embeddings)")
    plan.add_argument("--batch", type=int, help="sequences per DP-attention group to hold (default 1)")
    plan.epilog = ("Without --tp/--ep/--dp: searches 1..--nodes (default 4) nodes for the smallest layout that fits "
                   "and shows it next to the profile's default. With any of them: evaluates exactly that layout.")

    sub.add_parser("devices", help="list the device profiles and which one matches this machine")

    from dsa.onnx.command import EXPORT_FIELDS

    export = sub.add_parser("export", help="export the model to another format: `dsa export onnx`")
    export_sub = export.add_subparsers(dest="export_format", required=True, parser_class=_Parser, metavar="onnx")
    onnx = export_sub.add_parser("onnx", help="the DSA graph as ONNX in standard ops (sparse attention kept), for "
                                 "onnxruntime and other ONNX runtimes; run it with `dsa run --onnx DIR`")
    onnx.add_argument("--out", required=True, type=Path, help="directory to write (model.onnx, its external data, "
                      "the tokenizer files, onnx.json)")
    onnx.add_argument("--device", default="cpu", help="device profile the model is built with (default cpu)")
    onnx.add_argument("--opset", type=int, default=21, help="ONNX opset, 19-23 (default 21)")
    onnx.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    _add_engine_flags(onnx, EXPORT_FIELDS)

    mk = sub.add_parser("make-checkpoint", help="write seeded random weights in the HF checkpoint layout")
    mk.add_argument("--config", required=True, help="config.json, checkpoint dir, or built-in model name (e.g. tiny)")
    mk.add_argument("--out", required=True, type=Path, help="directory to create")
    mk.add_argument("--fp8", action="store_true", help="fp8 e4m3 linear weights with 128x128 block scales")
    mk.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    mk.add_argument("--shards", type=int, default=3, help="number of safetensors shards (default 3)")
    mk.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")

    conf = sub.add_parser("conformance", help="check providers against the fp64 oracle; write report.json / report.md")
    conf.add_argument("--device",
                      help="check the providers this profile lists (default: every provider installed here)")
    conf.add_argument("--provider", nargs="+", action="extend", default=[], metavar="NAME",
                      help="check only these providers (repeatable)")
    conf.add_argument("--report", type=Path, default=Path("conformance-report"),
                      help="directory for report.json and report.md (default: ./conformance-report)")
    conf.add_argument("-k", dest="keyword", metavar="EXPR",
                      help="only the test cases matching this pytest -k expression")
    conf.add_argument("--no-model", dest="model", action="store_false", help="skip the tiny-model rows")

    from dsa.bench.command import add_arguments as add_bench_arguments
    from dsa.train.command import add_arguments as add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train the built-in model from scratch (the DSA recipe on "
                                                     "the Python standard library; CPU, under an hour)"))
    from dsa.train.eval_command import add_arguments as add_eval_arguments

    add_eval_arguments(sub.add_parser("eval", help="quality of sparse vs dense attention on held-out code: perplexity, "
                                                   "retrieval beyond top-k, indexer recall, greedy agreement"))

    from dsa.bench.serve_command import add_arguments as add_bench_serve_arguments

    bench = sub.add_parser("bench", help="measure speed and memory: sparse vs dense ops, ours vs transformers end to "
                                         "end and serving, cache bytes (Markdown, --json); `dsa bench serve`: a "
                                         "serving load test")
    bench.epilog = ("`dsa bench` alone runs the sections; `dsa bench serve [flags]` is the serving benchmark of a "
                    "running `dsa serve` (or --in-process: an engine built here), see `dsa bench serve --help`.")
    add_bench_arguments(bench)
    bench_sub = bench.add_subparsers(dest="bench_command", required=False, parser_class=_Parser, metavar="serve",
                                     title="subcommand (optional)",
                                     help="`dsa bench serve ...` runs the serving load test instead of the sections")
    bench_serve = bench_sub.add_parser(
        "serve", help="load test: Poisson arrivals of streamed requests against a server (or --in-process), TTFT / "
                      "TPOT / ITL / throughput",
        description="The serving benchmark: requests of random token ids, streamed, against a running `dsa serve` "
                    "(--base-url) or, with --in-process, an engine built here from the engine options below (no "
                    "server).")
    add_bench_serve_arguments(bench_serve)
    engine_group = bench_serve.add_argument_group("engine options (only with --in-process; `dsa serve` takes them "
                                                  "for a server)")
    _add_engine_flags(engine_group, tuple(n for n in _ENGINE_FLAG_OPTIONS if n not in ("model", "device")))
    return parser


def cmd_plan(args) -> int:
    from dsa.engine.args import EngineArgs
    from dsa.io.model_source import resolve_model
    from dsa.planning.plan import plan_report

    engine_args = EngineArgs.from_cli(args)
    source = resolve_model(engine_args.model)
    text = plan_report(engine_args.load_profile(), source.config, **engine_args.layout_overrides,
                       kv_cache_dtype=engine_args.kv_cache_dtype, weights=engine_args.weights,
                       context=args.context, batch=args.batch)
    print(f"model: {source.name}")
    print(text)
    return 0


def cmd_devices(args) -> int:
    from dsa.planning.device_profile import list_profiles, load_profile
    from dsa.planning.hardware import detect, matching_profiles

    hw = detect()
    names = list_profiles()
    profiles = [load_profile(n) for n in names]
    matches = set(matching_profiles(hw, profiles))
    print(f"this machine: {hw.platform}/{hw.arch} {hw.name} x{hw.device_count}")
    rows = [("profile", "platform/arch", "memory", "devices", "description", "")]
    for p in profiles:
        rows.append((p.name, f"{p.platform}/{p.arch}", f"{p.memory_gb:g} GB", f"{p.devices_per_node}",
                     p.description, "<- matches this machine" if p.name in matches else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + ("  " + r[5] if r[5] else ""))
    return 0


def printable(text: str) -> str:
    """Shield the terminal from control characters (random weights emit arbitrary bytes)."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


def read_limit(max_seq_len: int) -> int:
    """The most bytes of prompt text read from a file or one stdin line for a context of max_seq_len tokens."""
    return max_seq_len * BYTES_PER_TOKEN + READ_SLACK


def _read_prompt(args, max_seq_len: int) -> str:
    if args.prompt_file is None:
        return DEFAULT_PROMPT if args.prompt is None else args.prompt
    path, limit = args.prompt_file, read_limit(max_seq_len)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # never more: /dev/zero or a huge file must not fill the memory
    except FileNotFoundError:
        raise InputError(f"--prompt-file {path} not found") from None
    except OSError as err:
        raise InputError(f"--prompt-file {path}: cannot read it: {err.strerror or err}") from None
    if len(data) > limit:
        raise InputError(f"--prompt-file {path} is larger than the context can hold ({len(data)} bytes read, at most "
                         f"{limit} for {max_seq_len} tokens); shorten it (or raise --max-seq-len)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"--prompt-file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


class LineTooLong(InputError):
    """An --interactive line longer than the context can hold."""


def read_line(stream, limit: int) -> Optional[str]:
    """One line of at most `limit` characters (without its newline), None at the end of the stream. A longer
    line is LineTooLong, raised with only limit + 1 characters read: the caller reports it, then calls
    skip_line. Undecodable input is EOFError (the session cannot go on)."""
    try:
        line = stream.readline(limit + 1)
    except UnicodeDecodeError as err:
        raise EOFError(f"stdin is not UTF-8 text ({err.reason})") from None
    if not line:
        return None
    if line.endswith("\n") or len(line) <= limit:
        return line.removesuffix("\n")
    raise LineTooLong(f"the line is longer than the context can hold (more than {limit} characters); it is skipped")


def skip_line(stream) -> None:
    """Discard the rest of the current line in bounded chunks (an endless line: until interrupted)."""
    try:
        while True:
            chunk = stream.readline(1 << 16)
            if not chunk or chunk.endswith("\n"):
                return
    except UnicodeDecodeError:
        return


def cmd_run(args) -> int:
    from dsa.dist import launch
    from dsa.engine.args import EngineArgs
    from dsa.engine.sampling import SamplingParams
    from dsa.io.model_source import prompt_ids
    from dsa.planning.hardware import detect

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                            seed=args.seed)  # validate before any heavy work
    if args.onnx is not None:
        return _run_onnx(args, params)
    if args.device is None:
        raise InputError("dsa run needs --device: a profile name (see `dsa devices`) or a .yaml path (e.g. "
                         "--device cpu)")
    setup = EngineArgs.from_cli(args).resolve()
    prompt = None if args.interactive else _read_prompt(args, setup.max_seq_len)
    source, plan = setup.source, setup.plan
    plan.check_runnable(detect())
    # layout vs model and vs the launched processes: checked before any weight is read
    launch.check_launch(plan, args.nproc, fp8_weights=plan.weights == "fp8" and not source.random_weights)
    tokenizer = setup.tokenizer()
    chat = tokenizer.chat_template is not None if args.chat is None else args.chat
    if chat and tokenizer.chat_template is None:
        raise InputError(f"--chat: model {source.name} has no chat template (tokenizer_config.json); use --raw")
    if prompt is not None:
        setup.check_prompt(len(prompt_ids(tokenizer, prompt, chat)))  # before any heavy work
    if launch.must_spawn(plan, args.nproc):  # this process only starts and waits for the ranks
        return launch.spawn_local(args.nproc, args.argv)
    groups = launch.init(plan)  # None: one process
    try:
        return _serve(args, setup, tokenizer, chat, prompt, params, groups)
    finally:
        launch.shutdown(groups)


def _run_onnx(args, params) -> int:
    from dsa.onnx.command import check_run_flags, run_onnx
    from dsa.onnx.runner import read_meta

    check_run_flags(args)
    meta = read_meta(args.onnx)  # not an export: one error line
    prompt = _read_prompt(args, meta["max_seq_len"])

    def write(text: str) -> None:
        sys.stdout.write(printable(text))
        sys.stdout.flush()

    return run_onnx(args.onnx.expanduser(), prompt, params, write)


def _serve(args, setup, tokenizer, chat, prompt, params, groups) -> int:
    """Build, then answer the prompt(s). Several ranks: only rank 0 prints and reads stdin; DP group 0
    serves the prompts while the other DP groups run dummy forwards in step (dsa.dist.lockstep)."""
    import dataclasses

    from dsa.dist import launch
    from dsa.dist.lockstep import Lockstep
    from dsa.io.model_source import prompt_ids
    from dsa.io.tokenizer import clean_text

    source, plan = setup.source, setup.plan
    rank0 = groups is None or groups.rank == 0
    serving = groups is None or groups.dp_rank == 0
    params = dataclasses.replace(params, seed=launch.shared_seed(params.seed, groups))
    model = setup.build_model(groups)
    step = Lockstep(model, groups, plan.page_size) if groups and groups.dp_attention > 1 else model
    engine = setup.make_engine(step, tokenizer.eos_token_ids)
    if rank0:
        lay = plan.layout
        ranks = f" over {plan.world_size} ranks (tp {lay.tp}, dp {lay.dp_attention}, ep {lay.ep})" if groups else ""
        print(f"[dsa] model {source.name} ({'random weights' if source.random_weights else 'checkpoint'}) on "
              f"{setup.profile.name}{ranks}: " + ", ".join(f"{op}={p}" for op, p in plan.providers().items()),
              file=sys.stderr, flush=True)
    out = sys.stdout if rank0 else None

    def write(text: str) -> None:
        if out is not None:
            out.write(printable(text))
            out.flush()

    def answer(text: str) -> None:
        ids = prompt_ids(tokenizer, text, chat)
        engine.check_prompt(len(ids))  # before echoing anything
        stream = tokenizer.stream_decoder()
        if serving:
            if not chat:  # raw text: print the continuation after the prompt; chat: only the reply
                write(clean_text(text))
            for token in engine.generate(ids, params):
                write(stream.push(token))
            write(stream.flush() + "\n")
            if rank0:
                print(f"[{engine.last_stats.summary()}]", flush=True)
        if step is not model:
            step.drain()  # in step with the DP groups still generating

    if not args.interactive:
        answer(prompt)
        return 0
    limit = read_limit(engine.max_seq_len)
    while True:
        line, problem = None, None
        if rank0:
            try:
                line = read_line(sys.stdin, limit)
            except LineTooLong as err:  # refused, the session goes on
                line = ""
                print(f"error: {one_line(str(err))}", file=sys.stderr, flush=True)
                skip_line(sys.stdin)
            except EOFError as err:  # undecodable stdin: the session ends with a user error
                line, problem = None, str(err)
        line = launch.broadcast(line, groups)
        if line is None:
            if problem is not None and rank0:
                raise InputError(problem)
            break
        if line.strip() in ("exit", "quit"):
            break
        if line.strip():
            try:
                answer(line)
            except InputError as err:  # a bad prompt must not end the session
                if rank0:
                    print(f"error: {one_line(str(err))}", file=sys.stderr, flush=True)
    return 0


def cmd_make_checkpoint(args) -> int:
    from dsa.io.checkpoint_writer import INDEX_FILE, write_checkpoint

    out = write_checkpoint(args.config, args.out, fp8=args.fp8, seed=args.seed, num_shards=args.shards,
                           overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out}: {args.shards} shard(s) + {INDEX_FILE}, {size / 2**20:.1f} MiB of "
          f"{'fp8' if args.fp8 else 'bf16'} weights (seed {args.seed}), tokenizer and chat template")
    return 0


def cmd_conformance(args) -> int:
    """Exit 0 = every case passed or was skipped with a reason; 1 = a conformance failure."""
    import shlex

    from dsa.conformance.runner import run_conformance, summary

    words = ["dsa", "conformance", *(["--device", args.device] if args.device else []),
             *(["--provider", *args.provider] if args.provider else []), "--report", str(args.report),
             *(["-k", args.keyword] if args.keyword else []), *([] if args.model else ["--no-model"])]
    report = run_conformance(args.provider, args.device, args.report, keyword=args.keyword, model=args.model,
                             command=shlex.join(words))
    print(summary(report))
    print(f"report: {args.report / 'report.md'} and report.json")
    return 1 if report["result"] == "fail" else 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "devices": cmd_devices, "make-checkpoint": cmd_make_checkpoint,
            "conformance": cmd_conformance}


def cmd_bench(args) -> int:
    if getattr(args, "bench_command", None) == "serve":
        from dsa.bench.serve_command import cmd_bench_serve

        words = list(getattr(args, "argv", None) or [])
        at = words.index("bench") if "bench" in words else -1
        if 0 <= at < len(words) - 1 and words[at + 1] != "serve":  # `dsa bench --quick serve`: flags of the wrong one
            raise InputError(f"`dsa bench serve` takes its own flags after `serve`; {words[at + 1]} before it is a "
                             "flag of the `dsa bench` sections")
        return cmd_bench_serve(args)
    from dsa.bench.command import cmd_bench as bench

    return bench(args)


COMMANDS["bench"] = cmd_bench


def cmd_train(args) -> int:
    from dsa.train.command import cmd_train as train

    return train(args)


COMMANDS["train"] = cmd_train


def cmd_eval(args) -> int:
    from dsa.train.eval_command import cmd_eval as evaluate

    return evaluate(args)


COMMANDS["eval"] = cmd_eval


def cmd_serve(args) -> int:
    from dsa.server.command import cmd_serve as serve

    return serve(args)


COMMANDS["serve"] = cmd_serve


def cmd_export(args) -> int:
    from dsa.onnx.command import cmd_export as export

    return export(args)


COMMANDS["export"] = cmd_export


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage error (2) or --help (0): already printed
        return int(exit_.code or 0)
    except KeyboardInterrupt:  # while torch is imported
        _say("interrupted")
        return 130
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `dsa run --nproc` passes it on to the ranks
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[dsa] %(message)s")
    try:
        return COMMANDS[args.command](args)
    except DsaError as err:
        _say(f"error: {one_line(str(err))}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        return 0


def one_line(message: str) -> str:
    """A message as one terminal line: control and line-break characters (a name the user typed can hold
    any) shown escaped, so that an error is always exactly one `error:` line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _say(line: str) -> None:
    """The final error line: on stderr from rank 0 (or a single process) only. Another rank of a `--nproc`
    launch leaves it in its error file, for the parent to print should rank 0 not speak."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(line, file=sys.stderr, flush=True)
        return
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
