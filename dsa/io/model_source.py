"""From `--device` and `--model` to a ready engine: resolve the model, plan, build, fill weights.

Model sources:
  (none)                 the built-in trained model (dsa/configs/models/mini, rebuilt by `dsa train`)
  NAME                   a model shipped in dsa/configs/models/NAME: a checkpoint (mini) or a config with
                         seeded random weights (tiny, deepseek-v3.2-exp)
  path/to/config.json    that config (random weights)
  DIR with config.json   that config; if DIR holds *.safetensors they are the weights
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from dsa.configs import CONFIG_DIR
from dsa.errors import DsaError
from dsa.io.tokenizer import clean_text
from dsa.model.config import ModelConfig

BUILTIN_MODEL = "mini"  # the trained checkpoint (dsa train); "tiny" is the random-weight test model


@dataclass(frozen=True)
class ModelSource:
    name: str
    config: ModelConfig
    checkpoint_dir: Optional[Path]  # None = seeded random weights

    @property
    def random_weights(self) -> bool:
        return self.checkpoint_dir is None


def builtin_models() -> list[str]:
    return sorted(p.parent.name for p in (CONFIG_DIR / "models").glob("*/config.json"))


def resolve_model(arg: Optional[str]) -> ModelSource:
    if arg is None:
        arg = BUILTIN_MODEL
    path = Path(arg).expanduser()
    if path.is_file():
        return ModelSource(path.stem, ModelConfig.from_file(path), None)
    if path.is_dir():
        config = ModelConfig.from_file(path)
        has_weights = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
        pickled = sorted(p.name for ext in ("bin", "pt", "pth", "ckpt") for p in path.glob(f"*.{ext}"))
        if pickled and not has_weights:
            raise DsaError(f"{path} holds {pickled[0]} but no *.safetensors: only safetensors checkpoints are loaded "
                           "(pickled weights can run code); convert them, or download the safetensors release")
        return ModelSource(path.name, config, path if has_weights else None)
    shipped = CONFIG_DIR / "models" / arg
    if "/" not in arg and (shipped / "config.json").is_file():  # a built-in model: a config, or a whole checkpoint
        weights = shipped if any(shipped.glob("*.safetensors")) else None
        return ModelSource(arg, ModelConfig.from_file(shipped / "config.json"), weights)
    raise DsaError(
        f"model {arg!r} not found: give a checkpoint directory, a config.json, or a built-in model name "
        f"({', '.join(builtin_models())})"
    )


def _available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_random_weights_fit(source: ModelSource, bytes_per_param: int = 2) -> None:
    from dsa.model.weights import hf_tensor_specs

    numel = 0
    for shape, _dtype in hf_tensor_specs(source.config, fp8=False).values():
        n = 1
        for d in shape:
            n *= d
        numel += n
    need = numel * bytes_per_param
    if need > _available_memory_bytes() // 2:
        raise DsaError(
            f"random weights for model {source.name!r} need {need / 2**30:.1f} GiB, more than half of the "
            f"{_available_memory_bytes() / 2**30:.1f} GiB free here; use the built-in model ({BUILTIN_MODEL}) "
            "or a real checkpoint on hardware that holds it (see `dsa plan`)"
        )


def build_model(source: ModelSource, opset, *, dtype: torch.dtype, kv_cache_dtype: str, indexer_fp8: bool = True,
                seed: int = 0, weights: str = "bf16", progress: Optional[bool] = None, parallel=None,
                device: torch.device | str = "cpu"):
    """The shared graph with weights: seeded random for configs, the checkpoint for directories.

    weights (the plan's): "fp8" keeps a checkpoint's fp8 weights + block scales, "bf16" dequantises them
    to `dtype`. Checkpoints are checked (dsa.io.checkpoint_loader) before any tensor data is read. parallel: a
    dsa.model.parallel_groups.ParallelGroups; this rank gets (and, from a checkpoint, reads) only its parts.
    """
    from dsa.model.transformer import DeepseekV32
    from dsa.model.weights import random_checkpoint

    if not source.random_weights:
        from dsa.io.checkpoint_loader import load_model

        return load_model(source.checkpoint_dir, opset, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
                          indexer_fp8=indexer_fp8, weights=weights, progress=progress, parallel=parallel,
                          device=device)
    check_random_weights_fit(source)
    with torch.device("cpu"):
        model = DeepseekV32(source.config, opset, dtype=dtype, kv_cache_dtype=kv_cache_dtype, indexer_fp8=indexer_fp8,
                            fp8_weights=False)  # random weights are generated unquantised
    model.load_hf_state_dict(random_checkpoint(source.config, seed, fp8=False, dtype=dtype))
    if parallel is not None:  # every rank draws the same weights, then keeps its parts
        from dsa.model.parallel import parallelize

        parallelize(model, parallel)
    return model.to(device).eval()


def load_source_tokenizer(source: ModelSource):
    """A checkpoint's tokenizer.json (required); the built-in byte tokenizer for random-weight models."""
    from dsa.io.tokenizer import ByteTokenizer, load_tokenizer

    if source.checkpoint_dir is not None:
        return load_tokenizer(source.checkpoint_dir)
    if source.config.vocab_size < ByteTokenizer.vocab_size:
        raise DsaError(f"model {source.name!r} has vocab_size {source.config.vocab_size}, smaller than the "
                       f"built-in byte tokenizer's {ByteTokenizer.vocab_size}; give a directory with a tokenizer.json")
    return ByteTokenizer()


def prompt_ids(tokenizer, text: str, chat: Optional[bool] = None) -> list[int]:
    """Token ids of a user prompt. chat None: the chat template when the tokenizer has one, else the text
    as is; True: the template (TokenizerError without one); False: the text as is."""
    text = clean_text(text)
    if chat is None:
        chat = tokenizer.chat_template is not None
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return tokenizer.encode(text)
