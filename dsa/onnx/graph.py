"""The exported module: the model's own forward over one sequence, with tensors in and tensors out.

The model's forward takes (ids, Batch, PagedCache) objects; ONNX graphs take tensors. `OnnxGraph` is the
thin wrapper between them: it runs the same `DeepseekV32.forward` (every op through the HAL, so every
HAL op becomes its ONNX translation) with a `ContiguousCache` in place of the PagedCache.

Why a contiguous single-sequence cache, not the paged one: an ONNX runtime session has no block manager,
prefix cache or scheduler to hand out pages, so a block table would be a constant identity mapping that
every caller has to build and keep; the honest interface is "the rows of the tokens before, in order".
The runner (dsa.onnx.runner) keeps them as plain arrays and appends the rows the graph returns. Every
step therefore runs the prefill path of the attention (sparse_mla_prefill over the gathered rows: the
same function as decode for one sequence); sparse_mla_decode has its translation all the same.

Inputs  input_ids [T] int64, positions [T] int64 (= P, P+1, ... P+T-1: cache row p is position p),
        then per layer l: past_latent_l [P, latent_dim] and past_index_l [P, index_head_dim] (model dtype)
Outputs logits [T, vocab] fp32, then per layer l: latent_l [T, latent_dim], index_l [T, index_head_dim]
        (the new tokens' rows, to append to the past ones for the next step)

Index keys are stored dequantised (k * its power-of-two scale, exact in the model dtype), so the cache
inputs are two plain tensors per layer; the indexer's fp8 rounding of q and k happens inside the graph.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dsa.model.cache import Batch


def input_names(num_layers: int) -> list[str]:
    names = ["input_ids", "positions"]
    for layer in range(num_layers):
        names += [f"past_latent_{layer}", f"past_index_{layer}"]
    return names


def output_names(num_layers: int) -> list[str]:
    names = ["logits"]
    for layer in range(num_layers):
        names += [f"latent_{layer}", f"index_{layer}"]
    return names


class ContiguousCache:
    """The PagedCache interface the model uses, over the past rows of one sequence (given) plus the new ones
    (written by the forward, then returned as outputs). Nothing is written in place."""

    page_size = 1  # Batch.page_size must match; no pages are used

    def __init__(self, model, past: list[tuple[Tensor, Tensor]]):
        self.kv_cache_dtype, self.indexer_fp8, self.dtype = model.kv_cache_dtype, model.indexer_fp8, model.dtype
        self.latent = [latent for latent, _ in past]  # [P, latent_dim] per layer (len() is checked by the model)
        self.index = [index for _, index in past]  # [P, index_head_dim]
        self.new_latent: list[Tensor] = [None] * len(past)
        self.new_index: list[Tensor] = [None] * len(past)

    def write_latent(self, layer: int, batch: Batch, latent: Tensor) -> None:
        self.new_latent[layer] = latent.to(self.dtype)

    def write_index(self, layer: int, batch: Batch, k: Tensor, k_scale: Tensor) -> None:
        # the scale is a power of two (or 1): k * scale is exact, and relu(q . k) * s == relu(q . (k * s))
        self.new_index[layer] = (k.float() * k_scale.float()[:, None]).to(self.dtype)

    def gather_latent(self, layer: int, batch: Batch) -> Tensor:
        return torch.cat([self.latent[layer], self.new_latent[layer]]).unsqueeze(1)  # [S, 1, latent_dim]

    def gather_index(self, layer: int, batch: Batch) -> tuple[Tensor, Tensor]:
        keys = torch.cat([self.index[layer], self.new_index[layer]])  # [S, Di]
        return keys, torch.ones(keys.shape[0], dtype=torch.float32, device=keys.device)


def sequence_batch(positions: Tensor) -> Batch:
    """The Batch of T new tokens of one sequence at `positions` (P..P+T-1) over a contiguous cache: sequence 0
    at rows 0..P+T-1. Slots are cache rows; the block table is unused (page_size 1)."""
    zero = positions.new_zeros(1)
    seq_len = positions[-1:] + 1  # [1] = P + T
    new = torch.ones_like(positions).sum(0, keepdim=True)  # [1] = T
    return Batch(
        positions=positions, seq_idx=torch.zeros_like(positions), query_start=torch.cat([zero, new]),
        context_lens=(seq_len - new).to(torch.int32), seq_lens=seq_len.to(torch.int32),
        block_table=zero.to(torch.int32)[None], kv_start=torch.cat([zero, seq_len]), slots=positions,
        cached_slots=torch.zeros_like(positions),  # unused: ContiguousCache gathers by concatenation
        is_decode=False, page_size=ContiguousCache.page_size,
    )


class OnnxGraph(nn.Module):
    """(input_ids, positions, *past rows) -> (logits, *new rows); see the module docstring."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = len(model.model.layers)

    def forward(self, input_ids: Tensor, positions: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        cache = ContiguousCache(self.model, [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)])
        logits = self.model(input_ids, sequence_batch(positions), cache)  # [T, vocab] fp32
        rows = []
        for layer in range(self.num_layers):
            rows += [cache.new_latent[layer], cache.new_index[layer]]
        return (logits, *rows)
