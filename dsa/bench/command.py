"""`dsa bench` flags and entry: the command line of the benchmarks in this package (dsa.bench.run)."""
from __future__ import annotations

import argparse
import shlex
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


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (under 2 minutes on 2 cores)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every measurement as JSON")
    p.add_argument("--markdown", type=Path, metavar="FILE",
                   help="also write the Markdown report (e.g. bench/RESULTS.md)")
    p.add_argument("--sections", type=_names, help="comma-separated subset of ops,e2e,cache (default: all)")
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
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="end-to-end compute dtype, both engines (default fp32)")


def cmd_bench(args) -> int:
    from dsa.bench.run import SECTIONS, main_with, settings

    sections = tuple(args.sections) if args.sections else SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise InputError(f"--sections: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for path in (args.json, args.markdown):
        if path is not None and not path.expanduser().resolve().parent.is_dir():
            raise InputError(f"cannot write {path}: its directory does not exist")
    s = settings(args.quick, decode_contexts=args.decode_contexts, prefill_tokens=args.prefill_tokens,
                 prefill_rows=args.prefill_rows, reps=args.reps, e2e_contexts=args.e2e_contexts,
                 e2e_steps=args.e2e_steps, e2e_reps=args.e2e_reps, dtype=args.dtype, threads=args.threads,
                 e2e_threads=args.e2e_threads,
                 sections=sections, providers=args.providers, e2e_rss=args.e2e_rss)
    argv = getattr(args, "argv", None)  # set by dsa.cli.main
    command = "dsa " + shlex.join(argv) if argv else "dsa bench"
    return main_with(s, args.quick, args.json, args.markdown, command)
