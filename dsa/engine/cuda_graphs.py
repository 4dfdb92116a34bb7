"""Decode steps replayed from CUDA graphs (on by default on CUDA, as in vLLM; `--enforce-eager` turns it off).

A decode step of B sequences whose block tables are W blocks wide is captured once per (B, W) of
`capture_shapes()` and then replayed: the host only copies the step's token ids, sequence lengths and block
tables into static buffers. The graph runs `Batch.static_decode` (shapes fixed by B and W) and the model, so
the captured region builds its batch on the device and reads nothing back (dsa.hal.capture; the CPU proof is
tests/model/test_static_decode.py). A step of n sequences, the longest holding m blocks, replays the graph
of the smallest W >= m and, within it, the smallest B >= n; the rows after n are padding: one token at
position 0 whose cache writes go to a scratch block no request owns.

Capturing needs every chosen provider to be declared `capturable` (dsa.hal.registry): a provider that reads
its arguments on the host (the torch provider) keeps decode eager, and the engine logs why. So does a
non-CUDA device, a multi-rank layout (TP / EP collectives and the DP lockstep are not captured yet), and a
capture that fails (the error is logged).

The static packing gathers every sequence's index keys at a fixed stride (W blocks) per layer, so its cost
grows with B x W: widths are bucketed (CONTEXT_BUCKETS tokens, then the whole context) so that short
sequences do not pay for the longest context, and each width's sizes stop where one layer's gathered keys
would pass GATHER_BUDGET_BYTES. A step that fits no captured shape runs eagerly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from dsa.hal.capture import static_region
from dsa.model.cache import Batch, PagedCache

MAX_CAPTURE_SIZE = 512  # vLLM's default largest captured decode batch
GATHER_BUDGET_BYTES = 1 << 30  # one layer's index keys gathered at the fixed stride, at the largest size
CONTEXT_BUCKETS = (4096, 32768)  # block-table widths captured below the full context, in tokens


def capture_sizes(max_num_seqs: int, max_blocks: int, page_size: int, key_bytes: int) -> list[int]:
    """Batch sizes to capture at one width: 1, 2, 4, then multiples of 8 (vLLM's), up to max_num_seqs,
    MAX_CAPTURE_SIZE and the gather budget (key_bytes per gathered token: index key + scale)."""
    per_seq = max(1, max_blocks * page_size * key_bytes)
    top = min(max_num_seqs, MAX_CAPTURE_SIZE, GATHER_BUDGET_BYTES // per_seq)
    return [b for b in (1, 2, 4) if b <= top] + list(range(8, top + 1, 8))


def capture_shapes(max_num_seqs: int, max_blocks: int, page_size: int, key_bytes: int) -> dict[int, list[int]]:
    """Block-table width (blocks) -> batch sizes to capture at it: the CONTEXT_BUCKETS below the full context,
    then the full context (max_blocks). A width whose budget admits no batch size is left out."""
    buckets = {-(-t // page_size) for t in CONTEXT_BUCKETS}  # in blocks
    widths = sorted({w for w in buckets if w < max_blocks} | {max_blocks})
    shapes = {w: capture_sizes(max_num_seqs, w, page_size, key_bytes) for w in widths}
    return {w: sizes for w, sizes in shapes.items() if sizes}


def unavailable(model, device: torch.device) -> Optional[str]:
    """Why decode cannot be captured for this model on this device (None: it can)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"CUDA graphs need a CUDA device (this engine runs on {device.type})"
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return ("a multi-rank layout's decode is not captured yet (its collectives and the DP lockstep run "
                "outside a graph)")
    ops = getattr(model, "ops", None)
    if ops is None or not hasattr(ops, "selections"):
        return f"the model ({type(model).__name__}) does not run its ops through one OpSet"
    eager = [f"{op}: {sel.chosen.name}" for op, sel in ops.selections.items() if not sel.chosen.capturable]
    if eager:
        return ("these providers read their arguments on the host, so decode stays eager: " + ", ".join(eager)
                + " (choose capturable providers, e.g. triton, in the device profile)")
    return None


class DecodeGraphs:
    """Captured decode steps of `model` over `cache`, one per (batch size, table width); `run` replays one."""

    def __init__(self, model, cache: PagedCache, *, shapes: dict[int, Sequence[int]], scratch_block: int,
                 device: torch.device):
        shapes = {int(w): sorted(sizes) for w, sizes in shapes.items() if sizes}
        if not shapes:
            raise ValueError("DecodeGraphs needs at least one (width, batch size) to capture")
        self.model, self.cache, self.device = model, cache, device
        self.shapes, self.scratch = dict(sorted(shapes.items())), scratch_block
        self.max_size = top = max(max(s) for s in shapes.values())  # the largest batch any width captured
        # static inputs, every row padding until a step fills it: token 0 at position 0 in the scratch block
        self.ids = torch.zeros(top, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(top, dtype=torch.int32, device=device)
        self.tables = {w: torch.full((top, w), scratch_block, dtype=torch.int32, device=device) for w in shapes}
        self.graphs: dict[tuple[int, int], object] = {}  # (B, W) -> CUDAGraph
        self.logits: Optional[Tensor] = None  # [max_size, vocab] fp32, outside the graphs' pool; every graph writes it

    def shape_for(self, n: int, blocks: int) -> Optional[tuple[int, int]]:
        """The captured (B, W) a step of n sequences, the longest holding `blocks` blocks, replays (None: none fits)."""
        for w, sizes in self.shapes.items():
            if w >= blocks and sizes[-1] >= n:
                return next(b for b in sizes if b >= n), w
        return None

    def step(self, B: int, W: int) -> Tensor:
        """The captured body: the first B static rows at width W through the model -> logits [B, vocab] fp32."""
        batch = Batch.static_decode(self.seq_lens[:B], self.tables[W][:B], self.cache.page_size)
        return self.model(self.ids[:B], batch, self.cache, last_only=True)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every shape (once, before any run), the largest first (their memory pool then serves the
        smaller ones). Each graph copies its logits into one buffer allocated outside the pool, so no graph
        keeps its own alive."""
        pool = None  # the static rows are all padding still: warm-up and capture write only the scratch block
        with torch.cuda.device(self.device):
            for B, W in sorted(((b, w) for w, sizes in self.shapes.items() for b in sizes), key=lambda s: -s[0] * s[1]):
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream), static_region():
                    out = self.step(B, W)  # warm-up: Triton compiles, the allocator settles
                torch.cuda.current_stream(self.device).wait_stream(stream)
                if self.logits is None:
                    self.logits = torch.empty(self.max_size, out.shape[-1], dtype=out.dtype, device=self.device)
                del out
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool), static_region():
                    self.logits[:B].copy_(self.step(B, W))
                pool = graph.pool()
                self.graphs[(B, W)] = graph
            torch.cuda.synchronize(self.device)

    def run(self, token_ids: Sequence[int], seq_lens: Sequence[int],
            block_tables: Sequence[Sequence[int]]) -> Optional[Tensor]:
        """One decode step (each sequence's new token, its length counting it, its blocks) -> logits [n, vocab]
        fp32 (a view of the graph's buffer: use it before the next step), or None when no captured shape
        fits (the caller runs the step eagerly)."""
        n = len(token_ids)
        shape = self.shape_for(n, max(len(b) for b in block_tables))
        if shape is None:
            return None
        B, W = shape
        # the B rows the graph reads, built on the host with rows n.. as padding, then one copy each
        ids = torch.zeros(B, dtype=torch.long)
        ids[:n] = torch.tensor(list(token_ids), dtype=torch.long)
        lens = torch.ones(B, dtype=torch.int32)
        lens[:n] = torch.tensor(list(seq_lens), dtype=torch.int32)
        table = torch.full((B, W), self.scratch, dtype=torch.int32)
        for i, blocks in enumerate(block_tables):
            table[i, :len(blocks)] = torch.tensor(list(blocks), dtype=torch.int32)
        self.ids[:B].copy_(ids, non_blocking=True)
        self.seq_lens[:B].copy_(lens, non_blocking=True)
        self.tables[W][:B].copy_(table, non_blocking=True)
        if (B, W) not in self.graphs:  # not captured (a CPU test of the buffers): run the same body eagerly
            with static_region():
                return self.step(B, W)[:n]
        self.graphs[(B, W)].replay()
        return self.logits[:n]


__all__ = ["CONTEXT_BUCKETS", "DecodeGraphs", "GATHER_BUDGET_BYTES", "MAX_CAPTURE_SIZE", "capture_shapes",
           "capture_sizes", "unavailable"]
