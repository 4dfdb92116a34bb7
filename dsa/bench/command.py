"""`dsa bench` flags and entry: the command line of the benchmarks in this package (dsa.bench.run)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from dsa.errors import InputError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    v = _int_list(text)
    if len(v) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return v[0]


def _gib(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of GiB > 0, got {text!r}")
    return v


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (1-3 minutes on 2 cores)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every measurement as JSON")
    p.add_argument("--markdown", type=Path, metavar="FILE",
                   help="also write the Markdown report (e.g. bench/RESULTS.md)")
    p.add_argument("--sections", type=_names,
                   help="comma-separated subset of ops,e2e,cache,serving,onnx (default: all)")
    p.add_argument("--threads", type=_positive, help="torch.set_num_threads for every section (default: all cores)")
    p.add_argument("--reps", type=_positive, help="interleaved repetitions per op case")
    p.add_argument("--decode-contexts", type=_int_list, metavar="S,..", help="op decode context lengths")
    p.add_argument("--prefill-tokens", type=_int_list, metavar="T,..", help="op prefill lengths")
    p.add_argument("--prefill-rows", type=_positive, metavar="R", help="query rows timed per prefill case")
    p.add_argument("--providers", type=_names, help="op providers to benchmark (default: every usable one)")
    p.add_argument("--e2e-contexts", type=_int_list, metavar="C,..", help="end-to-end prompt lengths")
    p.add_argument("--e2e-steps", type=_positive, metavar="N", help="decode steps per end-to-end run")
    p.add_argument("--e2e-reps", type=_positive, help="interleaved repetitions per end-to-end context")
    p.add_argument("--e2e-threads", type=_positive, help="threads of both engines end to end (default: --threads); "
                   "1 keeps a shared machine's other load from stalling multi-threaded small ops")
    p.add_argument("--no-rss", dest="e2e_rss", action="store_false", default=None,
                   help="skip the per-engine peak-RSS subprocesses")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="end-to-end and serving compute dtype, both engines "
                   "(default fp32)")
    g = p.add_argument_group("serving section (ours vs transformers' static batches; chunked prefill)")
    g.add_argument("--serving-prompt-len", type=_positive, metavar="L", help="prompt tokens of the first points "
                   "(default 256; --quick 64)")
    g.add_argument("--serving-concurrency", type=_int_list, metavar="N,..",
                   help="prompts in flight at --serving-prompt-len (default 1,4,16,64; --quick 1,4)")
    g.add_argument("--serving-long-prompt-len", type=_positive, metavar="L",
                   help="prompt tokens of the long points (default 4096; --quick 512)")
    g.add_argument("--serving-long-concurrency", type=_int_list, metavar="N,..",
                   help="prompts in flight at --serving-long-prompt-len (default 1,4,16; --quick 1,2)")
    g.add_argument("--serving-output-len", type=_positive, metavar="N",
                   help="output tokens per prompt (default 32; --quick 8)")
    g.add_argument("--serving-reps", type=_positive, metavar="N",
                   help="interleaved repetitions per point (default 3; --quick 2)")
    g.add_argument("--serving-threads", type=_positive, metavar="N",
                   help="threads of both engines (default: --threads)")
    g.add_argument("--serving-batched-tokens", type=_positive, metavar="N",
                   help="our --max-num-batched-tokens at the throughput points (default 2048, the engine's)")
    g.add_argument("--serving-prefill-len", type=_positive, metavar="L",
                   help="chunked-prefill row: the long prompt (default 8192; --quick 1024)")
    g.add_argument("--serving-prefill-decodes", type=_positive, metavar="N",
                   help="chunked-prefill row: requests decoding meanwhile (default 16; --quick 4)")
    g.add_argument("--serving-chunk-tokens", type=_positive, metavar="N",
                   help="chunked-prefill row: our --max-num-batched-tokens, more than the decodes (default 512; "
                        "--quick 128)")
    g.add_argument("--serving-hf-memory", type=_gib, metavar="GIB",
                   help="transformers: GiB its indexer may broadcast keys into per static batch (batch x L x "
                        "index_head_dim x L fp32 when the batch holds more than one sequence); a larger batch runs "
                        "as consecutive smaller ones (default 2: at 4096-token prompts one sequence per call, "
                        "transformers' fastest mode here)")


def _check_output(flag: str, path: Path) -> None:
    """--json / --markdown: a file that can be written, checked before anything is measured."""
    full = path.expanduser()
    if full.is_dir():
        raise InputError(f"cannot write {flag} {path}: it is a directory; give a file name")
    parent = full.resolve().parent
    if not parent.is_dir():
        raise InputError(f"cannot write {flag} {path}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (full.exists() and not os.access(full, os.W_OK)):
        raise InputError(f"cannot write {flag} {path}: not writable")


def _check_providers(names: list[str], sections: tuple[str, ...]) -> None:
    """--providers: known names, and at least one of them usable here when the op section runs."""
    from dsa.bench.ops import provider_status
    from dsa.hal import registry

    if not names:
        raise InputError("--providers: give at least one provider name")
    registry.load_backends()
    known = set(registry.KNOWN_PROVIDERS) | {n for op in registry.OPS for n in registry.providers(op)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"--providers: unknown provider(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "ops" not in sections:
        return
    import torch

    status = {s["provider"]: s for s in provider_status(torch.device("cuda" if torch.cuda.is_available() else "cpu"))}
    if not any(status.get(n, {}).get("usable") for n in names):
        why = "; ".join(f"{n}: {status.get(n, {}).get('reason') or 'not registered for these ops'}" for n in names)
        raise InputError(f"--providers: none of {', '.join(names)} can run the op benchmark here ({why})")


def _measured(result: dict) -> list[str]:
    """The sections that measured something."""
    done = []
    if result.get("ops", {}).get("decode") or result.get("ops", {}).get("prefill"):
        done.append("ops")
    if result.get("e2e", {}).get("rows"):
        done.append("e2e")
    if result.get("cache", {}).get("rows"):
        done.append("cache")
    if result.get("serving", {}).get("rows") or result.get("serving", {}).get("chunked"):
        done.append("serving")
    if result.get("onnx", {}).get("rows"):
        done.append("onnx")
    return done


PLOT_NAME = "serving.png"  # the serving section's plot, next to --markdown


def _write_plot(result: dict, markdown: Path) -> None:
    """The serving section's output tok/s vs concurrency as PNG beside the Markdown; the report links it by name
    (or says why there is none: matplotlib is the `bench` extra)."""
    from dsa.bench.serve import plot_throughput
    from dsa.bench.serving import plot_rows

    sv = result.get("serving")
    rows = plot_rows(sv or {})
    if not rows:
        return
    try:
        plot_throughput(rows, markdown.expanduser().resolve().parent / PLOT_NAME,
                        title="dsa bench, serving section: output tok/s vs concurrency (tiny checkpoint)")
    except ImportError:
        sv["plot_error"] = "matplotlib is not installed (pip install 'dsa-runtime[bench]')"
        return
    sv["plot"] = PLOT_NAME


SERVING_FLAGS = ("serving_prompt_len", "serving_concurrency", "serving_long_prompt_len", "serving_long_concurrency",
                 "serving_output_len", "serving_reps", "serving_threads", "serving_batched_tokens",
                 "serving_prefill_len", "serving_prefill_decodes", "serving_chunk_tokens", "serving_hf_memory")


def cmd_bench(args) -> int:
    import json

    from dsa.bench.run import SECTIONS, clean, render, run, settings

    sections = tuple(args.sections) if args.sections else SECTIONS
    if args.sections is not None and not sections:
        raise InputError(f"--sections: give at least one of {', '.join(SECTIONS)}")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise InputError(f"--sections: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None:
            _check_output(flag, path)
    if args.json is not None and args.markdown is not None and \
            args.json.expanduser().resolve() == args.markdown.expanduser().resolve():
        raise InputError(f"--json and --markdown are the same file ({args.json}); give two names")
    if args.markdown is not None and "serving" in sections:
        png = args.markdown.expanduser().resolve().parent / PLOT_NAME
        if png.is_dir() or (png.exists() and not os.access(png, os.W_OK)):
            raise InputError(f"cannot write the serving plot {png} next to --markdown: a directory or not writable")
    if args.providers is not None:
        _check_providers(args.providers, sections)
    if sections == ("e2e",):
        from dsa.bench.e2e import transformers_missing

        reason = transformers_missing()
        if reason:
            raise InputError(f"--sections e2e: {reason}; nothing would be measured")
    s = settings(args.quick, decode_contexts=args.decode_contexts, prefill_tokens=args.prefill_tokens,
                 prefill_rows=args.prefill_rows, reps=args.reps, e2e_contexts=args.e2e_contexts,
                 e2e_steps=args.e2e_steps, e2e_reps=args.e2e_reps, dtype=args.dtype, threads=args.threads,
                 e2e_threads=args.e2e_threads,
                 sections=sections, providers=args.providers, e2e_rss=args.e2e_rss,
                 **{name: getattr(args, name, None) for name in SERVING_FLAGS})
    if "serving" in sections and s.serving_chunk_tokens <= s.serving_prefill_decodes:
        raise InputError(f"--serving-chunk-tokens ({s.serving_chunk_tokens}) must be more than "
                         f"--serving-prefill-decodes ({s.serving_prefill_decodes}): each step runs every decode's "
                         "token first, and the long prompt needs the rest of the budget")
    argv = getattr(args, "argv", None)  # set by dsa.cli.main
    command = "dsa " + shlex.join(argv) if argv else "dsa bench"
    result = run(s, quick=args.quick, command=command)
    if args.markdown is not None:
        _write_plot(result, args.markdown)
    text = render(result)
    print(text, end="")
    if not _measured(result):  # every section skipped or empty: not a success, and no report of nothing
        print(f"error: dsa bench measured nothing (sections {', '.join(sections)} were all skipped or empty; "
              "see the report above for why)", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.expanduser().write_text(json.dumps(clean(result), indent=1, allow_nan=False) + "\n")
    if args.markdown is not None:
        args.markdown.expanduser().write_text(text)
    return 0
