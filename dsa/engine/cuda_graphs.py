"""Decode steps replayed from CUDA graphs (on by default on CUDA, as in vLLM; `--enforce-eager` turns it off).

A decode step of B sequences is captured once per batch size of `capture_sizes()` and then replayed: the
host only copies the step's token ids, sequence lengths and block tables into static buffers. The graph
runs `Batch.static_decode` (shapes fixed by B and the block table's width) and the model, so the captured
region builds its batch on the device and reads nothing back (dsa.hal.capture; the CPU proof is
tests/model/test_static_decode.py). A step of n sequences replays the smallest captured size >= n; the
rows after n are padding: one token at position 0 whose cache writes go to a scratch block no request owns.

Capturing needs every chosen provider to be declared `capturable` (dsa.hal.registry): a provider that reads
its arguments on the host (the torch provider) keeps decode eager, and the engine logs why. So does a
non-CUDA device, a model wrapped for DP lockstep, and a capture that fails (the error is logged).

The static packing gathers every sequence's index keys at a fixed stride L (the block table's width in
tokens) per layer, so the workspace grows with B x L: capture_sizes() stops where one layer's gathered keys
would pass GATHER_BUDGET_BYTES, and larger decode batches run eagerly.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor

from dsa.hal.capture import static_region
from dsa.model.cache import Batch, PagedCache

log = logging.getLogger("dsa.engine")

MAX_CAPTURE_SIZE = 512  # vLLM's default largest captured decode batch
GATHER_BUDGET_BYTES = 1 << 30  # one layer's index keys gathered at the fixed stride, at the largest size


def capture_sizes(max_num_seqs: int, max_blocks: int, page_size: int, key_bytes: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, then multiples of 8 (vLLM's), up to max_num_seqs, MAX_CAPTURE_SIZE and
    the gather budget (key_bytes per gathered token: index key + scale)."""
    per_seq = max(1, max_blocks * page_size * key_bytes)
    top = min(max_num_seqs, MAX_CAPTURE_SIZE, GATHER_BUDGET_BYTES // per_seq)
    sizes = [b for b in (1, 2, 4) if b <= top] + list(range(8, top + 1, 8))
    return sizes


def unavailable(model, device: torch.device) -> Optional[str]:
    """Why decode cannot be captured for this model on this device (None: it can)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"CUDA graphs need a CUDA device (this engine runs on {device.type})"
    ops = getattr(model, "ops", None)
    if ops is None or not hasattr(ops, "selections"):
        return f"the model ({type(model).__name__}) does not run its ops through one OpSet"
    eager = [f"{op}: {sel.chosen.name}" for op, sel in ops.selections.items() if not sel.chosen.capturable]
    if eager:
        return ("these providers read their arguments on the host, so decode stays eager: " + ", ".join(eager)
                + " (choose capturable providers, e.g. triton, in the device profile)")
    return None


class DecodeGraphs:
    """Captured decode steps of `model` over `cache`, one per batch size; `run` replays the right one."""

    def __init__(self, model, cache: PagedCache, *, sizes: Sequence[int], max_blocks: int, scratch_block: int,
                 device: torch.device):
        if not sizes:
            raise ValueError("DecodeGraphs needs at least one batch size to capture")
        self.model, self.cache, self.device = model, cache, device
        self.sizes, self.max_blocks, self.scratch = sorted(sizes), max_blocks, scratch_block
        top = self.sizes[-1]
        self.ids = torch.zeros(top, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(top, dtype=torch.int32, device=device)
        self.table = torch.full((top, max_blocks), scratch_block, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[object, Tensor]] = {}  # B -> (CUDAGraph, its logits buffer [B, vocab])

    @property
    def max_size(self) -> int:
        return self.sizes[-1]

    def step(self, B: int) -> Tensor:
        """The captured body: the first B static rows through the model -> logits [B, vocab] fp32."""
        batch = Batch.static_decode(self.seq_lens[:B], self.table[:B], self.cache.page_size)
        return self.model(self.ids[:B], batch, self.cache, last_only=True)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first (its memory pool then serves the smaller ones)."""
        pool = None
        self._pad(0)  # every row a padding row: the warm-up and capture runs write only the scratch block
        for B in reversed(self.sizes):
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), static_region():
                self.step(B)  # warm-up: Triton compiles, allocator settles
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool), static_region():
                logits = self.step(B)
            pool = graph.pool()
            self.graphs[B] = (graph, logits)
        torch.cuda.synchronize(self.device)

    def _pad(self, n: int) -> None:
        self.ids[n:].zero_()
        self.seq_lens[n:].fill_(1)
        self.table[n:].fill_(self.scratch)

    def run(self, token_ids: Sequence[int], seq_lens: Sequence[int], block_tables: Sequence[Sequence[int]]) -> Tensor:
        """One decode step of n <= max_size sequences (their new token, length counting it, blocks) -> logits
        [n, vocab] fp32 (a view of the graph's buffer: use it before the next step)."""
        n = len(token_ids)
        B = next(b for b in self.sizes if b >= n)
        table = torch.full((n, self.max_blocks), self.scratch, dtype=torch.int32)
        for i, blocks in enumerate(block_tables):
            table[i, :len(blocks)] = torch.tensor(list(blocks), dtype=torch.int32)
        self.ids[:n].copy_(torch.tensor(list(token_ids), dtype=torch.long), non_blocking=True)
        self.seq_lens[:n].copy_(torch.tensor(list(seq_lens), dtype=torch.int32), non_blocking=True)
        self.table[:n].copy_(table, non_blocking=True)
        self._pad(n)
        if B not in self.graphs:  # not captured (a CPU test of the buffers): run the same body eagerly
            with static_region():
                return self.step(B)[:n]
        graph, logits = self.graphs[B]
        graph.replay()
        return logits[:n]


__all__ = ["DecodeGraphs", "GATHER_BUDGET_BYTES", "MAX_CAPTURE_SIZE", "capture_sizes", "unavailable"]
