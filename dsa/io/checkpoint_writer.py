"""`write_checkpoint`: seeded random weights in exactly the HF layout of DeepSeek-V3.2 (docs/model-and-ops.md 3).

The directory holds config.json (with `quantization_config` when fp8), model.safetensors.index.json,
shards `model-0000i-of-0000N.safetensors` split by layer (embedding with the first layers, final norm
and lm_head with the last), and the tokenizer files of dsa.io.tokenizer_writer. Weights come from
`model.weights.random_checkpoint`, so the fp8 and bf16 checkpoints of one seed hold the same weights up
to block quantisation. It is written into a temporary sibling directory and renamed into place, so a
failure never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Union

from dsa.configs import CONFIG_DIR
from dsa.errors import ConfigError, DsaError, OutputDirError
from dsa.io.checkpoint import INDEX_FILE
from dsa.model.config import ModelConfig

QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
                       "weight_block_size": [128, 128]}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")

ConfigSource = Union[str, Path, ModelConfig]


def shard_name(index: int, count: int) -> str:
    """HF's shard file name; `index` counts from 1."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def _config_dict(config: ModelConfig) -> dict:
    raw = dataclasses.asdict(config)
    if raw["quantization_config"] is not None:
        raw["quantization_config"]["weight_block_size"] = list(raw["quantization_config"]["weight_block_size"])
    return {"architectures": ["DeepseekV32ForCausalLM"], **{k: v for k, v in raw.items() if v is not None}}


def load_config_json(source: ConfigSource) -> dict:
    """The raw config.json of a ModelConfig, a config.json path, a checkpoint directory or a built-in model
    name (dsa/configs/models/NAME); validated as a ModelConfig."""
    if isinstance(source, ModelConfig):
        return _config_dict(source)
    path = Path(source).expanduser()
    candidates = [path, path / "config.json"]
    if "/" not in str(source):
        candidates.append(CONFIG_DIR / "models" / str(source) / "config.json")
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        names = ", ".join(sorted(p.parent.name for p in (CONFIG_DIR / "models").glob("*/config.json")))
        raise ConfigError(f"config {source!s} not found: give a config.json, a checkpoint directory or a built-in "
                          f"model name ({names})")
    ModelConfig.from_file(found)  # validates (model_type, required fields, dimensions)
    return json.loads(found.read_text())


def shard_plan(config: ModelConfig, names: list[str], num_shards: int) -> dict[str, int]:
    """tensor name -> shard number (0-based). Units in order: embedding, layer 0 .. L-1, final norm +
    lm_head; unit u goes to shard u * N // (L + 2), so every shard gets whole layers and none is empty."""
    units = config.num_hidden_layers + 2
    if not 1 <= num_shards <= units:
        raise DsaError(f"--shards must be in [1, {units}] for this model (whole layers per shard), got {num_shards}")

    def unit(name: str) -> int:
        m = _LAYER.match(name)
        if m:
            return int(m.group(1)) + 1
        return 0 if name.startswith("model.embed_tokens.") else units - 1

    return {name: unit(name) * num_shards // units for name in names}


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputDirError(f"{out_dir} is not empty; pass --overwrite to replace it, or choose another --out")
        if not (out_dir / "config.json").is_file():
            raise OutputDirError(f"{out_dir} is not empty and holds no config.json, so it is not a checkpoint; "
                                 "refusing to delete it - choose another --out")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_permissions(path: Path) -> None:
    """mkdtemp makes a private (0700) directory; give the checkpoint the permissions of a normal one."""
    os.chmod(path, 0o777 & ~_umask())


def _write_into(tmp: Path, raw: dict, config: ModelConfig, *, fp8: bool, seed: int, num_shards: int) -> None:
    from safetensors.torch import save_file

    from dsa.io.tokenizer_writer import write_tokenizer_files
    from dsa.model.weights import random_checkpoint

    raw = {k: v for k, v in raw.items() if k != "quantization_config"}
    if fp8:
        raw["quantization_config"] = dict(QUANTIZATION_CONFIG)
    (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    tensors = random_checkpoint(config, seed, fp8=fp8)
    plan = shard_plan(config, list(tensors), num_shards)
    weight_map, total = {}, 0
    for shard in range(num_shards):
        name = shard_name(shard + 1, num_shards)
        part = {k: t.contiguous() for k, t in tensors.items() if plan[k] == shard}
        save_file(part, str(tmp / name), metadata={"format": "pt"})
        for k, t in part.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    write_tokenizer_files(tmp, vocab_size=config.vocab_size, max_length=config.max_position_embeddings)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~_umask())


def write_checkpoint(source: ConfigSource, out_dir: str | Path, *, fp8: bool, seed: int = 0, num_shards: int = 3,
                     overwrite: bool = False) -> Path:
    """Write a random-weight checkpoint of `source`'s config into `out_dir` (see the module doc); returns
    the directory. A non-empty `out_dir` is replaced only with `overwrite` (and only if it is a checkpoint)."""
    from dsa.io.model_source import ModelSource, check_random_weights_fit

    raw = load_config_json(source)
    config = ModelConfig.from_dict(raw, str(source))
    out_dir = Path(out_dir).expanduser()
    check_random_weights_fit(ModelSource(out_dir.name, config, None))
    shard_plan(config, [], num_shards)  # validate the shard count before any work
    _prepare_out_dir(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        _default_permissions(tmp)
    except OSError as err:
        raise OutputDirError(f"cannot create {out_dir} ({err.strerror}); choose a writable --out") from None
    try:
        _write_into(tmp, raw, config, fp8=fp8, seed=seed, num_shards=num_shards)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "replaced")  # move aside, so a failed rename below loses nothing
            try:
                tmp.rename(out_dir)
            except OSError:
                (old / "replaced").rename(out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise OutputDirError(f"writing {out_dir} failed ({err}); nothing was written - free space or "
                                 "choose another --out") from None
        raise
    return out_dir
