"""Seeded input builders for the conformance cases (plain torch; no backend, no oracle)."""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.hal import kv_format

FP8 = torch.float8_e4m3fn


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, g: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> Tensor:
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def quantize_rows(x: Tensor, block: int = 128) -> tuple[Tensor, Tensor]:
    """Realistic fp8 activations: x [M, K] -> fp8 [M, K], fp32 scales [M, ceil(K/block)] (amax -> 448)."""
    M, K = x.shape
    nb = -(-K // block)
    padded = torch.zeros(M, nb * block)
    padded[:, :K] = x.float()
    scale = padded.reshape(M, nb, block).abs().amax(-1).clamp_min(1e-4) / 448
    q = (padded.reshape(M, nb, block) / scale[..., None]).clamp(-448, 448).reshape(M, -1)[:, :K]
    return q.to(FP8), scale


def quantize_weight(w: Tensor, block: int = 128) -> tuple[Tensor, Tensor]:
    """Realistic fp8 weights: w [N, K] -> fp8 [N, K], fp32 scales [ceil(N/block), ceil(K/block)]."""
    N, K = w.shape
    nbn, nbk = -(-N // block), -(-K // block)
    padded = torch.zeros(nbn * block, nbk * block)
    padded[:N, :K] = w.float()
    blocks = padded.reshape(nbn, block, nbk, block)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-4) / 448
    q = (blocks / scale[:, None, :, None]).clamp(-448, 448).reshape(nbn * block, nbk * block)[:N, :K]
    return q.to(FP8), scale


def sparse_indices(rows: int, width: int, num_keys: int, g: torch.Generator, n_valid: list[int]) -> Tensor:
    """[rows, width] int32 index rows; row r holds n_valid[r] distinct keys in [0, num_keys).

    Awkward cases by row position: row 0 is all -1; odd rows get their invalid entries interleaved
    (num_keys, num_keys + 7, -3, -1) instead of -1 padding at the end.
    """
    out = torch.full((rows, width), -1, dtype=torch.int32)
    for r in range(rows):
        n = 0 if r == 0 else min(n_valid[r], num_keys, width)
        keys = torch.randperm(num_keys, generator=g)[:n].to(torch.int32)
        row = torch.full((width,), -1, dtype=torch.int32)
        row[:n] = keys
        if r % 2 == 1:
            junk = torch.tensor([num_keys, num_keys + 7, -3, -1], dtype=torch.int32)
            row[n:] = junk.repeat(width)[: width - n]
            row = row[torch.randperm(width, generator=g)]
        out[r] = row
    return out


def paged_cache(
    seq_lens: list[int], page: int, latent: Tensor, d_v: int, fp8: bool, g: torch.Generator, dtype=torch.bfloat16
) -> tuple[Tensor, Tensor]:
    """Scatter per-sequence tokens into a shuffled paged cache.

    latent [B, max_len, Dqk] float32: token p of sequence b. Returns (kv_cache [blocks, page, 1, Dqk or
    P] (uint8 if fp8, else `dtype`), block_table [B, max_blocks] int32). Unused slots hold large garbage
    that must never be read.
    """
    B, max_len, Dqk = latent.shape
    max_blocks = -(-max_len // page) + 1  # one spare table entry per sequence (points at block 0)
    needed = [-(-n // page) for n in seq_lens]
    num_blocks = sum(needed) + 2  # two blocks nobody owns
    order = torch.randperm(num_blocks, generator=g).tolist()
    table = torch.zeros(B, max_blocks, dtype=torch.int32)
    garbage = 300.0 + 100 * torch.rand(num_blocks, page, 1, Dqk, generator=g)
    cache = kv_format.pack(garbage, d_v) if fp8 else garbage.to(dtype)
    for b, n in enumerate(seq_lens):
        blocks = [order.pop() for _ in range(needed[b])]
        table[b, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        for p in range(n):
            token = latent[b, p].reshape(1, Dqk)
            cache[blocks[p // page], p % page, 0] = kv_format.pack(token, d_v)[0] if fp8 else token[0]
    return cache, table
