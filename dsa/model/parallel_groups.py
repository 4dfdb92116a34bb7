"""The process groups of a layout (TP groups = DP-attention groups, EP groups), the collectives the model
uses, and the layout checks that need only the config (run before anything is loaded). No global state:
a ParallelGroups travels with the model (dsa.model.parallel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist
from torch import Tensor

from dsa.errors import ConfigError
from dsa.model.layers import WEIGHT_BLOCK

# ---- groups ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParallelGroups:
    """This rank's place in a layout and the process groups it talks over (None = a group of one)."""

    tp: int
    dp_attention: int
    ep: int
    rank: int = 0
    tp_group: Optional[dist.ProcessGroup] = None
    ep_group: Optional[dist.ProcessGroup] = None
    world_group: Optional[dist.ProcessGroup] = None  # None with world_size 1, else the default group

    def __post_init__(self):
        for name in ("tp", "dp_attention", "ep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.world_size % self.ep:
            raise ConfigError(f"ep={self.ep} does not divide the world size {self.world_size} "
                              f"(tp {self.tp} x dp_attention {self.dp_attention})")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside the world of {self.world_size} ranks")

    @property
    def world_size(self) -> int:
        return self.tp * self.dp_attention

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        """Which DP-attention group (= TP group) this rank serves requests for."""
        return self.rank // self.tp

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep

    @property
    def ep_members(self) -> list[int]:
        first = self.rank // self.ep * self.ep
        return list(range(first, first + self.ep))

    @classmethod
    def single(cls) -> "ParallelGroups":
        return cls(tp=1, dp_attention=1, ep=1)

    @classmethod
    def create(cls, tp: int, dp_attention: int, ep: int) -> "ParallelGroups":
        """Make the TP and EP groups of an initialised default process group. Every rank must call it
        (torch.distributed.new_group is collective)."""
        world, rank = dist.get_world_size(), dist.get_rank()
        if tp * dp_attention != world:
            raise ConfigError(f"the layout tp {tp} x dp_attention {dp_attention} = {tp * dp_attention} ranks, but "
                              f"{world} processes were launched")
        groups = cls(tp=tp, dp_attention=dp_attention, ep=ep, rank=rank)  # validates before new_group
        tp_group = _new_groups(world, tp, rank)
        ep_group = _new_groups(world, ep, rank)
        return cls(tp=tp, dp_attention=dp_attention, ep=ep, rank=rank, tp_group=tp_group, ep_group=ep_group,
                   world_group=dist.group.WORLD if groups.world_size > 1 else None)


def _new_groups(world: int, size: int, rank: int) -> Optional[dist.ProcessGroup]:
    """Contiguous groups of `size` ranks; returns this rank's (None when size is 1)."""
    if size == 1:
        return None
    if size == world:
        return dist.group.WORLD
    mine = None
    for first in range(0, world, size):
        g = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = g
    return mine


def all_reduce(t: Tensor, group: Optional[dist.ProcessGroup]) -> Tensor:
    if group is not None:
        dist.all_reduce(t, group=group)
    return t


def all_gather(out: Tensor, t: Tensor, group: dist.ProcessGroup) -> Tensor:
    """out [n * rows, ...] = every member's t [rows, ...], concatenated in rank order."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the newer name since torch 2.13
    gather(out, t.contiguous(), group=group)
    return out


def reduce_scatter(out: Tensor, t: Tensor, group: dist.ProcessGroup) -> Tensor:
    """out [rows, ...] = this member's block of rows of the sum over members of t [n * rows, ...]."""
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(out, t.contiguous(), group=group)
    return out


# ---- layout checks (config only: run them before anything is loaded) --------------------------------

def check_layout(config, tp: int, dp_attention: int, ep: int, fp8_weights: bool) -> None:
    """ConfigError when the model cannot be split this way: heads, intermediate sizes or experts not
    divisible, or (fp8_weights: block-scaled weights kept fp8) a shard that would cut a 128-block."""
    ParallelGroups(tp=tp, dp_attention=dp_attention, ep=ep)  # positive, ep | world
    c = config
    H = c.num_attention_heads
    if H % tp:
        raise ConfigError(f"tp={tp} does not divide num_attention_heads={H}; tp must divide {H}")
    has_moe = c.first_k_dense_replace < c.num_hidden_layers
    if has_moe and c.n_routed_experts % ep:
        raise ConfigError(f"ep={ep} does not divide n_routed_experts={c.n_routed_experts}")
    split = {  # name: (size split over tp, what it is)
        "q_b_proj": (H * c.qk_head_dim, "rows"),
        "kv_b_proj": (H * (c.qk_nope_head_dim + c.v_head_dim), "rows"),
        "o_proj": (H * c.v_head_dim, "columns"),
    }
    if c.first_k_dense_replace > 0:
        split["dense mlp (intermediate_size)"] = (c.intermediate_size, "rows/columns")
    if has_moe and c.n_shared_experts:
        split["shared_experts"] = (c.moe_intermediate_size * c.n_shared_experts, "rows/columns")
    for name, (n, what) in split.items():
        if n % tp:
            raise ConfigError(f"tp={tp} does not divide {name} ({n} {what})")
        if fp8_weights and tp > 1 and (n // tp) % WEIGHT_BLOCK:
            raise ConfigError(
                f"tp={tp} would split the 128x128 fp8 blocks of {name}: {n // tp} {what} per rank is not a multiple "
                f"of {WEIGHT_BLOCK} (weight_scale_inv cannot be cut there); load the weights dequantised (weights "
                f"bf16) or use a tp that keeps every shard 128-aligned")
