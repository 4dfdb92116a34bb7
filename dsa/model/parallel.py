"""Tensor, expert and DP-attention parallelism as a pass over a built model (no global state).

    groups = ParallelGroups.create(tp=2, dp_attention=1, ep=2)   # after dist.init_process_group
    sharding = parallelize(model, groups)                        # on the meta model, before loading
    load ... with sharding.slicer                                # each rank reads only its parts

Rank r sits in TP group r // tp (contiguous ranks: a node's devices) at tp_rank r % tp, and in EP
group r // ep at ep_rank r % ep. A TP group is one DP-attention group: its ranks serve the same
requests; different TP groups serve different requests.

What the pass does (the sharding dsa/planning assumes):
  * attention (TP): q_b_proj and kv_b_proj split column-wise by heads, o_proj row-wise + all-reduce;
    each rank attends with num_attention_heads / tp heads. q_a_proj, kv_a_proj_with_mqa, norms and the
    indexer are replicated (the latent cache is one head: every TP rank keeps the whole cache).
  * dense FFN and shared expert (TP): gate/up column-wise, down row-wise; summed over the TP group.
  * embed_tokens (TP): vocab-parallel rows; out-of-shard ids give zeros, then an all-reduce.
    lm_head (TP): vocab-parallel rows; the logits are all-gathered.
  * routed experts (EP): EP rank i holds experts [i * E/ep, (i+1) * E/ep); the router is replicated.
    Dispatch / combine: when the EP group lies inside one DP-attention group its ranks already hold
    the same tokens, so each runs its experts on all of them and one all-reduce combines (fused with
    the shared expert's TP reduction when the EP and TP groups coincide). When the EP group spans
    DP-attention groups, one rank per DP group contributes its tokens to an all-gather over the EP
    group (padded to the largest group's count, after a tiny all-gather of the counts); every rank
    routes all gathered tokens, runs its own experts on the pairs routed to them, and the partial
    outputs are reduce-scattered (every member contributes tokens) or all-reduced (TP duplicates) back.
    Cost per MoE layer: every token's hidden state reaches every EP rank (ep x T x D in, the same out),
    and the router runs on all of the EP group's tokens; no expert work is duplicated. An all-to-all
    dispatch that sends each token only to the ranks owning its top-k experts is the next step.

fp8 block-scaled weights (`weight_scale_inv`, one fp32 per 128 x 128 block) are cut along block
boundaries: a layout whose shard of an fp8 weight is not a multiple of 128 is an error (load the
weights dequantised, weights=bf16, or pick another tp).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dsa.errors import ConfigError
from dsa.model.layers import WEIGHT_BLOCK, Linear
from dsa.model.moe import MLP, MoE


class _NotHeld:
    """The slicer's answer for a tensor this rank holds no part of (a routed expert of another rank)."""

    def __repr__(self) -> str:
        return "NOT_HELD"


NOT_HELD = _NotHeld()  # compared with `is`


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


def _all_reduce(t: Tensor, group: Optional[dist.ProcessGroup]) -> Tensor:
    if group is not None:
        dist.all_reduce(t, group=group)
    return t


