"""Tiny HF-layout checkpoints for the loader / API tests, and helpers that damage them one way at a time."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

INDEX = "model.safetensors.index.json"


def make_checkpoint(out: Path, *, fp8: bool = False, seed: int = 0, num_shards: int = 3, config="tiny") -> Path:
    """config.json + index + shards + tokenizer files (dsa.io.checkpoint_writer)."""
    from dsa.io.checkpoint_writer import write_checkpoint

    return write_checkpoint(config, out, fp8=fp8, seed=seed, num_shards=num_shards)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def weight_map(d: Path) -> dict[str, str]:
    return json.loads((d / INDEX).read_text())["weight_map"]


def write_weight_map(d: Path, wm: dict[str, str]) -> None:
    (d / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(wm.items()))}, indent=1))


def shard_of(d: Path, name: str) -> str:
    return weight_map(d)[name]


def all_tensors(d: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard the index lists (read eagerly, for reference models)."""
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map(d).values())):
        out.update(load_file(str(d / shard)))
    return out


def edit_config(d: Path, **changes) -> None:
    """Rewrite the checkpoint's config.json with `changes` applied."""
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | changes, indent=2))


def edit_shard(d: Path, shard: str, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
               update_index: bool = True) -> None:
    """Rewrite one shard with edit(tensors); the index follows unless update_index is False."""
    before = load_file(str(d / shard))
    after = edit(dict(before))
    save_file({k: v.contiguous() for k, v in after.items()}, str(d / shard), metadata={"format": "pt"})
    if update_index:
        wm = {k: v for k, v in weight_map(d).items() if not (v == shard and k not in after)}
        wm.update({k: shard for k in after})
        write_weight_map(d, wm)


def edit_tensor(d: Path, name: str, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> str:
    """edit_shard on the shard that holds `name`; returns that shard's file name."""
    shard = shard_of(d, name)
    edit_shard(d, shard, edit)
    return shard
