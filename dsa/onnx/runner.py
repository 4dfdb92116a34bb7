"""Generation with onnxruntime's CPU provider over a graph written by dsa.onnx.export.

    for token in generate("out/mini-onnx", prompt_ids, max_new_tokens=64, temperature=0):
        ...

One prefill step over the prompt, then one-token decode steps, each feeding back the cache rows the
graph returned (dsa.onnx.graph: a contiguous single-sequence cache). The rows live in buffers sized for
the context limit, so a step copies only its new rows. Sampling is the engine's
(dsa.engine.sampling.sample: greedy at temperature 0, else temperature / top-p with a seeded generator),
and generation stops at eos (unless ignore_eos), a stop token, max_new_tokens or the context limit.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from dsa.engine.sampling import SamplingParams, sample
from dsa.errors import DsaError, InputError

META_FILE, MODEL_FILE, FORMAT = "onnx.json", "model.onnx", "dsa-onnx/1"
NUMPY_DTYPES = {"fp32": np.float32, "fp16": np.float16}


def read_meta(directory: str | Path) -> dict:
    """The export's onnx.json; a DsaError naming the fix when the directory is not an export of ours."""
    path = Path(directory).expanduser() / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DsaError(f"{path.parent} is not an ONNX export (no {META_FILE}); write one with "
                       "`dsa export onnx --out DIR`") from None
    except (OSError, ValueError) as err:
        raise DsaError(f"{path} cannot be read ({err}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DsaError(f"{path} is not a {FORMAT} description; export the model again with this version")
    return meta


class OnnxModel:
    """An onnxruntime session over model.onnx with the export's description; `step` runs one forward."""

    def __init__(self, directory: str | Path, threads: Optional[int] = None):
        import onnxruntime as ort

        self.directory = Path(directory).expanduser()
        self.meta = read_meta(self.directory)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.directory / MODEL_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self.num_layers = self.meta["num_layers"]
        self.max_seq_len = self.meta["max_seq_len"]
        self.dtype = NUMPY_DTYPES[self.meta["dtype"]]
        self.eos_token_ids = tuple(self.meta.get("eos_token_ids", ()))

    def new_cache(self) -> "RowCache":
        return RowCache(self.num_layers, self.meta["latent_dim"], self.meta["index_head_dim"], self.max_seq_len,
                        self.dtype)

    def step(self, ids: Sequence[int], cache: "RowCache") -> np.ndarray:
        """Run the new tokens `ids` after the cache's rows; appends their rows; returns logits [T, vocab] fp32."""
        T, P = len(ids), cache.length
        if T < 1 or P + T > self.max_seq_len:
            raise InputError(f"{P} cached + {T} new tokens do not fit the exported context of {self.max_seq_len}")
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64), "positions": np.arange(P, P + T, dtype=np.int64)}
        for layer in range(self.num_layers):
            feeds[f"past_latent_{layer}"] = cache.latent[layer][:P]
            feeds[f"past_index_{layer}"] = cache.index[layer][:P]
        logits, *rows = self.session.run(None, feeds)
        cache.append(rows)
        return logits


class RowCache:
    """The latent and index-key rows of one sequence, per layer, in buffers of the context limit."""

    def __init__(self, num_layers: int, latent_dim: int, index_dim: int, max_len: int, dtype):
        self.latent = [np.zeros((max_len, latent_dim), dtype=dtype) for _ in range(num_layers)]
        self.index = [np.zeros((max_len, index_dim), dtype=dtype) for _ in range(num_layers)]
        self.length = 0

    def append(self, rows: Sequence[np.ndarray]) -> None:
        T = rows[0].shape[0]
        for layer in range(len(self.latent)):
            self.latent[layer][self.length:self.length + T] = rows[2 * layer]
            self.index[layer][self.length:self.length + T] = rows[2 * layer + 1]
        self.length += T


def generate(model: str | Path | OnnxModel, prompt_ids: Sequence[int], max_new_tokens: Optional[int] = None, *,
             params: Optional[SamplingParams] = None, threads: Optional[int] = None, stats=None) -> Iterator[int]:
    """Yield the generated token ids one by one (greedy unless `params` says otherwise).

    model: an export directory or an OnnxModel. max_new_tokens overrides params.max_new_tokens. Stops by the
    engine's rules (dsa.engine.core): at eos (unless params.ignore_eos) or a stop token (neither is yielded),
    after max_new_tokens, or when prompt + output fill the exported context. `stats` (e.g. a
    dsa.engine.engine.GenerationStats), if given, gets the stop_reason: eos | stop_token | length | context."""
    onnx_model = model if isinstance(model, OnnxModel) else OnnxModel(model, threads)
    params = params or SamplingParams(temperature=0.0)
    if max_new_tokens is not None:
        params = dataclasses.replace(params, max_new_tokens=max_new_tokens)
    ids = [int(t) for t in prompt_ids]
    vocab = onnx_model.meta["vocab_size"]
    if not ids:
        raise InputError("the prompt is empty; give at least one token")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise InputError(f"prompt token {bad[0]} is outside the vocabulary [0, {vocab})")
    if len(ids) >= onnx_model.max_seq_len:
        raise InputError(f"the prompt has {len(ids)} tokens but the export holds {onnx_model.max_seq_len} "
                         "positions; shorten the prompt or export with a larger --max-seq-len")
    eos = set() if params.ignore_eos else set(onnx_model.eos_token_ids)
    generator = params.make_generator()
    cache = onnx_model.new_cache()
    step, produced = ids, 0
    while True:
        logits = onnx_model.step(step, cache)
        token = sample(torch.from_numpy(logits[-1]), params, generator)
        reason = "eos" if token in eos else "stop_token" if token in params.stop_token_ids else None
        if reason is None:
            yield token
            produced += 1
            reason = ("length" if produced >= params.max_new_tokens
                      else "context" if len(ids) + produced >= onnx_model.max_seq_len else None)
        if reason is not None:
            if stats is not None:
                stats.stop_reason = reason
            return
        step = [token]


def load_tokenizer(directory: str | Path):
    """The export's tokenizer: the copied tokenizer.json, or the built-in byte tokenizer (random-weight models)."""
    from dsa.io.tokenizer import ByteTokenizer
    from dsa.io.tokenizer import load_tokenizer as load_hf

    directory = Path(directory).expanduser()
    return load_hf(directory) if (directory / "tokenizer.json").is_file() else ByteTokenizer()
