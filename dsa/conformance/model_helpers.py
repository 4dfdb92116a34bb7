"""Helpers for the tiny-model tests: build a model + paged cache, run prefill / decode steps through
`Batch.build`, and record what the indexer selected (through a recording OpSet).

The model's ops come from provider "torch", or from $DSA_MODEL_PROVIDER where set (`dsa conformance`
sets it to run these tests once per provider): that provider's ops first, torch for the ops it lacks or
the calls it declines. PROVIDER_CALLS counts which provider actually ran each op."""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from dsa.engine.block_manager import BlockManager
from dsa.hal import OpSet, registry
from dsa.model.cache import Batch, PagedCache
from dsa.model.config import ModelConfig
from dsa.model.transformer import DeepseekV32
from dsa.model.weights import random_checkpoint

MODEL_PROVIDER_ENV = "DSA_MODEL_PROVIDER"
PROVIDER_CALLS: collections.Counter = collections.Counter()  # (op, provider that ran) -> calls

TINY = Path(__file__).resolve().parents[2] / "dsa/configs/models/tiny/config.json"
PAGE = 16


def tiny_config(**overrides) -> ModelConfig:
    cfg = ModelConfig.from_file(TINY)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
        cfg.validate()
    return cfg


def tiny_config_json(**overrides) -> dict:
    """The tiny config.json as a plain dict (json.load) with `overrides`: what the fp64 oracle reads (it
    derives its own values from it, never from ModelConfig)."""
    with open(TINY) as f:
        raw = json.load(f)
    raw.update(overrides)
    return raw


class RecordingOpSet(OpSet):
    """Every op from `provider` (default: $DSA_MODEL_PROVIDER, else torch), torch where it has no provider
    of an op or declines a call; keeps every indexer_topk call: (args, indices)."""

    def __init__(self, provider: Optional[str] = None):
        provider = provider or os.environ.get(MODEL_PROVIDER_ENV) or "torch"
        if not any(provider in registry.providers(op) for op in registry.OPS):
            raise ValueError(f"{MODEL_PROVIDER_ENV}: provider {provider!r} has registered no op here")
        order = dict.fromkeys([provider, "torch"])  # the provider, then torch as the fallback
        have = {op: registry.providers(op) for op in registry.OPS}
        super().__init__({op: registry.Selection(op, [have[op][n] for n in order if n in have[op]])
                          for op in registry.OPS})
        self.topk_calls: list[tuple[tuple, Tensor]] = []

    def call(self, op: str, *args):
        ran = next((p.name for p in self.selections[op].usable if p.supports_args(*args) is None), None)
        PROVIDER_CALLS[(op, ran)] += 1
        out = super().call(op, *args)
        if op == "indexer_topk":
            self.topk_calls.append((args, out))
        return out


