"""The modules the parallel pass (dsa.model.parallel) swaps in: row-parallel linear, vocab-parallel
embedding and lm_head, and the MoE with expert-parallel dispatch and combine."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dsa.model.layers import Linear
from dsa.model.moe import MoE
from dsa.model.parallel_groups import ParallelGroups, all_gather, all_reduce, reduce_scatter

# ---- parallel modules --------------------------------------------------------------------------------

class RowParallelLinear(Linear):
    """A Linear holding a slice of the input features; the partial outputs are summed over `group`."""

    def __init__(self, in_features: int, out_features: int, ops, *, fp8: bool, ue8m0: bool, dtype: torch.dtype,
                 group: Optional[dist.ProcessGroup]):
        super().__init__(in_features, out_features, ops, fp8=fp8, ue8m0=ue8m0, dtype=dtype)
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        return all_reduce(super().forward(x), self.group)


class VocabParallelEmbedding(nn.Module):
    """Rows [start, stop) of the embedding; ids outside them contribute zeros to the TP all-reduce."""

    def __init__(self, vocab_size: int, dim: int, start: int, stop: int, dtype: torch.dtype,
                 group: Optional[dist.ProcessGroup]):
        super().__init__()
        self.num_embeddings, self.start, self.stop, self.group = vocab_size, start, stop, group
        self.weight = nn.Parameter(torch.empty(stop - start, dim, dtype=dtype), requires_grad=False)

    def forward(self, ids: Tensor) -> Tensor:
        mine = (ids >= self.start) & (ids < self.stop)
        h = F.embedding(torch.where(mine, ids - self.start, 0), self.weight)  # [T, D]
        h = h * mine.unsqueeze(-1).to(h.dtype)
        return all_reduce(h, self.group)


class VocabParallelLMHead(nn.Module):
    """Rows [start, stop) of lm_head (shards of `per_rank` rows, the last may be short); logits all-gathered."""

    def __init__(self, dim: int, vocab_size: int, start: int, stop: int, per_rank: int, tp: int, dtype: torch.dtype,
                 group: Optional[dist.ProcessGroup]):
        super().__init__()
        self.vocab_size, self.per_rank, self.tp, self.group = vocab_size, per_rank, tp, group
        self.weight = nn.Parameter(torch.empty(stop - start, dim, dtype=dtype), requires_grad=False)

    def forward(self, h: Tensor) -> Tensor:
        local = F.linear(h, self.weight)  # [T, V/tp]
        if self.group is None:
            return local
        local = F.pad(local, (0, self.per_rank - local.shape[-1]))
        out = torch.empty(self.tp * local.shape[0], local.shape[1], dtype=local.dtype, device=local.device)
        out = all_gather(out, local, self.group).view(self.tp, *local.shape)  # [tp, T, V/tp]
        return out.permute(1, 0, 2).flatten(1)[:, : self.vocab_size]  # [T, V]


class ParallelMoE(MoE):
    """MoE with this rank's routed experts and its TP slice of the shared expert (see the module doc)."""

    def __init__(self, moe: MoE, groups: ParallelGroups, first: int, count: int):
        nn.Module.__init__(self)
        self.ops, self.ue8m0, self.top_k = moe.ops, moe.ue8m0, moe.top_k
        self.n_experts, self.first, self.n_local = moe.n_experts, first, count
        self.gate, self.experts, self.shared_experts = moe.gate, moe.experts, moe.shared_experts
        self.ep_group, self.tp_group, self.ep_rank = groups.ep_group, groups.tp_group, groups.ep_rank
        # which members of the EP group contribute tokens: the first rank of each DP group in it
        dp_of = [r // groups.tp for r in groups.ep_members]
        self.contributes = [i == 0 or dp_of[i] != dp_of[i - 1] for i in range(len(dp_of))]
        self.my_contributor = dp_of.index(groups.dp_rank)  # member whose tokens are this rank's tokens
        self.gather = len(set(dp_of)) > 1  # the EP group spans DP groups: tokens must travel
        self.fused = groups.ep == groups.tp and groups.tp > 1  # EP group == TP group: one all-reduce for both

    def forward(self, x: Tensor) -> Tensor:
        shared = self.shared_experts(x).float() if self.shared_experts is not None else None  # TP partial
        if not self.gather:
            y = self._routed(x)  # [T, D] fp32, this rank's experts only
            if self.fused:
                y = y + shared if shared is not None else y
                return all_reduce(y.to(x.dtype), self.ep_group)
            y = all_reduce(y.to(x.dtype), self.ep_group).float()
        else:
            y = self._routed_across_dp(x).float()
        if shared is not None:
            y = y + all_reduce(shared.to(x.dtype), self.tp_group).float()
        return y.to(x.dtype)

    def _routed_across_dp(self, x: Tensor) -> Tensor:
        """All-gather the EP group's distinct tokens, run this rank's experts, return this rank's rows."""
        T, D = x.shape
        ep = len(self.contributes)
        me = self.contributes[self.ep_rank]
        counts = torch.empty(ep, dtype=torch.int64, device=x.device)
        all_gather(counts, torch.tensor([T if me else 0], device=x.device), self.ep_group)
        counts = counts.tolist()
        t_max = max(counts)
        mine = torch.zeros(t_max, D, dtype=x.dtype, device=x.device)
        if me:
            mine[:T] = x
        gathered = torch.empty(ep * t_max, D, dtype=x.dtype, device=x.device)
        all_gather(gathered, mine, self.ep_group)  # [ep * t_max, D]
        rows = torch.cat([torch.arange(i * t_max, i * t_max + n, device=x.device) for i, n in enumerate(counts)])
        y = self._routed(gathered[rows]).to(x.dtype)  # [N, D] partial: this rank's experts
        if all(self.contributes):  # every member has its own tokens: reduce-scatter the padded rows
            padded = torch.zeros(ep * t_max, D, dtype=x.dtype, device=x.device).index_copy_(0, rows, y)
            out = torch.empty(t_max, D, dtype=x.dtype, device=x.device)
            return reduce_scatter(out, padded, self.ep_group)[:T]
        dist.all_reduce(y, group=self.ep_group)  # TP ranks of a DP group contributed nothing: sum everything
        start = sum(counts[: self.my_contributor])
        return y[start : start + T]

    def _routed(self, x: Tensor) -> Tensor:
        """sum over the (token, slot) pairs routed to this rank's experts of w * expert(x) -> [N, D] fp32."""
        N, D = x.shape
        weights, experts = self.gate(x)  # [N, k] each, global expert ids
        local = (experts - self.first).flatten()  # [N*k]
        pairs = ((local >= 0) & (local < self.n_local)).nonzero().squeeze(1)
        out = torch.zeros(N, D, dtype=torch.float32, device=x.device)
        if pairs.numel() == 0:
            return out
        order = local[pairs].argsort(stable=True)
        pairs = pairs[order]  # pairs held here, sorted by local expert
        token = pairs // self.top_k
        m_sizes = torch.bincount(local[pairs], minlength=self.n_local)  # [E_local]
        xs = self._quantise(x[token])
        h = F.silu(self._grouped(xs, "gate_proj", m_sizes, x.dtype)) * self._grouped(xs, "up_proj", m_sizes, x.dtype)
        y = self._grouped(self._quantise(h), "down_proj", m_sizes, x.dtype)
        y = y.float() * weights.flatten()[pairs, None]
        return out.index_add_(0, token, y)
