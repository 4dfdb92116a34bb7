"""Paged caches (MLA latent + indexer keys) and the per-step `Batch` (dsa.engine.block_manager hands out blocks).

Every sequence owns a list of fixed-size pages (blocks); the token at logical position p of sequence
b lives in block `block_table[b, p // page]`, slot `p % page`. Per layer the cache holds

    latent[l]       [num_blocks, page, 1, latent_dim]  model dtype  ("bf16": [c_kv ; k_pe] unquantised)
                    [num_blocks, page, 1, P] uint8                  ("fp8": dsa.hal.kv_format, P = 656)
    index_k[l]      [num_blocks, page, index_head_dim] float8_e4m3fn (model dtype when indexer_fp8=False)
    index_scale[l]  [num_blocks, page] float32                       (ones when indexer_fp8=False)

The attention writes new tokens with `write_*` and reads whole sequences back, packed one after the
other, with `gather_*` (row `batch.kv_start[b] + p` = position p of sequence b).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from dsa.hal import kv_format
from dsa.model.config import ModelConfig

KV_CACHE_DTYPES = ("bf16", "fp8")


@dataclass(frozen=True)
class Batch:
    """Where the T new tokens of one forward step sit in their B sequences (all tensors, one device)."""

    positions: Tensor  # [T] int64    position of each new token in its sequence
    seq_idx: Tensor  # [T] int64      which sequence each token belongs to
    query_start: Tensor  # [B+1] int64 tokens of sequence b are rows query_start[b]:query_start[b+1]
    context_lens: Tensor  # [B] int32 tokens already cached before this step
    seq_lens: Tensor  # [B] int32     context_lens + new tokens
    block_table: Tensor  # [B, max_blocks] int32 (padded with 0)
    kv_start: Tensor  # [B+1] int64   sequence b's rows in a gathered (packed) cache: kv_start[b]:kv_start[b+1]
    slots: Tensor  # [T] int64        flat cache slot (block * page + offset) of each new token
    cached_slots: Tensor  # [S] int64 flat slot of positions 0..seq_len-1 of every sequence, packed in order
    is_decode: bool  # every sequence has exactly one new token (T == B)
    page_size: int
    max_seq_len: Optional[int] = None  # host int >= every seq_len (None: unknown, e.g. while tracing)

    @classmethod
    def build(
        cls,
        new_lens: Sequence[int],
        context_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        page_size: int,
        device: Optional[torch.device | str] = None,
    ) -> "Batch":
        if not len(new_lens) == len(context_lens) == len(block_tables) or not new_lens:
            raise ValueError("new_lens, context_lens and block_tables need one entry per sequence (at least one)")
        for b, (n, c, blocks) in enumerate(zip(new_lens, context_lens, block_tables)):
            if n < 1 or c < 0:
                raise ValueError(f"sequence {b}: new_lens must be >= 1 and context_lens >= 0, got {n}, {c}")
            if len(blocks) * page_size < n + c:
                raise ValueError(f"sequence {b}: {n + c} tokens need {-(-(n + c) // page_size)} blocks, "
                                 f"got {len(blocks)}")
        new = torch.tensor(list(new_lens), dtype=torch.int64)
        ctx = torch.tensor(list(context_lens), dtype=torch.int64)
        B = len(new_lens)
        seq_idx = torch.repeat_interleave(torch.arange(B), new)  # [T]
        query_start = torch.zeros(B + 1, dtype=torch.int64)
        query_start[1:] = new.cumsum(0)
        positions = ctx[seq_idx] + torch.arange(len(seq_idx)) - query_start[seq_idx]  # [T]
        kv_start = torch.zeros(B + 1, dtype=torch.int64)
        kv_start[1:] = (ctx + new).cumsum(0)
        table = torch.zeros(B, max(len(t) for t in block_tables), dtype=torch.int32)
        for b, blocks in enumerate(block_tables):
            table[b, : len(blocks)] = torch.tensor(list(blocks), dtype=torch.int32)
        seq_lens = ctx + new
        all_seq = torch.repeat_interleave(torch.arange(B), seq_lens)  # [S]
        all_pos = torch.arange(len(all_seq)) - kv_start[all_seq]
        batch = cls(
            positions=positions, seq_idx=seq_idx, query_start=query_start,
            context_lens=ctx.to(torch.int32), seq_lens=seq_lens.to(torch.int32), block_table=table,
            kv_start=kv_start, slots=_slot_of(table, seq_idx, positions, page_size),
            cached_slots=_slot_of(table, all_seq, all_pos, page_size),
            is_decode=bool((new == 1).all()), page_size=page_size, max_seq_len=max(n + c for n, c in
                                                                                 zip(new_lens, context_lens)),
        )
        return batch.to(device) if device is not None else batch

    @classmethod
    def static_decode(cls, seq_lens: Tensor, block_table: Tensor, page_size: int) -> "Batch":
        """A decode step (one new token per sequence, the last of each) built on the device from tensors
        alone, with shapes that depend only on B and the table's width: what a CUDA graph captures.

        seq_lens [B] int32 (>= 1, counting the new token), block_table [B, max_blocks] int32. Sequences are
        packed at a fixed stride L = max_blocks * page_size (sequence b at rows b*L .. b*L + L - 1 of a
        gathered cache, rows past its length masked by visible_range), so no size depends on the lengths.
        """
        B, max_blocks = block_table.shape
        L = max_blocks * page_size
        device = seq_lens.device
        seq_idx = torch.arange(B, device=device)  # [B]
        positions = seq_lens.long() - 1  # [B]
        table = block_table.to(torch.int32)
        all_seq = seq_idx.repeat_interleave(L, output_size=B * L)  # [B*L]
        all_pos = torch.arange(L, device=device).repeat(B)  # [B*L]
        return cls(
            positions=positions, seq_idx=seq_idx, query_start=torch.arange(B + 1, device=device),
            context_lens=(seq_lens - 1).to(torch.int32), seq_lens=seq_lens.to(torch.int32), block_table=table,
            kv_start=torch.arange(B + 1, device=device) * L, slots=_slot_of(table, seq_idx, positions, page_size),
            cached_slots=_slot_of(table, all_seq, all_pos, page_size), is_decode=True, page_size=page_size,
            max_seq_len=L,
        )

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.__dict__.items()}
        return Batch(**moved)

    def visible_range(self) -> tuple[Tensor, Tensor]:
        """Causal key range of each new token in the packed cache: starts, ends [T] int32."""
        starts = self.kv_start[self.seq_idx]
        return starts.to(torch.int32), (starts + self.positions + 1).to(torch.int32)


def _slot_of(block_table: Tensor, seq: Tensor, pos: Tensor, page: int) -> Tensor:
    return block_table[seq, pos // page].long() * page + pos % page


class PagedCache:
    """The latent (MLA) and index-key (indexer) caches of every layer."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        page_size: int = 16,
        kv_cache_dtype: str = "bf16",
        dtype: torch.dtype = torch.bfloat16,
        indexer_fp8: bool = True,
        device: torch.device | str = "cpu",
    ):
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")
        self.config, self.num_blocks, self.page_size = config, num_blocks, page_size
        self.kv_cache_dtype, self.dtype, self.indexer_fp8 = kv_cache_dtype, dtype, indexer_fp8
        self.d_v = config.kv_lora_rank
        layers = range(config.num_hidden_layers)
        if kv_cache_dtype == "fp8":
            row = (kv_format.packed_bytes(config.kv_lora_rank, config.qk_rope_head_dim),)
            self.latent = [torch.zeros(num_blocks, page_size, 1, *row, dtype=torch.uint8, device=device)
                           for _ in layers]
        else:
            self.latent = [torch.zeros(num_blocks, page_size, 1, config.latent_dim, dtype=dtype, device=device)
                           for _ in layers]
        k_dtype = torch.float8_e4m3fn if indexer_fp8 else dtype
        self.index_k = [torch.zeros(num_blocks, page_size, config.index_head_dim, dtype=k_dtype, device=device)
                        for _ in layers]
        self.index_scale = [torch.ones(num_blocks, page_size, dtype=torch.float32, device=device) for _ in layers]

    # ---- writes -----------------------------------------------------------------------------------
    def write_latent(self, layer: int, batch: Batch, latent: Tensor) -> None:
        """Store the new tokens' [c_kv ; k_pe] rows: latent [T, latent_dim]."""
        flat = self.latent[layer].view(-1, self.latent[layer].shape[-1])
        row = kv_format.pack(latent, self.d_v) if self.kv_cache_dtype == "fp8" else latent.to(self.dtype)
        flat[batch.slots] = row

    def write_index(self, layer: int, batch: Batch, k: Tensor, k_scale: Tensor) -> None:
        """Store the new tokens' index keys: k [T, index_head_dim] (fp8 or model dtype), k_scale [T] fp32."""
        slots = batch.slots
        self.index_k[layer].view(-1, self.index_k[layer].shape[-1])[slots] = k.to(self.index_k[layer].dtype)
        self.index_scale[layer].view(-1)[slots] = k_scale.float()

    # ---- reads ------------------------------------------------------------------------------------
    def gather_latent(self, layer: int, batch: Batch) -> Tensor:
        """Every cached row of every sequence, packed: [S, 1, latent_dim] in the model dtype."""
        cache = self.latent[layer]
        rows = cache.view(-1, 1, cache.shape[-1]).index_select(0, batch.cached_slots)  # on CPU ~6x faster than [slots]
        if self.kv_cache_dtype == "fp8":
            return kv_format.unpack(rows, self.d_v, self.dtype)
        return rows

    def gather_index(self, layer: int, batch: Batch) -> tuple[Tensor, Tensor]:
        """Every cached index key, packed like gather_latent: k [S, index_head_dim], scale [S] fp32."""
        slots = batch.cached_slots
        k = self.index_k[layer]
        return k.view(-1, k.shape[-1]).index_select(0, slots), self.index_scale[layer].view(-1).index_select(0, slots)
