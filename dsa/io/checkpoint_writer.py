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
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

from dsa.configs import CONFIG_DIR
from dsa.errors import ConfigError, DsaError, InputError, OutputDirError
from dsa.io.checkpoint import INDEX_FILE
from dsa.io.tokenizer_writer import TOKENIZER_FILES
from dsa.model.config import ModelConfig
from dsa.model.fields import is_int, seed_problem

QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
                       "weight_block_size": [128, 128]}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")  # shard_name's pattern
CHECKPOINT_FILES = ("config.json", INDEX_FILE, *TOKENIZER_FILES)  # with the shards: every file we write
log = logging.getLogger(__name__)

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


def is_checkpoint_file(name: str) -> bool:
    """A file name `write_checkpoint` writes: config.json, the index, a shard or a tokenizer file."""
    return name in CHECKPOINT_FILES or bool(_SHARD.match(name))


def _foreign_entry(directory: Path) -> str | None:
    """Why `directory` is not purely a checkpoint of ours (the first offending entry), or None.
    Entries are looked at with lstat: a symlink is never followed, and is never a checkpoint file."""
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_symlink():
            return f"{entry.name}, a symbolic link"
        if entry.is_dir(follow_symlinks=False):
            return f"{entry.name}/, a directory"
        if not entry.is_file(follow_symlinks=False):
            return f"{entry.name}, a special file"
        if not is_checkpoint_file(entry.name):
            return f"{entry.name}, which is not a checkpoint file"
    return None


def _not_ours(directory: Path) -> str | None:
    """Why `--overwrite` must not replace `directory`, or None when it is a checkpoint we could have written:
    only checkpoint files, and a config.json that parses as a DeepSeek-V3.2 ModelConfig."""
    foreign = _foreign_entry(directory)
    if foreign is not None:
        return foreign
    if not (directory / "config.json").is_file():
        return "no config.json, so it is not a checkpoint"
    try:
        ModelConfig.from_file(directory / "config.json")  # model_type must be DeepSeek-V3.2's
    except DsaError as err:
        return f"a config.json that is not a DeepSeek-V3.2 config ({err})"
    except OSError as err:
        return f"a config.json that cannot be read ({err.strerror})"
    return None


def _check_out_path(out_dir: Path) -> None:
    """Refuse, before any work, an --out that could never be a fresh checkpoint directory."""
    if str(out_dir) in ("", "."):
        raise OutputDirError(f"--out {str(out_dir) or repr('')} is the current directory; give a new directory "
                             "for the checkpoint")
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputDirError(f"--out {out_dir} is the current directory or one above it; give a new directory for "
                             "the checkpoint")
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home directory known
        home = None
    if resolved == Path(resolved.anchor) or resolved == home:
        raise OutputDirError(f"--out {out_dir} is the {'root' if resolved == Path(resolved.anchor) else 'home'} "
                             "directory; give a new directory for the checkpoint")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_symlink():
        raise OutputDirError(f"--out {out_dir} is a symbolic link; give the directory itself, or another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputDirError(f"{out_dir} is not empty; pass --overwrite to replace it, or choose another --out")
        reason = _not_ours(out_dir)
        if reason is not None:
            raise OutputDirError(f"--out {out_dir} holds {reason}; refusing to overwrite (remove it or choose "
                                 "another --out)")


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists, owned by someone else (or an impossible pid: treat as alive, leave it)
    return True


def _remove_checkpoint_dir(directory: Path) -> bool:
    """Unlink the checkpoint files of `directory` (never following a symlink), then the directory itself;
    anything else in it stays, and so does the directory. True when it is gone."""
    try:
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False) and not entry.is_symlink() and is_checkpoint_file(entry.name):
                os.unlink(entry.path)
        os.rmdir(directory)
    except OSError:
        return False
    return True


def _reclaim_stale(out_dir: Path) -> None:
    """Remove what a killed writer of `out_dir` left beside it: `.NAME.partial-PID-*` directories holding only
    checkpoint files, and `.NAME.old-PID-*` directories holding only `replaced/` with only checkpoint files
    (once `out_dir` itself is in place), whose writer process PID is gone. Anything else is left alone."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(partial|old)-(\d+)-[A-Za-z0-9_]+$")
    try:
        entries = list(os.scandir(out_dir.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or entry.is_symlink() or not entry.is_dir(follow_symlinks=False) or _writer_alive(int(m.group(2))):
            continue
        path = Path(entry.path)
        try:
            if m.group(1) == "partial":
                if _foreign_entry(path) is None and _remove_checkpoint_dir(path):
                    log.info("removed %s, left by a writer that is gone", path)
                continue
            inner = [e.name for e in os.scandir(path)]
            replaced = path / "replaced"
            if (inner == ["replaced"] and out_dir.is_dir() and not replaced.is_symlink() and replaced.is_dir()
                    and _foreign_entry(replaced) is None and _remove_checkpoint_dir(replaced)):
                os.rmdir(path)
                log.info("removed %s, left by a writer that is gone", path)
        except OSError:
            continue


class _Terminated(BaseException):
    """SIGTERM arrived while a checkpoint was being written."""


@contextmanager
def _sigterm_aborts(out_dir: Path):
    """For the duration of the write, SIGTERM raises `_Terminated` (so the partial directory is removed, like
    on Ctrl-C); afterwards the previous handler is restored and a caught SIGTERM is delivered to it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):  # ignored, or a handler not installed from Python: leave it be
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        log.warning("terminated (SIGTERM) while writing %s; removed the partial checkpoint, nothing was written",
                    out_dir)
        signal.raise_signal(signal.SIGTERM)  # the default action ends the process here; a handler runs
        raise OutputDirError("interrupted by SIGTERM; nothing was written") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_permissions(path: Path) -> None:
    """mkdtemp makes a private (0700) directory; give the checkpoint the permissions of a normal one."""
    os.chmod(path, 0o777 & ~_umask())


