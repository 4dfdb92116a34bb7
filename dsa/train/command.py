"""`dsa train`: rebuild the built-in model from scratch - corpus, tokenizer, the three-stage DSA recipe,
the checkpoint (bf16, plus an fp8 copy), a report and a loss-curve PNG.

    dsa train --out dsa/configs/models/mini [--fp8-out DIR] [--report DIR] [--seed S] [--threads N]

Everything is reproducible from the seed on the pinned corpus (dsa.train.corpus: the Python 3.11.7 standard
library). The tokenizer and the encoded corpus are cached in --work-dir so a rerun skips them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dsa.errors import InputError

DEFAULT_CONFIG = "mini"  # dsa/configs/models/mini/config.json: the model the recipe trains


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write (bf16 weights)")
    p.add_argument("--fp8-out", type=Path, help="also write the fp8 (128x128 block-scaled) checkpoint here")
    p.add_argument("--overwrite", action="store_true", help="replace existing checkpoints in --out / --fp8-out")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="model config: a built-in name or a config.json "
                   f"(default {DEFAULT_CONFIG})")
    p.add_argument("--report", type=Path, default=Path("train-report"),
                   help="directory for train.json and loss.png (default ./train-report)")
    p.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "dsa" / "train",
                   help="cache of the tokenizer and the encoded corpus (default ~/.cache/dsa/train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches (default 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE tokenizer size (default 2048; the config's)")
    p.add_argument("--any-corpus", action="store_true",
                   help="train on this Python's standard library even if it is not the pinned one")
    p.add_argument("--max-files", type=int, help="use only the first N corpus files (smoke tests)")
    p.add_argument("--steps", type=float, default=1.0, metavar="SCALE",
                   help="multiply every stage's step count (e.g. 0.01 for a smoke run; default 1)")
    p.add_argument("--passkey-rate", type=float, default=0.5, metavar="P",
                   help="share of training windows given a passkey pair (dsa.train.passkeys; default 0.5, 0 = none)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")


def _config(name_or_path: str, vocab_size: int):
    from dsa.io.checkpoint_writer import load_config_json
    from dsa.model.config import ModelConfig

    raw = load_config_json(name_or_path)
    if raw.get("vocab_size") != vocab_size:
        raise InputError(f"--vocab-size {vocab_size} differs from the config's vocab_size {raw.get('vocab_size')}; "
                         "give the same size (or another --config)")
    return raw, ModelConfig.from_dict(raw, name_or_path)


def _tokenizer(work: Path, train_files, vocab_size: int, max_length: int, pin) -> Path:
    """The BPE tokenizer of the training split, cached under the corpus pin and the vocabulary size."""
    from dsa.train.corpus import read_text
    from dsa.train.tokenizer import save_tokenizer, train_tokenizer

    out = work / f"tokenizer-{pin.sha256[:16]}-{len(train_files)}-{vocab_size}"
    if not (out / "tokenizer.json").is_file():
        tok = train_tokenizer((read_text(f) for f in train_files), vocab_size=vocab_size)
        save_tokenizer(tok, out, max_length=max_length)
    return out


def _sampler(stream: torch.Tensor, seed: int, mix=None):
    """sample(batch, length) -> [batch, length + 1] random windows of the stream, passed through `mix` (a
    dsa.train.passkeys.PasskeyMixer) when given."""
    gen = torch.Generator().manual_seed(seed)

    def sample(batch: int, length: int) -> torch.Tensor:
        if stream.numel() < length + 2:
            raise InputError(f"the training stream ({stream.numel()} tokens) is shorter than a window of {length}")
        starts = torch.randint(0, stream.numel() - length - 1, (batch,), generator=gen)
        ids = stream[starts[:, None] + torch.arange(length + 1)].long()
        return mix(ids) if mix is not None else ids

    return sample


def plot_losses(report: dict, path: Path) -> None:
    """Loss per training token, one line per stage; the indexer KL below."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    done = 0
    for name, st in report["stages"].items():
        per = st["tokens"] / max(1, st["steps"])
        xs = [done + per * (i + 1) for i in range(st["steps"])]
        if name.startswith("b-"):
            bx.plot(xs, st["loss"], label=f"{name} (KL, dense)")
        else:
            ax.plot(xs, st["loss"], label=name, linewidth=0.8)
        if st["kl"] and not name.startswith("b-"):
            bx.plot(xs, st["kl"], label=f"{name} (KL on the selected set)")
        done += st["tokens"]
    ax.set_ylabel("LM loss (nats/token)")
    ax.set_title("dsa train: the DSA recipe on the Python standard library")
    ax.legend()
    bx.set_ylabel("indexer KL (sum over layers)")
    bx.set_xlabel("training tokens")
    bx.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_train(args) -> int:
    from dsa.io.checkpoint_writer import write_checkpoint
    from dsa.train.corpus import check_pin, corpus_files, corpus_pin, split
    from dsa.train.data import cached_stream, eval_windows
    from dsa.train.recipe import Recipe, hf_tensors, run

    if args.steps <= 0:
        raise InputError(f"--steps must be > 0, got {args.steps}")
    if not 0.0 <= args.passkey_rate <= 1.0:
        raise InputError(f"--passkey-rate must lie in [0, 1], got {args.passkey_rate}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for flag, path in (("--out", args.out), ("--fp8-out", args.fp8_out)):
        if path is not None and path.exists() and any(path.iterdir()) and not args.overwrite:
            raise InputError(f"{flag} {path} is not empty; pass --overwrite to replace the checkpoint there")
    raw, config = _config(args.config, args.vocab_size)
    files = corpus_files()
    if not args.any_corpus:
        check_pin(files)
    if args.max_files is not None:
        files = files[:args.max_files]
    train_files, held_files = split(files)
    if not held_files:
        held_files = train_files[-1:]
    pin = corpus_pin(files)
    work = args.work_dir.expanduser()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok_dir = _tokenizer(work, train_files, args.vocab_size, config.max_position_embeddings, pin)
    tok_json = (tok_dir / "tokenizer.json").read_bytes()
    train_stream = cached_stream(work / "cache", tok_json, train_files)
    held_stream = cached_stream(work / "cache", tok_json, held_files)
    prep = time.perf_counter() - t0
    scale = args.steps
    recipe = dataclasses.replace(
        Recipe(seed=args.seed, passkey_rate=args.passkey_rate), **{k: max(1, round(getattr(Recipe, k) * scale))
                                   for k in ("short_steps", "long_steps", "warmup_steps", "sparse_steps")})
    recipe = dataclasses.replace(recipe, lr_warmup_steps=min(recipe.lr_warmup_steps, recipe.short_steps))
    L = config.max_position_embeddings
    n_eval = recipe.eval_windows if held_stream.numel() > (L + 1) * recipe.eval_windows else 1
    heldout = eval_windows(held_stream, L, n_eval)
    print(f"[dsa] corpus: {len(train_files)} train / {len(held_files)} held-out files, {train_stream.numel():,} / "
          f"{held_stream.numel():,} tokens; tokenizer {tok_dir} ({prep:.0f} s to prepare)", flush=True)
    from tokenizers import Tokenizer

    from dsa.train.passkeys import PasskeyMixer

    mix = PasskeyMixer(Tokenizer.from_file(str(tok_dir / "tokenizer.json")), recipe.passkey_rate, args.seed)
    model, report = run(config, recipe, _sampler(train_stream, args.seed, mix), heldout, progress=args.progress,
                        log=lambda s: print(f"[dsa] {s}", flush=True))
    report.update(corpus={"files_train": len(train_files), "files_heldout": len(held_files),
                          "tokens_train": int(train_stream.numel()), "tokens_heldout": int(held_stream.numel()),
                          "python_stdlib_pin": dataclasses.asdict(pin)},
                  seconds_total=time.perf_counter() - t0, seconds_prepare=prep, threads=torch.get_num_threads(),
                  command="dsa " + " ".join(getattr(args, "argv", []) or ["train"]))
    tensors = hf_tensors(model)
    write_checkpoint(args.config, args.out, fp8=False, num_shards=1, overwrite=args.overwrite, tensors=tensors,
                     tokenizer_dir=tok_dir)
    if args.fp8_out is not None:
        write_checkpoint(args.config, args.fp8_out, fp8=True, num_shards=1, overwrite=args.overwrite, tensors=tensors,
                         tokenizer_dir=tok_dir)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "train.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_losses(report, args.report / "loss.png")
    ev = report["eval"]
    print(f"wrote {args.out}" + (f" and {args.fp8_out}" if args.fp8_out else "") + f"; report {args.report}/train.json"
          f" + loss.png; {report['seconds_total'] / 60:.1f} min in all. held-out loss dense "
          f"{ev['after_sparse']['dense_loss']:.3f} / sparse {ev['after_sparse']['sparse_loss']:.3f}; indexer recall "
          f"{ev['after_dense']['recall']:.3f} before the warm-up, {ev['after_warmup']['recall']:.3f} after")
    return 0


__all__ = ["add_arguments", "cmd_train"]
