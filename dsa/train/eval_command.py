"""`dsa eval`: quality of DeepSeek Sparse Attention against dense attention on one trained checkpoint - the
measurements of dsa.train.eval at contexts of 1x, 4x, 8x and 16x the model's top-k, the training report's
numbers next to them, a Markdown report with the issue's targets (measured, not asserted), a JSON and two PNG
plots (next to --markdown).

    dsa eval [--model DIR] [--contexts N ...] [--windows N] [--retrieval-cases N] [--json F] [--markdown F]
             [--train-report F] [--threads N] [--quick]

Exit status: 0 something was measured, 1 nothing was (every count 0 or every context skipped), 2 a bad flag.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any, Optional

from dsa.errors import InputError

CONTEXT_MULTIPLES = (1, 4, 8, 16)  # x top-k: the default contexts
TARGET_MULTIPLES = (8, 16)  # the targets are at 8x and 16x top-k
PPL_TARGET_PCT, RETRIEVAL_TARGET_POINTS, RECALL_TARGET = 2.0, 2.0, 0.9
COPY_CASES_PER = 4  # the copy probe runs retrieval cases / 4 spans (each scores ~64 tokens, not one)
PLOTS = ("eval_perplexity.png", "eval_recall.png")  # next to --markdown
# (full run, --quick): windows, retrieval cases, candidates, prompts, new tokens, recall windows, held-out files
SIZES = {"windows": (64, 2), "retrieval_cases": (200, 4), "candidates": (10, 4), "prompts": (32, 2),
         "new_tokens": (32, 8), "recall_windows": (8, 1), "heldout_files": (None, 3)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="trained checkpoint directory (default: the built-in model)")
    p.add_argument("--contexts", type=int, nargs="+", metavar="N",
                   help="contexts in tokens (default: 1, 4, 8 and 16 x the model's index_topk, at most its context)")
    p.add_argument("--windows", type=int, metavar="N", help="held-out windows per context for the perplexity (64)")
    p.add_argument("--retrieval-cases", type=int, metavar="N", help="passkey cases per context (200)")
    p.add_argument("--candidates", type=int, metavar="N", help="passkey values to choose from; chance = 1/N (10)")
    p.add_argument("--prompts", type=int, metavar="N", help="held-out prompts per context for greedy agreement (32)")
    p.add_argument("--new-tokens", type=int, metavar="N", help="greedy tokens per prompt (32)")
    p.add_argument("--recall-windows", type=int, metavar="N", help="held-out windows per context for the recall (8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the passkey cases (default 0)")
    p.add_argument("--train-report", type=Path, metavar="FILE", help="the training's train.json (the recipe's numbers)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every measurement as JSON")
    p.add_argument("--markdown", type=Path, metavar="FILE", help=f"write the report here, and {' / '.join(PLOTS)} "
                   "next to it")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="two contexts (1x and 8x top-k), a few windows / cases: a "
                   "smoke run")


# ---- flags ---------------------------------------------------------------------------------------------
def _sizes(args) -> dict[str, Optional[int]]:
    """Each count from its flag, else the full run's or --quick's default; InputError for a negative one."""
    out = {}
    for name, defaults in SIZES.items():
        value = getattr(args, name, None)
        value = defaults[1 if args.quick else 0] if value is None else value
        if value is not None and value < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        out[name] = value
    if out["candidates"] < 2:
        raise InputError(f"--candidates must be >= 2 (the answer and a distractor), got {out['candidates']}")
    if out["new_tokens"] < 1:
        raise InputError(f"--new-tokens must be >= 1, got {out['new_tokens']}")
    return out


def _contexts(args, topk: int, limit: int) -> list[int]:
    """--contexts (each in [2, the model's context]), else the default multiples of top-k that fit."""
    if args.contexts is None:
        multiples = (1, 8) if args.quick else CONTEXT_MULTIPLES
        return sorted({min(m * topk, limit) for m in multiples})
    bad = [c for c in args.contexts if not 2 <= c <= limit]
    if bad:
        raise InputError(f"--contexts: {bad[0]} is outside [2, {limit}] (the model's max_position_embeddings)")
    return sorted(set(args.contexts))


def _check_output(flag: str, path: Optional[Path]) -> None:
    """A file that can be written, checked before anything is measured."""
    if path is None:
        return
    full = path.expanduser()
    parent = full.resolve().parent
    if full.is_dir():
        raise InputError(f"cannot write {flag} {path}: it is a directory; give a file name")
    if not parent.is_dir():
        raise InputError(f"cannot write {flag} {path}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (full.exists() and not os.access(full, os.W_OK)):
        raise InputError(f"cannot write {flag} {path}: not writable")


def read_train_report(path: Optional[Path]) -> Optional[dict]:
    """The recipe's numbers from train.json: per stage end (after_dense / after_warmup / after_sparse) the held-out
    loss dense / sparse and the recall, and the run's duration. InputError for a missing or foreign file."""
    if path is None:
        return None
    try:
        raw = json.loads(path.expanduser().read_text())
        stages = {name: {k: raw["eval"][name][k] for k in ("dense_loss", "sparse_loss", "recall", "recall_per_layer")}
                  for name in ("after_dense", "after_warmup", "after_sparse")}
    except FileNotFoundError:
        raise InputError(f"--train-report {path} not found") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"--train-report {path} is not a `dsa train` report (train.json): {err!r}") from None
    return {"path": str(path), "eval": stages, "seconds_total": raw.get("seconds_total"),
            "eval_windows": raw.get("recipe", {}).get("eval_windows"), "command": raw.get("command")}


# ---- the run -------------------------------------------------------------------------------------------
def measure(args, sizes: dict, log) -> dict:
    """Every measurement at every context, as one JSON-able dict."""
    import torch

    from dsa.train import eval as ev

    pair = ev.load_pair(args.model, sequences=max(1, sizes["prompts"]))
    contexts = _contexts(args, pair.topk, pair.max_context)  # checked before loading too (cmd_eval)
    t0 = time.perf_counter()
    held = ev.heldout(pair.tokenizer_json, sizes["heldout_files"])
    result: dict[str, Any] = {
        "model": pair.source.name, "checkpoint": str(pair.source.checkpoint_dir), "index_topk": pair.topk,
        "max_position_embeddings": pair.max_context, "contexts": contexts, "sizes": sizes, "seed": args.seed,
        "heldout": {"files": held.files, "tokens": int(held.stream.numel()), "pinned_corpus": held.pinned},
        "setup": "CPU profile, torch providers, fp32 compute, indexer fp8 (q / k rounded as shipped), latent cache "
                 "bf16; dense = index_topk set to max_position_embeddings (every visible key), same weights",
        "threads": torch.get_num_threads(), "perplexity": [], "retrieval": [], "copy": [], "recall": [],
        "agreement": []}
    for c in contexts:
        log(f"context {c} ({c / pair.topk:g} x top-k)")
        if sizes["windows"]:
            result["perplexity"].append(ev.perplexity(pair, held.stream, c, sizes["windows"]))
        if sizes["retrieval_cases"]:
            r = ev.retrieval(pair, held, c, sizes["retrieval_cases"], sizes["candidates"], args.seed)
            if r is not None:
                result["retrieval"].append(r)
            cp = ev.copy_probe(pair, held, c, max(1, sizes["retrieval_cases"] // COPY_CASES_PER), args.seed)
            if cp is not None:
                result["copy"].append(cp)
        if sizes["recall_windows"]:
            result["recall"].append(ev.indexer_recall(pair, held.stream, c, sizes["recall_windows"]))
        if sizes["prompts"]:
            result["agreement"].append(ev.greedy_agreement(pair, held.stream, c, sizes["prompts"], sizes["new_tokens"]))
    result["seconds"] = time.perf_counter() - t0
    return result


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def measured(result: dict) -> bool:
    """True when at least one measurement gave a number (recall rows of contexts <= top-k give none)."""
    return bool(result["perplexity"] or result["retrieval"] or result["copy"] or result["agreement"]
                or any(r["rows"] for r in result["recall"]))


def targets(result: dict, train: Optional[dict]) -> list[dict]:
    """The issue's targets, each with what was measured and whether it holds (None: not measured)."""
    k = result["index_topk"]
    rows = []
    by_ctx = {name: {r["context"]: r for r in result[name]} for name in ("perplexity", "retrieval", "recall")}
    for m in TARGET_MULTIPLES:
        p = by_ctx["perplexity"].get(m * k)
        rows.append({"target": f"sparse perplexity at most {PPL_TARGET_PCT:g}% above dense at {m}x top-k ({m * k})",
                     "measured": None if p is None else f"{p['sparse_vs_dense_pct']:+.2f}% (standard error "
                                                        f"{p['sparse_vs_dense_se_pct']:.2f}%)",
                     "holds": None if p is None else p["sparse_vs_dense_pct"] <= PPL_TARGET_PCT})
    for m in TARGET_MULTIPLES:
        r = by_ctx["retrieval"].get(m * k)
        row = {"target": f"retrieval beyond top-k: sparse at most {RETRIEVAL_TARGET_POINTS:g} points below dense at "
                         f"{m}x top-k ({m * k})",
               "measured": None if r is None else f"sparse {r['sparse_acc_pct']:.1f}% vs dense "
                                                  f"{r['dense_acc_pct']:.1f}% ({r['sparse_minus_dense_points']:+.1f} "
                                                  f"points; chance {r['chance_pct']:.0f}%)",
               "holds": None if r is None else r["sparse_minus_dense_points"] >= -RETRIEVAL_TARGET_POINTS}
        if r is not None and not r["dense_above_chance"]:
            row.update(holds=None, why="not measurable: the dense model is at chance")
        rows.append(row)
    ev = (train or {}).get("eval", {})
    for stage, what in (("after_warmup", "after the warm-up"), ("after_dense", "before the warm-up"),
                        ("after_sparse", "after sparse training")):
        value = ev.get(stage, {}).get("recall")
        rows.append({"target": f"indexer recall >= {RECALL_TARGET:g} {what} (train.json, context "
                               f"{result['max_position_embeddings']})",
                     "measured": None if value is None else f"{value:.3f}",
                     "holds": None if value is None else value >= RECALL_TARGET})
    measured_recall = [r for r in result["recall"] if r["rows"]]
    if measured_recall:
        worst = min(measured_recall, key=lambda r: r["recall"])
        rows.append({"target": f"indexer recall >= {RECALL_TARGET:g}, shipped model, every context > top-k (this run)",
                     "measured": f"{worst['recall']:.3f} (lowest, at {worst['context']})",
                     "holds": worst["recall"] >= RECALL_TARGET})
    return rows


def notes(result: dict) -> list[str]:
    """What the numbers say that a table does not, from the numbers themselves (each line only when it holds)."""
    out = []
    copy = result["copy"]
    above = [r["context"] for r in result["retrieval"] if r and r["dense_above_chance"]]
    if copy and all(q["dense_second_pct"] - q["dense_first_pct"] < 2 for q in copy):
        out.append("The dense model does not copy from beyond top-k: a repeated span is predicted no better the second "
                   "time than the first. Long-range retrieval can hardly tell sparse from dense on this model"
                   + (f"; the dense passkey accuracy is above chance only at {', '.join(map(str, above))}."
                      if above else "; the passkey accuracies are chance-level for both."))
    better = [p["context"] for p in result["perplexity"] if p["sparse_vs_dense_pct"] < -0.5]
    if better:
        out.append(f"Sparse perplexity is below dense at {', '.join(map(str, better))}: the weights were last trained "
                   "with the top-k selection on (the recipe's sparse stage), so sparse attention is what they were "
                   "tuned for last.")
    rec = [q for q in result["recall"] if q["rows"]]
    if rec and any(v < RECALL_TARGET for v in rec[-1]["recall_per_layer"]):
        low = [str(i) for i, v in enumerate(rec[-1]["recall_per_layer"]) if v < RECALL_TARGET]
        out.append(f"Indexer recall below {RECALL_TARGET:g} at {rec[-1]['context']} in layer(s) {', '.join(low)}; it "
                   "falls as the context grows (a fixed top-k covers a smaller share of the keys).")
        ceil = rec[-1].get("ceiling_per_layer", [])
        diffuse = [f"{i} ({c:.2f})" for i, c in enumerate(ceil) if _finite(c) and c < RECALL_TARGET]
        if diffuse:
            out.append(f"At {rec[-1]['context']} the dense attention of layer(s) {', '.join(diffuse)} puts less than "
                       f"{RECALL_TARGET:g} of its mass on its own top {result['index_topk']} keys: it is spread over "
                       "many keys, so no selection of top-k keys reaches the target there; the indexer's recall is "
                       "bounded by these ceilings.")
    return out


# ---- the report ----------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[c if isinstance(c, str) else f"{c:g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in cells)]


def _x(result: dict, context: int) -> str:
    return f"{context / result['index_topk']:g}x"


def render(result: dict, train: Optional[dict], plots: list[str]) -> str:
    """The Markdown report."""
    r, k = result, result["index_topk"]
    s = r["sizes"]
    lines = [f"# `dsa eval`: sparse vs dense attention, model {r['model']}", "",
             f"Checkpoint `{r['checkpoint']}`: index_topk {k}, context {r['max_position_embeddings']}. Held-out text: "
             f"{r['heldout']['files']} files of the Python standard library ({r['heldout']['tokens']:,} tokens, "
             f"dsa.train.corpus.split{'' if r['heldout']['pinned_corpus'] else '; NOT the pinned corpus'}), encoded "
             f"with the checkpoint's tokenizer. {r['setup']}. {r['threads']} threads, {r['seconds']:.0f} s.", "",
             f"Command: `{r.get('command', 'dsa eval')}`", "", "## Targets (measured)", ""]
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    lines += _table(["target", "measured", "holds"],
                    [[t["target"], t["measured"] or "-", t.get("why") or verdict[t["holds"]]] for t in r["targets"]])
    said = notes(r)
    if said:
        lines += ["", *[f"- {n}" for n in said]]
    lines += ["", "## Perplexity", "",
              f"{s['windows']} evenly spaced held-out windows per context, one forward each; scored: the second half "
              "of each window (each scored token sees at least context / 2 tokens); the last column scores every "
              "position. Standard error: from the spread of the per-window differences (windows are paired: the same "
              "text through both).", ""]
    lines += _table(["context", "x top-k", "scored tokens", "dense ppl", "sparse ppl", "sparse/dense - 1",
                     "its standard error", "same, every position"],
                    [[p["context"], _x(r, p["context"]), p["scored_tokens"], f"{p['dense_ppl']:.3f}",
                      f"{p['sparse_ppl']:.3f}", f"{p['sparse_vs_dense_pct']:+.2f}%",
                      f"{p['sparse_vs_dense_se_pct']:.2f}%" if _finite(p["sparse_vs_dense_se_pct"]) else "-",
                      f"{p['sparse_vs_dense_pct_all_positions']:+.2f}%"] for p in r["perplexity"]])
    lines += ["", "## Retrieval beyond top-k (passkey in held-out code)", "",
              "`KEY_1234 = \"word\"` inserted between two lines of a held-out file, held-out code after it, and "
              "`KEY_1234 = \"` again at the end, at least 2 x top-k tokens after the definition (distance: tokens "
              "from the value to the end). Accuracy: the value's logit is the highest of the candidates' (the value "
              "and random distractor words, each one token); greedy: the argmax over the whole vocabulary is the "
              "value. Contexts shorter than 2 x top-k + the passkey's tokens have no case.", ""]
    lines += _table(["context", "x top-k", "cases", "distance", "chance", "dense acc", "sparse acc", "sparse - dense",
                     "right only dense / only sparse", "dense greedy", "sparse greedy"],
                    [[q["context"], _x(r, q["context"]), q["cases"], f"{q['distance_min']}-{q['distance_max']}",
                      f"{q['chance_pct']:.0f}%", f"{q['dense_acc_pct']:.1f}%", f"{q['sparse_acc_pct']:.1f}%",
                      f"{q['sparse_minus_dense_points']:+.1f} pt",
                      f"{q['only_dense_right']} / {q['only_sparse_right']}", f"{q['dense_greedy_pct']:.1f}%",
                      f"{q['sparse_greedy_pct']:.1f}%"] for q in r["retrieval"]])
    lines += ["", "Dense accuracy more than two binomial standard deviations above chance: "
              + ", ".join(f"{q['context']}: {'yes' if q['dense_above_chance'] else 'no'}" for q in r["retrieval"])
              + " (only then does sparse vs dense say something about the sparse attention).", ""] \
        if r["retrieval"] else [""]
    lines += ["### In-context copying beyond top-k", "",
              "A span of held-out code, at least 2 x top-k tokens of other held-out code, the same span again: top-1 "
              "next-token accuracy on the span's second occurrence (a model that copies predicts it from the first) "
              "and on its first (the same tokens without a copy to read).", ""]
    lines += _table(["context", "x top-k", "spans", "span", "distance", "dense first", "dense second",
                     "sparse first", "sparse second"],
                    [[q["context"], _x(r, q["context"]), q["cases"], q["span"], q["distance"],
                      *[f"{q[f'{m}_{w}_pct']:.1f}%" for m in ("dense", "sparse") for w in ("first", "second")]]
                     for q in r["copy"]])
    lines += ["", "## Indexer recall", "",
              "Share of the dense attention mass (summed over heads, per layer) on the indexer's top-k, over the rows "
              f"that see more than {k} keys, in {s['recall_windows']} held-out windows per context "
              "(dsa.train.graph.TrainGraph, dense mode; index scores unquantised). At context <= top-k every key is "
              "selected: no row to measure. *ceiling*: the mass on the k keys the dense attention itself weighs "
              "most, the most any selection of k keys can reach.", ""]
    layers = max((len(q["recall_per_layer"]) for q in r["recall"]), default=0)
    def _pair(v, c):
        return f"{v:.3f} / {c:.3f}" if _finite(v) and _finite(c) else "-"

    lines += _table(["context", "x top-k", "rows", *[f"layer {i} (recall / ceiling)" for i in range(layers)],
                     "mean recall / ceiling"],
                    [[q["context"], _x(r, q["context"]), q["rows"],
                      *[_pair(v, c) for v, c in zip(q["recall_per_layer"], q.get("ceiling_per_layer",
                                                                                 [float("nan")] * layers))],
                      _pair(q["recall"], q.get("ceiling", float("nan")))] for q in r["recall"]])
    lines += ["", "## Greedy agreement (through the engine)", "",
              f"{s['prompts']} held-out prompts per context of context - {s['new_tokens']} tokens, {s['new_tokens']} "
              "greedy tokens each (at most context / 2) through the dense and the sparse model's Engine (eos "
              "ignored): the generations end at the context.", ""]
    lines += _table(["context", "x top-k", "prompts", "prompt + new tokens", "identical tokens up to the first "
                     "divergence", "identical continuations"],
                    [[g["context"], _x(r, g["context"]), g["prompts"], f"{g['prompt_tokens']} + {g['new_tokens']}",
                      f"{100 * g['agreement_to_divergence']:.1f}%", f"{100 * g['identical']:.1f}%"]
                     for g in r["agreement"]])
    lines += ["", "## The recipe's numbers (train.json)", ""]
    if train is None:
        lines += ["No training report given (`--train-report train.json`)."]
    else:
        lines += [f"From `{train['path']}`: held-out loss (nats/token) and the indexer's recall at context "
                  f"{r['max_position_embeddings']} on {train.get('eval_windows') or '?'} held-out windows, after each "
                  "stage (the recall uses unquantised index scores).", ""]
        lines += _table(["after", "dense loss", "sparse loss", "recall", "recall per layer"],
                        [[name.removeprefix("after_"), f"{v['dense_loss']:.4f}", f"{v['sparse_loss']:.4f}",
                          f"{v['recall']:.3f}", ", ".join(f"{x:.3f}" for x in v["recall_per_layer"])]
                         for name, v in train["eval"].items()])
    if plots:
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots]]
    return "\n".join(lines) + "\n"


def plot(result: dict, directory: Path) -> list[Path]:
    """Perplexity dense vs sparse vs context, and recall per layer vs context, as PNGs in `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = []
    ppl, rec = result["perplexity"], [q for q in result["recall"] if q["rows"]]
    if ppl:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        xs = [p["context"] for p in ppl]
        ax.plot(xs, [p["dense_ppl"] for p in ppl], "o-", label="dense")
        ax.plot(xs, [p["sparse_ppl"] for p in ppl], "s--", label=f"sparse (top-k {result['index_topk']})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("held-out perplexity (second half of each window)")
        ax.set_title(f"dsa eval, {result['model']}: perplexity dense vs sparse")
        ax.legend()
        out.append(directory / PLOTS[0])
        fig.tight_layout()
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    if rec:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        xs = [q["context"] for q in rec]
        for i in range(len(rec[0]["recall_per_layer"])):
            ax.plot(xs, [q["recall_per_layer"][i] for q in rec], "o-", label=f"layer {i}")
        ax.axhline(RECALL_TARGET, color="grey", linestyle=":", label=f"target {RECALL_TARGET:g}")
        ax.set_ylim(0, 1.02)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(f"attention mass on the top-{result['index_topk']}")
        ax.set_title(f"dsa eval, {result['model']}: indexer recall per layer")
        ax.legend()
        out.append(directory / PLOTS[1])
        fig.tight_layout()
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    return out


def clean(x: Any) -> Any:
    """JSON-safe copy: NaN / inf become null (strict JSON has neither), tuples lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def cmd_eval(args) -> int:
    import sys

    import torch

    sizes = _sizes(args)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    _check_output("--json", args.json)
    _check_output("--markdown", args.markdown)
    if args.json is not None and args.markdown is not None and \
            args.json.expanduser().resolve() == args.markdown.expanduser().resolve():
        raise InputError(f"--json and --markdown are the same file ({args.json}); give two names")
    train = read_train_report(args.train_report)
    from dsa.io.model_source import resolve_model

    config = resolve_model(args.model).config  # the flags against the model before any weight is read
    _contexts(args, config.index_topk, config.max_position_embeddings)
    result = measure(args, sizes, lambda s: print(f"[dsa] {s}", file=sys.stderr, flush=True))
    argv = getattr(args, "argv", None)
    result["command"] = "dsa " + shlex.join(argv) if argv else "dsa eval"
    result["train_report"] = train
    result["targets"] = targets(result, train)
    if not measured(result):
        print("error: dsa eval measured nothing (every count is 0, or no context is long enough for a measurement)",
              file=sys.stderr)
        return 1
    plots = plot(result, args.markdown.expanduser().resolve().parent) if args.markdown is not None else []
    text = render(result, train, [str(p) for p in plots])
    print(text, end="")
    if args.json is not None:
        args.json.expanduser().write_text(json.dumps(clean(result), indent=1, allow_nan=False) + "\n")
    if args.markdown is not None:
        args.markdown.expanduser().write_text(text)
    return 0


__all__ = ["add_arguments", "cmd_eval", "measure", "render", "targets", "read_train_report"]