def _given_tensors(config: ModelConfig, tensors: dict, fp8: bool) -> dict:
    """Trained weights (HF names, float) in the checkpoint's layout: fp8 linear weights quantised in 128 x 128
    blocks with their scales, the rest in the layout's dtype. Names must be exactly the layout's."""
    from dsa.model.weights import FP8, hf_tensor_specs, quantize_blocks

    specs = hf_tensor_specs(config, fp8)
    wanted = {n for n in specs if not n.endswith(".weight_scale_inv")}
    if set(tensors) != wanted:
        missing, extra = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
        raise ConfigError(f"the tensors do not fit the config's layout: missing {missing[:4]}, unexpected {extra[:4]}")
    out = {}
    for name in sorted(wanted):
        shape, dtype = specs[name]
        t = tensors[name].detach().float().cpu()
        if tuple(t.shape) != tuple(shape):
            raise ConfigError(f"tensor {name} is {list(t.shape)}, the layout says {list(shape)}")
        if dtype == FP8:
            out[name], out[name + "_scale_inv"] = quantize_blocks(t)
        else:
            out[name] = t.to(dtype)
    return out


def _write_into(tmp: Path, raw: dict, config: ModelConfig, *, fp8: bool, seed: int, num_shards: int,
                tensors: Optional[dict] = None, tokenizer_dir: Optional[Path] = None) -> None:
    from safetensors.torch import save_file

    from dsa.io.tokenizer_writer import write_tokenizer_files
    from dsa.model.weights import random_checkpoint

    raw = {k: v for k, v in raw.items() if k != "quantization_config"}
    if fp8:
        raw["quantization_config"] = dict(QUANTIZATION_CONFIG)
    (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    tensors = random_checkpoint(config, seed, fp8=fp8) if tensors is None else _given_tensors(config, tensors, fp8)
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
    if tokenizer_dir is None:
        write_tokenizer_files(tmp, vocab_size=config.vocab_size, max_length=config.max_position_embeddings)
    else:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~_umask())


def _check_arguments(seed, num_shards) -> None:
    """Seeds are integers in [0, 2**63) (as `dsa run --seed` and EngineArgs.weights_seed); shards integers."""
    problem = seed_problem(seed)
    if problem:
        raise InputError(f"--seed {problem}")
    if not is_int(num_shards):
        raise InputError(f"--shards must be an integer, got {num_shards!r}")


def write_checkpoint(source: ConfigSource, out_dir: str | Path, *, fp8: bool, seed: int = 0, num_shards: int = 3,
                     overwrite: bool = False, tensors: Optional[dict] = None,
                     tokenizer_dir: Optional[str | Path] = None) -> Path:
    """Write a random-weight checkpoint of `source`'s config into `out_dir` (see the module doc); returns
    the directory. `tensors` (HF names, float): write these trained weights instead (quantised when fp8);
    `tokenizer_dir`: copy its tokenizer files instead of writing the byte-level ones. A non-empty `out_dir`
    is replaced only with `overwrite`, and only if it holds nothing but
    the files of a DeepSeek-V3.2 checkpoint. Partial directories that killed writers left are reclaimed."""
    from dsa.io.model_source import ModelSource, check_random_weights_fit

    _check_arguments(seed, num_shards)
    if isinstance(out_dir, str) and not out_dir.strip():
        raise OutputDirError("--out is empty; give a new directory for the checkpoint")
    out_dir = Path(out_dir).expanduser()
    _check_out_path(out_dir)
    raw = load_config_json(source)
    config = ModelConfig.from_dict(raw, str(source))
    if tensors is None:
        check_random_weights_fit(ModelSource(out_dir.name, config, None))
    shard_plan(config, [], num_shards)  # validate the shard count before any work
    _prepare_out_dir(out_dir, overwrite)
    _reclaim_stale(out_dir)
    pid, old = os.getpid(), None
    with _sigterm_aborts(out_dir):
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{pid}-", dir=out_dir.parent))
            _default_permissions(tmp)
        except OSError as err:
            raise OutputDirError(f"cannot create {out_dir} ({err.strerror}); choose a writable --out") from None
        try:
            _write_into(tmp, raw, config, fp8=fp8, seed=seed, num_shards=num_shards, tensors=tensors,
                        tokenizer_dir=tokenizer_dir)
            if out_dir.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{pid}-", dir=out_dir.parent))
                out_dir.rename(old / "replaced")  # move aside, so a failed rename below loses nothing
            tmp.rename(out_dir)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)  # ours alone (rmtree never follows a symlink)
            if old is not None:
                try:
                    if (old / "replaced").is_dir() and not out_dir.exists():
                        (old / "replaced").rename(out_dir)  # put the old checkpoint back
                    os.rmdir(old)  # only once empty: the old checkpoint is never deleted here
                except OSError:
                    log.warning("the previous checkpoint of %s is kept in %s", out_dir, old)
            if isinstance(err, OSError):
                raise OutputDirError(f"writing {out_dir} failed ({err}); nothing was written - free space or "
                                     "choose another --out") from None
            raise
        if old is not None:  # unlink only checkpoint files, never following a symlink; anything else stays
            if not (_remove_checkpoint_dir(old / "replaced") and _remove_checkpoint_dir(old)):
                log.warning("could not remove all of the replaced checkpoint in %s; remove it by hand", old)
    return out_dir
