"""The packed fp8 latent-cache token layout (FlashMLA's "fp8 kv cache" format), defined once.

One token of one layer, for d_v = kv_lora_rank latent values and r = qk_rope_head_dim rope values:

    bytes [0, d_v)                       the latent c_kv as float8_e4m3fn
    bytes [d_v, d_v + 4 * d_v/128)       d_v/128 float32 scales, one per 128 latent values
    bytes [.., + 2 * r)                  the rope part k_pe as bf16 (unquantised)

671B: 512 + 16 + 128 = 656 bytes (vs 1152 bytes for 576 bf16 values). Each scale is
2 ** ceil(log2(max(amax, 1e-4) / 448)) (a power of two, ue8m0), latent ~= fp8 * scale.
Plain tensor code, no provider: every backend reads and writes the same bytes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.hal.fp8 import FP8_E4M3_MAX, SCALE_FLOOR, pow2_ceil

GROUP = 128


def packed_bytes(d_v: int, rope_dim: int) -> int:
    if d_v % GROUP:
        raise ValueError(f"the fp8 kv cache needs kv_lora_rank divisible by {GROUP}, got {d_v}")
    return d_v + 4 * (d_v // GROUP) + 2 * rope_dim


def pack(latent: Tensor, d_v: int) -> Tensor:
    """latent [..., d_v + r] (float) -> uint8 [..., packed_bytes(d_v, r)]."""
    lead = latent.shape[:-1]
    rope_dim = latent.shape[-1] - d_v
    nb = packed_bytes(d_v, rope_dim)  # validates d_v
    c = latent[..., :d_v].float().reshape(*lead, d_v // GROUP, GROUP)
    amax = c.abs().amax(-1).clamp_min(SCALE_FLOOR)
    scale = pow2_ceil(amax / FP8_E4M3_MAX)  # [..., d_v/128]
    q = (c / scale.unsqueeze(-1)).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    out = torch.empty(*lead, nb, dtype=torch.uint8, device=latent.device)
    out[..., :d_v] = q.reshape(*lead, d_v).view(torch.uint8)
    out[..., d_v : d_v + 4 * (d_v // GROUP)] = scale.contiguous().view(torch.uint8).reshape(*lead, -1)
    out[..., d_v + 4 * (d_v // GROUP) :] = (
        latent[..., d_v:].to(torch.bfloat16).contiguous().view(torch.uint8).reshape(*lead, -1)
    )
    return out


def unpack(packed: Tensor, d_v: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [..., P] -> latent [..., d_v + r] in `dtype` (fp8 values times their block scale)."""
    lead = packed.shape[:-1]
    n_scales = d_v // GROUP
    rope_bytes = packed.shape[-1] - d_v - 4 * n_scales
    if d_v % GROUP or rope_bytes < 0 or rope_bytes % 2:
        raise ValueError(f"packed fp8 cache rows of {packed.shape[-1]} bytes do not fit d_v={d_v}")
    c = packed[..., :d_v].contiguous().view(torch.float8_e4m3fn).float().reshape(*lead, n_scales, GROUP)
    scale = packed[..., d_v : d_v + 4 * n_scales].contiguous().view(torch.float32)  # [..., n_scales]
    c = (c * scale.unsqueeze(-1)).reshape(*lead, d_v)
    rope = packed[..., d_v + 4 * n_scales :].contiguous().view(torch.bfloat16).float()
    return torch.cat([c, rope], dim=-1).to(dtype)
