"""Building blocks of the DeepSeek-V3.2 graph: norms, linear (bf16 or fp8), RoPE, Hadamard.

Plain PyTorch; the only HAL op used here is `fp8_linear` (block-scaled fp8 weights). Norms compute in
fp32 and return the input dtype. RoPE comes in the two pairings the model uses:

  * INTERLEAVED   pairs (0,1), (2,3), ...       MLA's q_pe / k_pe        (docs/model-and-ops.md 2.1)
  * ROTATE-HALF   pairs (i, i + d/2) (NeoX)     the indexer's rope part  (docs/model-and-ops.md 2.2)

Both use the same frequency table (YaRN when `config.yarn` is in force, plain RoPE otherwise).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsa.model.config import ModelConfig, RopeScaling

WEIGHT_BLOCK = 128  # fp8 weights carry one fp32 scale per 128 x 128 block (docs/model-and-ops.md 3)


def scale_blocks(n: int, block: int = WEIGHT_BLOCK) -> int:
    """Number of scale blocks covering n values (the last one may be partial)."""
    return (n + block - 1) // block


def uses_ue8m0(config: ModelConfig) -> bool:
    """Activation scales rounded up to powers of two (`scale_fmt: ue8m0`, the V3.2 release)."""
    qc = config.quantization_config
    return qc is None or qc.scale_fmt == "ue8m0"


# ---- norms -----------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32; weight is fp32 (as in the checkpoint)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight).to(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias, computed in fp32 (the indexer's k_norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(dim, dtype=torch.float32), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.layer_norm(x.float(), (x.shape[-1],), self.weight, self.bias, self.eps)
        return h.to(x.dtype)


# ---- linear ----------------------------------------------------------------------------------------
class Linear(nn.Module):
    """y = x @ W^T, no bias. W is [out, in] in the model dtype, or float8_e4m3fn with
    `weight_scale_inv` [ceil(out/128), ceil(in/128)] fp32 (then the GEMM is the HAL's `fp8_linear`)."""

    def __init__(self, in_features: int, out_features: int, ops, *, fp8: bool, ue8m0: bool, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.ops, self.ue8m0 = ops, ue8m0
        w_dtype = torch.float8_e4m3fn if fp8 else dtype
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=w_dtype), requires_grad=False)
        if fp8:
            scale = torch.ones(scale_blocks(out_features), scale_blocks(in_features), dtype=torch.float32)
            self.weight_scale_inv = nn.Parameter(scale, requires_grad=False)
        else:
            self.weight_scale_inv = None

    @property
    def is_fp8(self) -> bool:
        return self.weight.dtype == torch.float8_e4m3fn

    def forward(self, x: Tensor) -> Tensor:
        if self.is_fp8:
            return self.ops.fp8_linear(x, self.weight, self.weight_scale_inv, self.ue8m0)
        return F.linear(x, self.weight)

    def dense_weight(self, dtype: torch.dtype) -> Tensor:
        """The weight as a plain [out, in] tensor (fp8 blocks multiplied by their scales)."""
        if not self.is_fp8:
            return self.weight.to(dtype)
        return dequantize_blocks(self.weight, self.weight_scale_inv).to(dtype)


def dequantize_blocks(w: Tensor, scale: Tensor, block: int = WEIGHT_BLOCK) -> Tensor:
    """fp8 w [..., N, K] times its block scales [..., ceil(N/b), ceil(K/b)] -> fp32 [..., N, K]."""
    n, k = w.shape[-2:]
    s = scale.repeat_interleave(block, dim=-2)[..., :n, :].repeat_interleave(block, dim=-1)[..., :k]
    return w.float() * s


# ---- rotary position embedding ---------------------------------------------------------------------
def rope_inv_freq(dim: int, theta: float, scaling: Optional[RopeScaling]) -> Tensor:
    """Rotation frequency of each of the dim/2 pairs [dim/2] fp32; YaRN-corrected when `scaling` is set.

    f_i = theta^(-2i/dim). YaRN (docs/model-and-ops.md 2.1): corr(r) = dim * ln(L0 / (2 pi r)) / (2 ln theta); L0 = the
    original context length; low = floor(corr(beta_fast)), high = ceil(corr(beta_slow)) (clipped to the
    pair range); ramp_i = clamp((i - low) / (high - low), 0, 1); f_i' = f_i / factor * ramp_i + f_i * (1 - ramp_i).
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    freq = theta ** (-2.0 * i / dim)
    if scaling is None:
        return freq.float()

    def corr(rotations: float) -> float:
        return (dim * math.log(scaling.original_max_position_embeddings / (2 * math.pi * rotations))
                / (2 * math.log(theta)))

    low = max(math.floor(corr(scaling.beta_fast)), 0)
    high = min(math.ceil(corr(scaling.beta_slow)), dim - 1)
    span = max(high - low, 1e-3)  # low == high would divide by zero
    ramp = ((i - low) / span).clamp(0, 1)
    return (freq / scaling.factor * ramp + freq * (1 - ramp)).float()


class RotaryEmbedding(nn.Module):
    """cos / sin of each token's rotation angles; the frequency table is fixed by the config."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq = rope_inv_freq(config.qk_rope_head_dim, config.rope_theta, config.yarn)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.to(self.inv_freq.device).float()[:, None] * self.inv_freq[None, :]  # [T, r/2]
        return angles.cos(), angles.sin()


def _broadcast(t: Tensor, x: Tensor) -> Tensor:
    """[T, r/2] -> [T, 1, ..., 1, r/2] to match x [T, ..., r]."""
    return t.view(t.shape[0], *([1] * (x.dim() - 2)), t.shape[-1])


def apply_rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by angle i (complex multiply). x [T, ..., r]; cos/sin [T, r/2]."""
    c, s = _broadcast(cos, x), _broadcast(sin, x)
    pairs = x.float().unflatten(-1, (-1, 2))  # [T, ..., r/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * c - b * s, a * s + b * c], dim=-1)
    return out.flatten(-2).to(x.dtype)


def apply_rope_rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + r/2]) by angle i (NeoX style). x [T, ..., r]; cos/sin [T, r/2]."""
    c, s = _broadcast(cos, x), _broadcast(sin, x)
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1).to(x.dtype)


# ---- Hadamard rotation -----------------------------------------------------------------------------
def hadamard_transform(x: Tensor) -> Tensor:
    """x [..., n] @ H_n / sqrt(n): Sylvester-ordered, orthonormal; n a power of two. fp32 math at least."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two size, got {n}")
    lead = x.shape[:-1]
    h = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(-1, n)
    width = 1
    while width < n:  # butterfly: [a, b] -> [a + b, a - b] on blocks of 2 * width
        h = h.view(-1, n // (2 * width), 2, width)
        h = torch.stack([h[:, :, 0] + h[:, :, 1], h[:, :, 0] - h[:, :, 1]], dim=2)
        width *= 2
    return (h.reshape(*lead, n) * n**-0.5).to(x.dtype)