def _all_gather(out: Tensor, t: Tensor, group: dist.ProcessGroup) -> Tensor:
    """out [n * rows, ...] = every member's t [rows, ...], concatenated in rank order."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the newer name since torch 2.13
    gather(out, t.contiguous(), group=group)
    return out


def _reduce_scatter(out: Tensor, t: Tensor, group: dist.ProcessGroup) -> Tensor:
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


# ---- what each rank holds ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """Elements [start, stop) of dimension `dim` of a tensor (of the weight, for its weight_scale_inv)."""

    dim: int
    start: int
    stop: int

    def slices(self, shape: Sequence[int], block: int = 1) -> tuple[slice, ...]:
        """The slices of a tensor of `shape`; block=128 for the scale of a block-quantised weight."""
        lo, hi = self.start // block, -(-self.stop // block)
        return tuple(slice(lo, hi) if d == self.dim else slice(None) for d in range(len(shape)))


@dataclass(frozen=True)
class Sharding:
    """The parts of the checkpoint one rank holds: `shards` by HF weight name (the rest is whole), and
    the global ids of the routed experts held per MoE layer ("model.layers.N.mlp.experts")."""

    shards: Mapping[str, Shard] = field(default_factory=dict)
    experts: Mapping[str, range] = field(default_factory=dict)

    def slicer(self, name: str, shape: tuple[int, ...]):
        """dsa.io.checkpoint_loader's TensorSlicer: the slices of HF tensor `name` held here, None for all of it,
        NOT_HELD for none of it."""
        if ".mlp.experts." in name:
            prefix, rest = name.split(".mlp.experts.", 1)
            held = self.experts.get(prefix + ".mlp.experts")
            if held is not None and int(rest.split(".", 1)[0]) not in held:
                return NOT_HELD
            return None
        if name.endswith(".weight_scale_inv"):
            part = self.shards.get(name[: -len("_scale_inv")])
            return None if part is None else part.slices(shape, WEIGHT_BLOCK)
        part = self.shards.get(name)
        return None if part is None else part.slices(shape)


# ---- parallel modules --------------------------------------------------------------------------------

class RowParallelLinear(Linear):
    """A Linear holding a slice of the input features; the partial outputs are summed over `group`."""

    def __init__(self, in_features: int, out_features: int, ops, *, fp8: bool, ue8m0: bool, dtype: torch.dtype,
                 group: Optional[dist.ProcessGroup]):
        super().__init__(in_features, out_features, ops, fp8=fp8, ue8m0=ue8m0, dtype=dtype)
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        return _all_reduce(super().forward(x), self.group)


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
        return _all_reduce(h, self.group)


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
        out = _all_gather(out, local, self.group).view(self.tp, *local.shape)  # [tp, T, V/tp]
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
                return _all_reduce(y.to(x.dtype), self.ep_group)
            y = _all_reduce(y.to(x.dtype), self.ep_group).float()
        else:
            y = self._routed_across_dp(x).float()
        if shared is not None:
            y = y + _all_reduce(shared.to(x.dtype), self.tp_group).float()
        return y.to(x.dtype)

    def _routed_across_dp(self, x: Tensor) -> Tensor:
        """All-gather the EP group's distinct tokens, run this rank's experts, return this rank's rows."""
        T, D = x.shape
        ep = len(self.contributes)
        me = self.contributes[self.ep_rank]
        counts = torch.empty(ep, dtype=torch.int64, device=x.device)
        _all_gather(counts, torch.tensor([T if me else 0], device=x.device), self.ep_group)
        counts = counts.tolist()
        t_max = max(counts)
        mine = torch.zeros(t_max, D, dtype=x.dtype, device=x.device)
        if me:
            mine[:T] = x
        gathered = torch.empty(ep * t_max, D, dtype=x.dtype, device=x.device)
        _all_gather(gathered, mine, self.ep_group)  # [ep * t_max, D]
        rows = torch.cat([torch.arange(i * t_max, i * t_max + n, device=x.device) for i, n in enumerate(counts)])
        y = self._routed(gathered[rows]).to(x.dtype)  # [N, D] partial: this rank's experts
        if all(self.contributes):  # every member has its own tokens: reduce-scatter the padded rows
            padded = torch.zeros(ep * t_max, D, dtype=x.dtype, device=x.device).index_copy_(0, rows, y)
            out = torch.empty(t_max, D, dtype=x.dtype, device=x.device)
            return _reduce_scatter(out, padded, self.ep_group)[:T]
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


# ---- the pass ----------------------------------------------------------------------------------------

