"""Feed-forward layers (docs/model-and-ops.md 2.3): the SwiGLU MLP, the noaux_tc router, and the routed MoE.

Routed experts are stored stacked ([E, I, D] / [E, D, I]) so one `grouped_gemm` launch per projection
runs all of them over the token rows sorted by expert.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsa.model.config import ModelConfig
from dsa.model.layers import Linear, scale_blocks

ACT_BLOCK = 128  # activations are quantised in 1 x 128 blocks for fp8 GEMMs
GROUP_SCORE_TOP = 2  # a group's score is the sum of its 2 best biased expert scores


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)): the dense FFN and the shared expert."""

    def __init__(self, dim: int, inter: int, ops, *, fp8: bool, ue8m0: bool, dtype: torch.dtype):
        super().__init__()
        linear = dict(ops=ops, fp8=fp8, ue8m0=ue8m0, dtype=dtype)
        self.gate_proj = Linear(dim, inter, **linear)
        self.up_proj = Linear(dim, inter, **linear)
        self.down_proj = Linear(inter, dim, **linear)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Group-limited sigmoid router (noaux_tc): the bias steers the choice, not the weights."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        self.top_k, self.n_group, self.topk_group = config.num_experts_per_tok, config.n_group, config.topk_group
        self.norm_topk_prob, self.scaling = config.norm_topk_prob, config.routed_scaling_factor
        E = config.n_routed_experts
        self.weight = nn.Parameter(torch.empty(E, config.hidden_size, dtype=dtype), requires_grad=False)
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [T, D] -> (weights [T, k] fp32, experts [T, k] int64)."""
        T = x.shape[0]
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # [T, E] fp32
        biased = scores + self.e_score_correction_bias
        grouped = biased.view(T, self.n_group, -1)  # [T, G, E/G]
        group_score = grouped.topk(GROUP_SCORE_TOP, dim=-1).values.sum(-1)  # [T, G]
        keep = group_score.topk(self.topk_group, dim=-1).indices  # [T, topk_group]
        group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        biased = grouped.masked_fill(~group_mask[..., None], float("-inf")).flatten(1)  # [T, E]
        experts = biased.topk(self.top_k, dim=-1).indices  # [T, k]
        weights = scores.gather(1, experts)  # the unbiased scores
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * self.scaling, experts


class Experts(nn.Module):
    """The routed experts' SwiGLU weights, stacked: gate/up [E, I, D], down [E, D, I] (+ fp8 block scales)."""

    def __init__(self, config: ModelConfig, *, fp8: bool, dtype: torch.dtype):
        super().__init__()
        E, D, inter = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        w_dtype = torch.float8_e4m3fn if fp8 else dtype
        for name, (n, k) in (("gate_proj", (inter, D)), ("up_proj", (inter, D)), ("down_proj", (D, inter))):
            setattr(self, name, nn.Parameter(torch.empty(E, n, k, dtype=w_dtype), requires_grad=False))
            scale = torch.ones(E, scale_blocks(n), scale_blocks(k), dtype=torch.float32) if fp8 else None
            setattr(self, name + "_scale_inv", nn.Parameter(scale, requires_grad=False) if fp8 else None)

    @property
    def is_fp8(self) -> bool:
        return self.gate_proj.dtype == torch.float8_e4m3fn


class MoE(nn.Module):
    """sum_k w_k * expert_k(x) + shared_expert(x), experts run as grouped GEMMs."""

    def __init__(self, config: ModelConfig, ops, *, fp8: bool, ue8m0: bool, dtype: torch.dtype):
        super().__init__()
        self.ops, self.ue8m0 = ops, ue8m0
        self.n_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.gate = Gate(config, dtype)
        self.experts = Experts(config, fp8=fp8, dtype=dtype)
        shared = config.moe_intermediate_size * config.n_shared_experts
        self.shared_experts = (MLP(config.hidden_size, shared, ops, fp8=fp8, ue8m0=ue8m0, dtype=dtype)
                               if shared else None)

    def _quantise(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The GEMM input: x itself for float experts, (fp8 x, 1x128 scales) for fp8 experts."""
        if not self.experts.is_fp8:
            return x, None
        return self.ops.act_quant(x, ACT_BLOCK, self.ue8m0)

    def _grouped(self, x: tuple[Tensor, Tensor | None], name: str, m_sizes: Tensor, dtype: torch.dtype) -> Tensor:
        """Rows (sorted by expert) times that expert's `name` projection -> [M, N] in `dtype`."""
        w, w_scale = getattr(self.experts, name), getattr(self.experts, name + "_scale_inv")
        return self.ops.grouped_gemm(x[0], x[1], w, w_scale, m_sizes).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        T, D = x.shape
        weights, experts = self.gate(x)  # [T, k] each
        flat = experts.flatten()  # [T*k] expert of each (token, slot) pair
        order = flat.argsort(stable=True)
        token = order // self.top_k  # [T*k] token of each pair, pairs sorted by expert
        # [E] rows per expert; a scatter, not bincount, whose output size would be read from the device
        m_sizes = torch.zeros(self.n_experts, dtype=torch.int64, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat))

        xs = self._quantise(x[token])  # [T*k, D]
        h = F.silu(self._grouped(xs, "gate_proj", m_sizes, x.dtype)) * self._grouped(xs, "up_proj", m_sizes, x.dtype)
        y = self._grouped(self._quantise(h), "down_proj", m_sizes, x.dtype)  # [T*k, D]
        y = y.float() * weights.flatten()[order, None]
        out = torch.zeros(T, D, dtype=torch.float32, device=x.device).index_add_(0, token, y)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x).float()
        return out.to(x.dtype)
