"""The token stream the model trains on, and the windows cut from it.

The stream is every file's ids followed by eos (1), files in corpus order, as one int32 tensor. Encoding the
whole corpus takes a while on CPU, so `cached_stream` keeps it as a safetensors file (never pickle) keyed by a
sha256 of the tokenizer.json bytes and the files' pin: the same tokenizer and files load it back, anything else
encodes afresh under another name.

`Batches` draws [B, seq_len + 1] windows (inputs and the next-token targets in one) at random offsets from its
own seeded torch.Generator, so a run is reproducible and independent of the global random state;
`eval_windows` cuts evenly spaced windows for a deterministic held-out perplexity.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from dsa.errors import InputError
from dsa.train.corpus import corpus_pin, read_text

EOS_ID = 1  # dsa.train.tokenizer's <|end_of_text|>, the runtime's eos
BOS_ID = 0  # <|begin_of_text|> (dsa.train.tokenizer)
CACHE_FORMAT = "dsa-train-stream-v2"  # part of the key: a change of the stream's layout gets new cache files
_TENSOR = "ids"


def encode_corpus(tokenizer, files: Sequence[Path]) -> torch.Tensor:
    """The int32 stream of `files` with a `tokenizers.Tokenizer`: per file bos, its ids, eos (the runtime starts
    every prompt with bos, so the model must have seen it where a text begins). Special-token
    strings inside a file are encoded as the text they are, so the only eos in the stream are the separators."""
    before = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        encodings = tokenizer.encode_batch([read_text(p) for p in files], add_special_tokens=False)
    finally:
        tokenizer.encode_special_tokens = before
    pieces = [torch.tensor([BOS_ID, *e.ids, EOS_ID], dtype=torch.int32) for e in encodings]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int32)


def stream_key(tokenizer_json: bytes, files: Sequence[Path], root: Optional[Path] = None) -> str:
    """sha256 of the cache format, the tokenizer.json bytes and the files' pin (names, contents, order)."""
    pin = corpus_pin(files, root)
    digest = hashlib.sha256(f"{CACHE_FORMAT}\0".encode())
    digest.update(hashlib.sha256(tokenizer_json).digest())
    digest.update(f"{pin.files}\0{pin.sha256}".encode())
    return digest.hexdigest()


def _load_cached(path: Path, key: str) -> Optional[torch.Tensor]:
    """The stream in `path` if it is a readable cache file of `key`, else None (then it is rebuilt)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor(_TENSOR)
    except Exception:  # a truncated or foreign file: encode again and overwrite it
        return None


def _save_cached(path: Path, key: str, stream: torch.Tensor) -> None:
    """Writes the cache file through a temporary sibling, so a crash never leaves half a file under its name."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({_TENSOR: stream.contiguous()}, str(tmp), metadata={"key": key, "format": CACHE_FORMAT})
    os.replace(tmp, path)


def cached_stream(cache_dir: str | Path, tokenizer_json: bytes, files: Sequence[Path],
                  root: Optional[Path] = None) -> torch.Tensor:
    """encode_corpus of `files` with the tokenizer of `tokenizer_json` (its bytes), from
    `cache_dir/stream-<key>.safetensors` when there, else encoded and stored there. `root` is the corpus
    root the pin names files by (default: the stdlib)."""
    from tokenizers import Tokenizer

    key = stream_key(tokenizer_json, files, root)
    path = Path(cache_dir) / f"stream-{key[:32]}.safetensors"
    stream = _load_cached(path, key)
    if stream is None:
        stream = encode_corpus(Tokenizer.from_str(tokenizer_json.decode("utf-8")), files)
        _save_cached(path, key, stream)
    return stream


def _check_length(stream: torch.Tensor, seq_len: int) -> None:
    if seq_len < 1 or stream.dim() != 1 or stream.numel() < seq_len + 1:
        raise InputError(f"a stream of {stream.numel()} tokens is too short for windows of seq_len {seq_len} "
                         "(+1 target); use a shorter --seq-len or more files")


def _windows(stream: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    """Rows stream[s : s + width] for each start, as int64 (what embedding lookups and the loss take)."""
    return stream[starts[:, None] + torch.arange(width)].long()


class Batches:
    """An endless iterator of [batch_size, seq_len + 1] int64 windows of `stream` at random offsets: row[:-1]
    is the input, row[1:] the targets. Offsets come from a torch.Generator seeded with `seed`: the same
    arguments give the same batches; `generator.get_state()` / `set_state()` resume a run."""

    def __init__(self, stream: torch.Tensor, seq_len: int, batch_size: int, seed: int):
        _check_length(stream, seq_len)
        if batch_size < 1:
            raise InputError(f"batch_size {batch_size} must be >= 1")
        self.stream, self.seq_len, self.batch_size = stream, seq_len, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        width = self.seq_len + 1
        starts = torch.randint(0, self.stream.numel() - width + 1, (self.batch_size,), generator=self.generator)
        return _windows(self.stream, starts, width)


def eval_windows(stream: torch.Tensor, seq_len: int, n: int) -> torch.Tensor:
    """[n, seq_len + 1] int64 windows at evenly spaced offsets, first at 0 and last at the stream's end (they
    overlap when the stream is short): a deterministic held-out set, the same on every run."""
    _check_length(stream, seq_len)
    if n < 1:
        raise InputError(f"the number of evaluation windows must be >= 1, not {n}")
    width = seq_len + 1
    span = stream.numel() - width
    starts = torch.tensor([i * span // (n - 1) if n > 1 else 0 for i in range(n)], dtype=torch.long)
    return _windows(stream, starts, width)