class Runner:
    """A model, its paged cache and the per-sequence bookkeeping of a serving loop."""

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, Tensor],
        *,
        dtype: torch.dtype = torch.float32,
        kv_cache_dtype: str = "bf16",
        indexer_fp8: bool = True,
        fp8_weights: Optional[bool] = None,
        num_blocks: int = 32,
        page_size: int = PAGE,
    ):
        self.config = config
        self.ops = RecordingOpSet()
        self.model = DeepseekV32(config, self.ops, dtype=dtype, kv_cache_dtype=kv_cache_dtype, indexer_fp8=indexer_fp8,
                                 fp8_weights=fp8_weights)
        self.model.load_hf_state_dict(weights)
        self.model.eval()
        self.cache = PagedCache(
            config, num_blocks=num_blocks, page_size=page_size, kv_cache_dtype=kv_cache_dtype, dtype=dtype,
            indexer_fp8=indexer_fp8,
        )
        self.alloc = BlockManager(num_blocks, page_size, enable_prefix_caching=False)
        self.page = page_size
        self.blocks: dict[object, list[int]] = {}
        self.lens: dict[object, int] = {}
        # per step: list over layers of {seq: (positions [n], selection [n, k] positions in the sequence)}
        self.selections: list[list[dict]] = []

    def step(self, new: dict) -> dict:
        """new: {seq_id: token ids}; runs one forward over all of them; returns {seq_id: logits [n, V]}."""
        seqs = list(new)
        ids = [torch.as_tensor(new[s], dtype=torch.long).flatten() for s in seqs]
        for s, t in zip(seqs, ids):
            total = self.lens.get(s, 0) + t.numel()
            have = self.blocks.setdefault(s, [])
            need = math.ceil(total / self.page) - len(have)
            if need > 0:
                have += self.alloc.allocate(need)
        batch = Batch.build(
            new_lens=[t.numel() for t in ids], context_lens=[self.lens.get(s, 0) for s in seqs],
            block_tables=[self.blocks[s] for s in seqs], page_size=self.page,
        )
        self.ops.topk_calls.clear()
        with torch.no_grad():
            logits = self.model(torch.cat(ids), batch, self.cache)
        self.selections.append([self._split(args, out, batch, seqs) for args, out in self.ops.topk_calls])
        out, start = {}, 0
        for s, t in zip(seqs, ids):
            out[s] = logits[start:start + t.numel()]
            start += t.numel()
            self.lens[s] = self.lens.get(s, 0) + t.numel()
        return out

    @staticmethod
    def _split(args, indices: Tensor, batch: Batch, seqs: Sequence) -> dict:
        """indexer_topk indices (positions in the packed keys) -> per sequence positions in the sequence.
        The packed keys hold each sequence's cached tokens contiguously in order, so the position in
        the sequence is index - starts[t] (starts = where the query's sequence begins)."""
        starts = args[4].long()
        rel = indices.long() - starts[:, None]
        rel[indices < 0] = -1
        out = {}
        for b, s in enumerate(seqs):
            lo, hi = int(batch.query_start[b]), int(batch.query_start[b + 1])
            out[s] = (batch.positions[lo:hi].clone(), rel[lo:hi].clone())
        return out

    def cache_latents(self, seq, length: int) -> list[Tensor]:
        """Per layer, the latent-cache rows the model stored for positions 0..length-1 of `seq`: [length, P]
        as held (packed fp8 uint8, or bf16 / fp32), read straight from the cache's pages."""
        pos = torch.arange(length)
        blocks = torch.tensor(self.blocks[seq], dtype=torch.long)[pos // self.page]
        return [lat[blocks, pos % self.page, 0].clone() for lat in self.cache.latent]

    def selection_mask(self, seq, layer: int, length: int) -> Tensor:
        """[length, length] bool: what each query of `seq` selected in `layer`, over all steps so far."""
        mask = torch.zeros(length, length + 1, dtype=torch.bool)
        for step in self.selections:
            if layer < len(step) and seq in step[layer]:
                pos, sel = step[layer][seq]
                sel = sel.clone()
                sel[sel < 0] = length
                mask[pos[:, None].expand_as(sel), sel] = True
        return mask[:, :length]


def run_prefill_decode(runner: Runner, ids: Tensor, chunks: Sequence[int], seq="s") -> Tensor:
    """Feed ids[:sum(chunks)] in prefill chunks, then the rest one token per step; return all logits."""
    out, start = [], 0
    for n in chunks:
        out.append(runner.step({seq: ids[start:start + n]})[seq])
        start += n
    while start < ids.numel():
        out.append(runner.step({seq: ids[start:start + 1]})[seq])
        start += 1
    return torch.cat(out)


def make_weights(
    config: ModelConfig, seed: int, fp8: bool = False, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """A seeded random HF checkpoint; its bf16 entries are made in `dtype` (the fp32 test model loads
    tensors of its own dtype)."""
    return random_checkpoint(config, seed, fp8=fp8, dtype=dtype)


def token_ids(config: ModelConfig, n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(2, config.vocab_size, (n,), generator=g)


def max_rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (float64)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def min_boundary_gap(config, weights: dict, ids: Tensor, **ref_kw) -> float:
    """Smallest gap, relative to the row's largest |score|, between the k-th and (k+1)-th reference
    index score over every layer and every query that has more than k visible keys. 0 = an exact tie
    at the top-k boundary (ReLU makes all-zero scores common with random weights), where two correct
    implementations may legally select different keys. `config`: config.json, its path or json.load dict."""
    from dsa.conformance.reference.model_ref import ref_config, reference_logits

    config = ref_config(config)
    _, aux = reference_logits(config, weights, ids, return_aux=True, **ref_kw)
    k, worst = config.index_topk, float("inf")
    for scores in aux["scores"]:
        for t in range(k, ids.numel()):
            row = scores[t, : t + 1].sort(descending=True).values
            worst = min(worst, float((row[k - 1] - row[k]) / row.abs().max()))
    return worst


def assert_same_selection(a: Runner, sa, b: Runner, sb, length: int) -> None:
    for layer in range(a.config.num_hidden_layers):
        ma, mb = a.selection_mask(sa, layer, length), b.selection_mask(sb, layer, length)
        rows = (ma != mb).any(1).nonzero().flatten().tolist()
        assert not rows, f"layer {layer}: the indexer selected other keys for queries {rows}"
