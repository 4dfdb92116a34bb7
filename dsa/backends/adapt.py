"""Plain-torch translations shared by the vendor adapters (dsa/backends/cuda, dsa/backends/rocm, dsa/backends/npu).

Each vendor kernel wants the HAL's arguments in its own shape: physical cache slots instead of logical
positions, valid indices first, a head count from a short list, fp8 in another encoding, a log-sum-exp
in another base. These helpers do those translations once, on the device the tensors live on, with no
vendor import; the adapters combine them. Everything here is exact (no rounding) unless it says so.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

LN2 = math.log(2.0)


# ---------------------------------------------------------------- vendor functions


def accepts(fn: Callable, name: str) -> Optional[bool]:
    """Whether `fn` takes a parameter called `name`: True / False, or None when it cannot be told
    (a C++ binding without a Python signature)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if name in params:
        return True
    return True if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else False


# ---------------------------------------------------------------- shapes


def ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_heads(h: int, allowed: Iterable[int]) -> Optional[int]:
    """The smallest allowed head count >= h (None when h exceeds them all)."""
    fits = [a for a in sorted(allowed) if a >= h]
    return fits[0] if fits else None


def head_chunks(h: int, allowed: Iterable[int]) -> list[tuple[int, int, int]]:
    """Split h heads into (start, count, padded count) chunks the kernel takes.

    Heads are independent (each attends with its own query over the shared latent keys), so a
    head count the kernel lacks is served by zero-padding up to the next one it has and dropping
    the extra outputs, and more heads than its largest by running chunks of the largest.
    """
    largest = max(allowed)
    chunks = []
    for start in range(0, h, largest):
        count = min(largest, h - start)
        chunks.append((start, count, padded_heads(count, allowed)))
    return chunks


def pad_dim(x: Tensor, dim: int, size: int, value: float = 0.0) -> Tensor:
    """x padded with `value` along `dim` up to `size` (x itself when already that size)."""
    dim = dim % x.dim()
    extra = size - x.shape[dim]
    if extra == 0:
        return x
    if extra < 0:
        raise ValueError(f"cannot pad dim {dim} of size {x.shape[dim]} down to {size}")
    shape = list(x.shape)
    shape[dim] = extra
    if x.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        if value != 0.0:
            raise ValueError("fp8 tensors are only zero-padded here")
        filler = torch.zeros(shape, dtype=torch.uint8, device=x.device).view(x.dtype)
    else:
        filler = torch.full(shape, value, dtype=x.dtype, device=x.device)
    return torch.cat([x, filler], dim=dim)


# ---------------------------------------------------------------- sparse indices


def valid_first(indices: Tensor, valid: Tensor) -> Tensor:
    """Rows of `indices` with the valid entries first (their order kept) and -1 after them.

    Some kernels (CANN sparse attention, AITER's ragged lists) read a row only up to its first
    invalid entry; the HAL lets invalid entries sit anywhere.
    """
    order = torch.sort((~valid).to(torch.int8), dim=-1, stable=True).indices
    kept = torch.gather(torch.where(valid, indices, -1), -1, order)
    return kept.to(torch.int32)


def prefill_valid(indices: Tensor, num_keys: int) -> Tensor:
    """bool mask of the entries of a prefill index row that name a key: 0 <= i < num_keys."""
    idx = indices.long()
    return (idx >= 0) & (idx < num_keys)


def decode_valid(indices: Tensor, seq_lens: Tensor) -> Tensor:
    """indices [B, s_q, K] logical positions -> bool mask of 0 <= p < seq_lens[b]."""
    p = indices.long()
    return (p >= 0) & (p < seq_lens.long().view(-1, *([1] * (p.dim() - 1))))


def logical_to_slots(indices: Tensor, block_table: Tensor, seq_lens: Tensor, page: int) -> Tensor:
    """Logical positions [B, s_q, K] -> physical cache slots block*page + offset (int32, -1 = skip).

    Position p of sequence b lives in block block_table[b, p // page] at offset p % page; a slot is
    that token's row in the cache viewed as [num_blocks * page, ...]. Invalid positions (outside
    [0, seq_lens[b])) become -1 without reading the block table.
    """
    valid = decode_valid(indices, seq_lens)
    p = torch.where(valid, indices.long(), 0)
    B = p.shape[0]
    table = block_table.long()
    rows = torch.arange(B, device=p.device).view(B, *([1] * (p.dim() - 1))).expand_as(p)
    blocks = table[rows, p // page]
    slots = blocks * page + p % page
    return torch.where(valid, slots, -1).to(torch.int32)


# ---------------------------------------------------------------- outputs


def empty_rows_to_convention(out: Tensor, lse: Tensor, empty: Tensor) -> tuple[Tensor, Tensor]:
    """out 0 and lse +inf for the query rows with no valid index (the HAL's convention).

    Shapes: out [..., H, d_v], lse [..., H], empty [...] (one flag per query row, shared by its
    heads). A vendor kernel may leave NaN, garbage or -inf in such rows, so they are overwritten
    rather than converted.
    """
    out = out.masked_fill(empty[..., None, None], 0.0)
    lse = lse.masked_fill(empty[..., None], math.inf)
    return out, lse


def lse_base2_to_natural(lse: Tensor) -> Tensor:
    """log2(sum 2^x) of base-2 logits x = log2(e) * z  ->  ln(sum e^z) = that * ln 2."""
    return lse * LN2


# ---------------------------------------------------------------- fp8 encodings


def e4m3fn_to_fnuz(x: Tensor) -> Tensor:
    """OCP float8_e4m3fn bytes -> float8_e4m3fnuz bytes representing exactly HALF each value.

    Same bit pattern, exponent bias 8 instead of 7: every finite e4m3fn value v becomes v / 2 in
    e4m3fnuz (|v| <= 448 -> <= 224 < 240, subnormals included), so the caller doubles the matching
    scale and the product is unchanged. The one pattern without a twin is 0x80 (-0 in e4m3fn, NaN in
    e4m3fnuz): it becomes +0. (e4m3fn NaN, 0x7F / 0xFF, cannot come out of a clamped quantiser.)
    """
    if x.dtype != torch.float8_e4m3fn:
        raise TypeError(f"expected float8_e4m3fn, got {x.dtype}")
    bits = x.view(torch.uint8)
    bits = torch.where(bits == 0x80, torch.zeros_like(bits), bits)
    return bits.view(torch.float8_e4m3fnuz)


FNUZ_SCALE = 2.0  # multiply every scale of a converted tensor by this


__all__ = [
    "accepts", "ceil_to", "padded_heads", "head_chunks", "pad_dim",
    "valid_first", "prefill_valid", "decode_valid", "logical_to_slots", "empty_rows_to_convention",
    "lse_base2_to_natural", "e4m3fn_to_fnuz", "FNUZ_SCALE", "LN2",
]
