"""A checkpoint directory as its files describe it: config.json, the index (or the shards themselves) and
every needed shard's header - no tensor data read - and its check against the model's expected tensors.

    ckpt = open_checkpoint("DeepSeek-V3.2-Exp/")  # config.json, the index, every needed shard's header
    ckpt.validate()                               # names, shapes, dtypes vs hf_tensor_specs(config)

The multi-token-prediction layer (ModelConfig.is_mtp_layer: layer 61 of the 671B release) is left out
of `tensors`: plain decoding does not use it. The skip is logged once per checkpoint.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from dsa.errors import CheckpointError
from dsa.io.safetensors_header import FLOAT_DTYPES, ST_NAME, TensorInfo, read_header
from dsa.model.config import ModelConfig
from dsa.model.fields import int_problem, read_json
from dsa.model.transformer import LAYER_NAME, is_mtp_tensor

log = logging.getLogger("dsa.loader")

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_LISTED_PROBLEMS = 8


@dataclass
class Checkpoint:
    """A checkpoint directory as its config, index and shard headers describe it (no tensor data read)."""

    directory: Path
    config: ModelConfig
    tensors: dict[str, TensorInfo]  # every tensor the model may load (MTP layer excluded)
    shards: list[str]  # shards holding those tensors, in file-name order
    skipped: list[str] = field(default_factory=list)  # MTP-layer tensors, not read

    def validate(self, fp8: Optional[bool] = None) -> None:
        """CheckpointError listing every missing, unexpected, mis-shaped or mis-typed tensor.

        The expected layout is `hf_tensor_specs(config, fp8)` with fp8 = config.json's
        quantization_config (fp8 weights with fp32 weight_scale_inv) unless given.
        """
        from dsa.model.weights import hf_tensor_specs

        fp8 = self.config.fp8_weights if fp8 is None else fp8
        specs = hf_tensor_specs(self.config, fp8)
        quant = ("config.json says fp8 weights (quantization_config)" if fp8
                 else "config.json has no fp8 quantization_config")
        problems = []
        for name, (shape, dtype) in specs.items():
            t = self.tensors.get(name)
            want = f"{list(shape)} {ST_NAME[dtype]}"
            if t is None:
                weight = self.tensors.get(name[: -len("_scale_inv")]) if name.endswith(".weight_scale_inv") else None
                if weight is not None and weight.dtype == "F8_E4M3":
                    problems.append(f"fp8 weight {weight.name} (in {weight.shard}) has no {name}: expected its fp32 "
                                    f"128x128 block scales {list(shape)}")
                else:
                    problems.append(f"missing tensor {name}: expected {want}, found in no shard")
                continue
            allowed = ("F8_E4M3",) if dtype == torch.float8_e4m3fn else ("F32",) if name.endswith("_scale_inv") \
                else FLOAT_DTYPES
            if t.dtype not in allowed:
                why = f" ({quant})" if "F8_E4M3" in (t.dtype, *allowed) else ""
                problems.append(f"tensor {name} in {t.shard} has dtype {t.dtype}, expected {' or '.join(allowed)}{why}")
            if t.shape != shape:
                problems.append(f"tensor {name} in {t.shard} has shape {list(t.shape)}, expected {list(shape)} "
                                "(from config.json)")
        for name, t in self.tensors.items():
            if name not in specs:
                hint = f" ({quant})" if name.endswith("_scale_inv") else ""
                problems.append(f"unexpected tensor {name} {list(t.shape)} {t.dtype} in {t.shard}{hint}")
        if problems:
            more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
            raise CheckpointError(f"checkpoint {self.directory} does not match its config.json: "
                                  + "; ".join(problems[:MAX_LISTED_PROBLEMS]) + more)


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Read config.json, the index (or find the single shard) and the headers of the shards to load.

    With `model.safetensors.index.json`, only the shards its weight_map names are opened; without it,
    every *.safetensors file of the directory is (a single `model.safetensors` is the usual case).
    """
    d = Path(directory).expanduser()
    if not d.exists():
        raise CheckpointError(f"checkpoint directory {d} not found")
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} is not a directory; give the directory holding config.json and the "
                              "shards")
    config = ModelConfig.from_file(d / "config.json")
    index_path = d / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_index(index_path)
    else:
        files = sorted(p.name for p in d.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"checkpoint directory {d} has no {INDEX_FILE} and no *.safetensors shard")
        weight_map = {}
        for shard in files:
            for name in read_header(d / shard, shard):
                if name in weight_map:
                    raise CheckpointError(f"tensor {name} is in two shards, {weight_map[name]} and {shard}; without "
                                          f"{INDEX_FILE} a tensor must be in exactly one shard")
                weight_map[name] = shard

    skipped = sorted(n for n in weight_map if _is_mtp(n, config))
    wanted: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not _is_mtp(name, config):
            wanted.setdefault(shard, []).append(name)
    for shard, names in sorted(wanted.items()):
        if not _is_file(d / shard):
            raise CheckpointError(
                f"{index_path} names shard {shard} (holding {names[0]}"
                + (f" and {len(names) - 1} more tensors" if len(names) > 1 else "")
                + f"), but {d / shard} does not exist; re-download it")

    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(wanted):
        header = read_header(d / shard, shard)
        for name in wanted[shard]:
            if name not in header:
                raise CheckpointError(f"{index_path} maps tensor {name} to shard {shard}, but {shard} does not hold "
                                      "it; the index and the shards disagree (re-download both)")
            tensors[name] = header[name]
        for name in header:
            if weight_map.get(name) != shard and not _is_mtp(name, config):
                raise CheckpointError(f"shard {shard} holds tensor {name}, which {index_path} "
                                      + (f"maps to {weight_map[name]}" if name in weight_map else "does not list")
                                      + "; the index and the shards disagree (re-download both)")
    if skipped:
        layers = sorted({int(LAYER_NAME.match(n).group(1)) for n in skipped})
        log.info("%s: not loading the %d tensors of the multi-token-prediction layer %s (plain decoding does not "
                 "use it)", d, len(skipped), ", ".join(map(str, layers)))
    return Checkpoint(d, config, tensors, sorted(wanted), skipped)


def _read_index(path: Path) -> dict[str, str]:
    try:
        text = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the index ({err.strerror or err}); re-download it") from None
    raw = read_json(text, lambda why: CheckpointError(f"{path}: cannot read the index ({why}); re-download it"))
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: expected an object with a \"weight_map\" of tensor name -> shard file name")
    metadata = raw.get("metadata")
    if isinstance(metadata, dict) and "total_size" in metadata:
        problem = int_problem(metadata["total_size"], lo=0)
        if problem:
            raise CheckpointError(f"{path}: metadata.total_size {problem}; re-download it")
    for shard in set(weight_map.values()):
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise CheckpointError(f"{path}: shard {shard!r} must be a file name inside the checkpoint directory")
    return weight_map


def _is_file(path: Path) -> bool:
    """Path.is_file for a name from a file: a 300-character shard name (ENAMETOOLONG) or a NUL is no file."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _is_mtp(name: str, config: ModelConfig) -> bool:
    """is_mtp_tensor, for any name a file may hold: a layer number of 5000 digits (int() refuses those) is no MTP
    layer - the tensor is then reported as unexpected."""
    m = LAYER_NAME.match(name)
    return m is not None and len(m.group(1)) <= 18 and is_mtp_tensor(name, config)


__all__ = ["Checkpoint", "open_checkpoint", "INDEX_FILE", "SINGLE_FILE", "MAX_LISTED_PROBLEMS"]
