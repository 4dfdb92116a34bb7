"""Tensor, expert and DP-attention parallelism as a pass over a built model (no global state).

The groups and collectives: dsa.model.parallel_groups; the modules swapped in: dsa.model.parallel_modules.

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
from torch import Tensor, nn

from dsa.model.layers import WEIGHT_BLOCK, Linear
from dsa.model.moe import MLP, MoE
from dsa.model.parallel_groups import ParallelGroups, check_layout  # noqa: F401  (check_layout: re-exported)
from dsa.model.parallel_modules import ParallelMoE, RowParallelLinear, VocabParallelEmbedding, VocabParallelLMHead


class _NotHeld:
    """The slicer's answer for a tensor this rank holds no part of (a routed expert of another rank)."""

    def __repr__(self) -> str:
        return "NOT_HELD"


NOT_HELD = _NotHeld()  # compared with `is`


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