def parallelize(model: nn.Module, groups: ParallelGroups) -> Sharding:
    """Shard a DeepseekV32 for `groups`' layout in place; returns what this rank holds (for the loader).

    Meant for the meta-device model before loading (the new parameters are left empty). On a model
    with weights (e.g. seeded random ones) the parameters are cut from the existing ones instead.
    """
    config = model.config
    tp, ep = groups.tp, groups.ep
    check_layout(config, tp, groups.dp_attention, ep, fp8_weights=model.fp8_weights)
    materialised = not model.model.embed_tokens.weight.is_meta
    cut = _Cutter(materialised)
    r = groups.tp_rank

    if tp > 1:
        V, D = config.vocab_size, config.hidden_size
        per = -(-V // tp)
        start, stop = min(r * per, V), min((r + 1) * per, V)
        old, head = model.model.embed_tokens.weight, model.lm_head.weight
        with torch.device(old.device):
            emb = VocabParallelEmbedding(V, D, start, stop, old.dtype, groups.tp_group)
            new_head = VocabParallelLMHead(D, V, start, stop, per, tp, head.dtype, groups.tp_group)
        model.model.embed_tokens = cut.fill(emb, {"weight": old}, "model.embed_tokens.weight", Shard(0, start, stop))
        model.lm_head = cut.fill(new_head, {"weight": head}, "lm_head.weight", Shard(0, start, stop))

    for i, block in enumerate(model.model.layers):
        p = f"model.layers.{i}"
        attn = block.self_attn
        if tp > 1:
            h = attn.n_heads // tp
            qk, kv = attn.nope_dim + attn.rope_dim, attn.nope_dim + attn.v_dim
            attn.q_b_proj = cut.linear(attn.q_b_proj, f"{p}.self_attn.q_b_proj", Shard(0, r * h * qk, (r + 1) * h * qk))
            attn.kv_b_proj = cut.linear(attn.kv_b_proj, f"{p}.self_attn.kv_b_proj",
                                        Shard(0, r * h * kv, (r + 1) * h * kv))
            attn.o_proj = cut.linear(attn.o_proj, f"{p}.self_attn.o_proj",
                                     Shard(1, r * h * attn.v_dim, (r + 1) * h * attn.v_dim), group=groups.tp_group)
            attn.n_heads = h
        if isinstance(block.mlp, MoE):
            moe = block.mlp
            if moe.shared_experts is not None and tp > 1:
                _split_mlp(cut, moe.shared_experts, f"{p}.mlp.shared_experts", r, tp, group=None)  # reduced by the MoE
            count = moe.n_experts // ep
            first = groups.ep_rank * count
            _take_experts(cut, moe.experts, first, count)
            cut.experts[f"{p}.mlp.experts"] = range(first, first + count)
            block.mlp = ParallelMoE(moe, groups, first, count)
        elif tp > 1:
            _split_mlp(cut, block.mlp, f"{p}.mlp", r, tp, group=groups.tp_group)
    if materialised:
        model._after_load()
    return Sharding(shards=dict(cut.shards), experts=dict(cut.experts))


def _split_mlp(cut: "_Cutter", mlp: MLP, prefix: str, r: int, tp: int, group) -> None:
    n = mlp.gate_proj.out_features // tp
    mlp.gate_proj = cut.linear(mlp.gate_proj, f"{prefix}.gate_proj", Shard(0, r * n, (r + 1) * n))
    mlp.up_proj = cut.linear(mlp.up_proj, f"{prefix}.up_proj", Shard(0, r * n, (r + 1) * n))
    mlp.down_proj = cut.linear(mlp.down_proj, f"{prefix}.down_proj", Shard(1, r * n, (r + 1) * n), group=group,
                               row_parallel=True)


def _take_experts(cut: "_Cutter", experts: nn.Module, first: int, count: int) -> None:
    for name in ("gate_proj", "up_proj", "down_proj",
                 "gate_proj_scale_inv", "up_proj_scale_inv", "down_proj_scale_inv"):
        old = getattr(experts, name)
        if old is None:
            continue
        new = torch.empty(count, *old.shape[1:], dtype=old.dtype, device=old.device)
        if cut.materialised:
            new.copy_(old[first : first + count])
        setattr(experts, name, nn.Parameter(new, requires_grad=False))


class _Cutter:
    """Makes the sharded modules, records each shard, and copies the slices when weights exist."""

    def __init__(self, materialised: bool):
        self.materialised = materialised
        self.shards: dict[str, Shard] = {}
        self.experts: dict[str, range] = {}

    def fill(self, module: nn.Module, old: Mapping[str, Tensor], name: str, part: Shard) -> nn.Module:
        """Record `name`'s shard; copy the old parameters' slices into `module` when they hold data."""
        self.shards[name] = part
        if self.materialised:
            for attr, t in old.items():
                block = WEIGHT_BLOCK if attr == "weight_scale_inv" else 1
                getattr(module, attr).copy_(t[part.slices(t.shape, block)])
        return module

    def linear(self, lin: Linear, name: str, part: Shard, group=None, row_parallel: Optional[bool] = None) -> Linear:
        """Column part (dim 0: output features) or row part (dim 1: input features) of a Linear."""
        n = part.stop - part.start
        in_f, out_f = (lin.in_features, n) if part.dim == 0 else (n, lin.out_features)
        kw = dict(fp8=lin.is_fp8, ue8m0=lin.ue8m0, dtype=lin.weight.dtype)  # (dtype is ignored when fp8)
        row_parallel = part.dim == 1 if row_parallel is None else row_parallel
        with torch.device(lin.weight.device):
            new = (RowParallelLinear(in_f, out_f, lin.ops, group=group, **kw) if row_parallel
                   else Linear(in_f, out_f, lin.ops, **kw))
        old = {"weight": lin.weight}
        if lin.weight_scale_inv is not None:
            old["weight_scale_inv"] = lin.weight_scale_inv
        return self.fill(new, old, name + ".weight", part)


__all__ = ["ParallelGroups", "Sharding", "Shard", "NOT_HELD", "parallelize", "check_layout", "ParallelMoE",
           "RowParallelLinear", "VocabParallelEmbedding", "VocabParallelLMHead"]
