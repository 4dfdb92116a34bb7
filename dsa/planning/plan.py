"""The plan: device profile + model config + parallel layout -> what will run, and whether it fits.

    plan = make_plan(load_profile("h200"), ModelConfig.from_file("dsa/configs/models/deepseek-v3.2-exp"))
    print(plan.describe())      # layout, provider per op (+ why the others were rejected), memory
    plan.check_runnable(detect())
    ops = plan.opset()          # what the model calls

Memory is estimated per device, in GiB, from the config's tensor shapes (`weight_groups`) - no weights
are read. Sharding assumed (the layout pass in dsa/model/parallel.py follows it):
  * tp (attention tensor parallelism): q_b_proj, kv_b_proj, o_proj split by heads; dense FFN and
    shared experts split by intermediate size; embed_tokens and lm_head split by vocabulary.
  * ep: routed experts split over ep ranks (with ep < world, each group of ep ranks holds a copy).
  * replicated: q_a_proj, kv_a_proj_with_mqa, the indexer, the router and every norm.
The MTP layer (layer 61) is not counted: plain decoding does not load it.
KV cache: MLA keeps one latent head, so every tp rank of a DP-attention group holds the whole cache of
that group's requests; dp_attention groups hold disjoint requests.

A plan fits when the KV + index cache left on each rank holds `batch` sequences of `context` tokens
(default 1 x max_position_embeddings). `search_layouts` finds the smallest layout that fits (fewest
devices, then the profile's own shape); `plan_report` is what `dsa plan` prints.

The planner's parts (their public names are re-exported here):
  parameters.py  every weight tensor of a config with its sharding and bytes; cache bytes per token
  memory.py      the memory model of one rank (weights, workspace, KV + index cache) and its verdict
  layout.py      layout resolution and the candidate layouts of the search
  report.py      the text of Plan.describe and LayoutSearch.summary
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from dsa.errors import DsaError, NoProviderError
from dsa.hal import registry
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import KV_DTYPES, WEIGHT_FORMATS, DeviceProfile, LayoutSpec, check_node_count
from dsa.planning.hardware import Hardware
from dsa.planning.layout import candidate_layouts, resolve_layout
from dsa.planning.memory import (
    MOE_SLACK,
    PREFILL_CHUNK,
    RESERVE_FRACTION,
    RESERVE_MIN_GB,
    MemoryEstimate,
    activation_terms,
    estimate_memory,
)
from dsa.planning.parameters import (
    GiB,
    TensorGroup,
    cache_bytes_per_token_layer,
    count_parameters,
    weight_groups,
    weights_per_rank,
)
from dsa.planning.report import describe_plan, summarize_search

DEFAULT_SEARCH_NODES = 4  # `dsa plan` without a layout searches 1..this many nodes


@dataclass
class Plan:
    profile: DeviceProfile
    config: ModelConfig
    layout: LayoutSpec
    target: registry.Target
    selections: dict[str, registry.Selection]
    dtype: str  # compute / residual dtype
    weights: str  # fp8 | bf16 (as loaded onto the device)
    kv_cache_dtype: str
    page_size: int
    memory: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def ranks_per_node(self) -> int:
        return self.layout.world_size // self.layout.nodes

    def providers(self) -> dict[str, str]:
        return {op: sel.chosen.name for op, sel in self.selections.items()}

    def opset(self):
        from dsa.hal import OpSet

        return OpSet(self.selections)

    def check_runnable(self, hw: Hardware) -> None:
        """DsaError unless this machine is the hardware the profile describes (and has enough devices)."""
        p = self.profile
        if (hw.platform, hw.arch) != (p.platform, p.arch):
            from dsa.planning.device_profile import list_profiles, load_profile
            from dsa.planning.hardware import matching_profiles

            names = []
            for n in list_profiles():
                try:
                    names.append(load_profile(n))
                except DsaError:
                    continue
            matches = matching_profiles(hw, names)
            use = f"use --device {matches[0]}" if matches else (
                f"no shipped profile matches {hw.platform}/{hw.arch}: copy one in dsa/configs/devices/ and edit it")
            raise DsaError(
                f"profile {p.name} is for {p.platform}/{p.arch} but this machine is "
                f"{hw.platform}{'' if hw.platform == 'cpu' else '/' + hw.arch} ({hw.name}); "
                f"{use} or run on {p.description or p.target_name}"
            )
        if p.platform != "cpu" and hw.device_count < self.ranks_per_node:
            raise DsaError(
                f"the layout needs {self.ranks_per_node} {p.platform} devices per node but this machine has "
                f"{hw.device_count}; pass a smaller --tp / --dp-attention (tp * dp_attention = devices used) "
                f"or more --nodes"
            )

    def describe(self) -> str:
        """Device, model, layout, formats, the provider per op (with why the others were rejected), memory."""
        return describe_plan(self)

    @property
    def ranks_per_device(self) -> int:
        return max(1, math.ceil(self.ranks_per_node / self.profile.devices_per_node))


def make_plan(
    profile: DeviceProfile,
    config: ModelConfig,
    *,
    tp: Optional[int] = None,
    ep: Optional[int] = None,
    dp_attention: Optional[int] = None,
    nodes: Optional[int] = None,
    kv_cache_dtype: Optional[str] = None,
    weights: Optional[str] = None,
    memory_gb: Optional[float] = None,
    context: Optional[int] = None,
    batch: Optional[int] = None,
) -> Plan:
    """Resolve the layout (profile defaults, overridden by the arguments), choose providers, estimate memory.

    Layout overrides: given only tp (or only dp_attention), the other fills the node(s); ep defaults
    to the profile's when the layout is unchanged, else to the world size. `memory_gb` overrides the
    profile's per-device memory (e.g. the RAM detected on a CPU host). `context` x `batch`: the
    sequences one DP group must hold (default 1 x max_position_embeddings); they size the workspace
    and decide whether the plan fits.
    """
    notes: list[str] = []
    _check_request(config, context, batch)
    layout = resolve_layout(profile, config, tp, ep, dp_attention, nodes)
    kv, effective = _formats(profile, config, kv_cache_dtype, weights, notes)

    target = registry.Target(
        platform=profile.platform, arch=profile.arch, fp8_format=profile.fp8_format, kv_cache_dtype=kv,
        page_size=profile.kv_cache.page_size, num_heads=config.num_attention_heads // layout.tp,
        index_n_heads=config.index_n_heads,
    )
    selections: dict[str, registry.Selection] = {}
    for op in registry.OPS:
        try:
            selections[op] = registry.select(op, list(profile.providers[op]), target)
        except NoProviderError as err:
            raise NoProviderError(f"profile {profile.name}: {err}") from None

    mem = estimate_memory(profile, config, layout, effective, profile.dtype, kv, profile.kv_cache.page_size,
                          memory_gb if memory_gb is not None else profile.memory_gb, context, batch)
    if layout.tp > 1:
        notes.append(f"each of the {layout.tp} tp ranks of a DP-attention group keeps a full copy of that group's "
                     "KV cache (MLA has one latent head); dp_attention shards requests instead")
    return Plan(profile=profile, config=config, layout=layout, target=target, selections=selections,
                dtype=profile.dtype, weights=effective, kv_cache_dtype=kv, page_size=profile.kv_cache.page_size,
                memory=mem, notes=notes)


def _check_request(config: ModelConfig, context: Optional[int], batch: Optional[int]) -> None:
    for name, v in (("context", context), ("batch", batch)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise DsaError(f"{name} must be a positive integer, got {v!r}")
    if context is not None and context > config.max_position_embeddings:
        raise DsaError(f"context {context:,} is longer than the model's max_position_embeddings "
                       f"{config.max_position_embeddings:,}")


def _formats(profile: DeviceProfile, config: ModelConfig, kv_cache_dtype: Optional[str], weights: Optional[str],
             notes: list[str]) -> tuple[str, str]:
    """(kv cache dtype, weights as loaded), checked against the device; notes what is converted."""
    kv = kv_cache_dtype or profile.kv_cache.dtype
    if kv not in KV_DTYPES:
        raise DsaError(f"kv cache dtype {kv!r} is not one of {', '.join(KV_DTYPES)}")
    if kv == "fp8" and profile.fp8_format == "none":
        raise DsaError(f"profile {profile.name} has no fp8 ({profile.arch}); use kv cache dtype bf16")

    requested = weights or profile.weights
    if requested not in WEIGHT_FORMATS:
        raise DsaError(f"weights {requested!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    if requested == "fp8" and profile.fp8_format == "none":
        raise DsaError(f"profile {profile.name} has no fp8 ({profile.arch}); use weights bf16")
    if requested == "fp8" and not config.fp8_weights:
        notes.append("the checkpoint is not fp8-quantised: weights are kept in the compute dtype")
        effective = "bf16"
    else:
        effective = requested
        if requested == "bf16" and config.fp8_weights:
            notes.append("fp8 checkpoint weights are dequantised to the compute dtype at load")
    if effective == "fp8" and profile.fp8_format == "e4m3fnuz":
        notes.append("checkpoint fp8 (e4m3fn) weights are converted to e4m3fnuz at load")
    return kv, effective


# ---- layout search ----------------------------------------------------------------------------

@dataclass
class LayoutSearch:
    profile: DeviceProfile
    max_nodes: int
    default: Optional[Plan]  # the profile's own layout (None if it is invalid for this model)
    default_error: Optional[str]
    rows: list[Plan]  # the best shape at each device count, smallest first, up to the chosen one
    chosen: Optional[Plan]  # the smallest layout that fits (None: nothing up to max_nodes fits)
    int8: Optional[tuple[LayoutSpec, MemoryEstimate]] = None  # no-fp8 devices: smallest layout W8A8 would fit

    @property
    def shown(self) -> Plan:
        return self.chosen or self.default or self.rows[-1]

    def summary(self) -> str:
        """The best shape at each device count, the profile default and the smallest fit."""
        return summarize_search(self)


def _best(plans: list[Plan]) -> Plan:
    """The profile's shape (first) if it fits, else the fitting shape with the most cache, else the least short."""
    fitting = [pl for pl in plans if pl.memory.fits]
    if fitting:
        return fitting[0] if fitting[0] is plans[0] else max(fitting, key=lambda pl: pl.memory.tokens_total)
    return max(plans, key=lambda pl: (pl.memory.free_bytes > 0, pl.memory.tokens_per_group, pl.memory.free_bytes))


def search_layouts(profile: DeviceProfile, config: ModelConfig, *, max_nodes: Optional[int] = None,
                   kv_cache_dtype: Optional[str] = None, weights: Optional[str] = None,
                   memory_gb: Optional[float] = None, context: Optional[int] = None,
                   batch: Optional[int] = None) -> LayoutSearch:
    """The smallest layout that fits: fewest devices over 1..max_nodes nodes, then the profile's own shape."""
    max_nodes = DEFAULT_SEARCH_NODES if max_nodes is None else max_nodes
    check_node_count(max_nodes, "nodes")  # 1..MAX_NODES: a search over 100000 nodes would take minutes
    _check_request(config, context, batch)
    _formats(profile, config, kv_cache_dtype, weights, [])  # format errors before any layout
    common = dict(kv_cache_dtype=kv_cache_dtype, weights=weights, memory_gb=memory_gb, context=context, batch=batch)
    try:
        default, default_error = make_plan(profile, config, **common), None
    except NoProviderError:
        raise
    except DsaError as err:
        default, default_error = None, str(err)
    groups = candidate_layouts(profile, config, max_nodes)
    rows: list[Plan] = []
    chosen = None
    for layouts in groups:
        plans = [make_plan(profile, config, tp=lay.tp, ep=lay.ep, dp_attention=lay.dp_attention, nodes=lay.nodes,
                           **common) for lay in layouts]
        best = _best(plans)
        rows.append(best)
        if best.memory.fits:
            chosen = best
            break
    int8 = None
    if profile.fp8_format == "none" and config.fp8_weights:
        kv, effective = _formats(profile, config, kv_cache_dtype, weights, [])
        mem_gb = memory_gb if memory_gb is not None else profile.memory_gb
        for layouts in groups:
            ests = [(lay, estimate_memory(profile, config, lay, "int8", profile.dtype, kv, profile.kv_cache.page_size,
                                          mem_gb, context, batch)) for lay in layouts]
            fit = [(lay, m) for lay, m in ests if m.fits]
            if fit:
                int8 = fit[0]
                break
    return LayoutSearch(profile=profile, max_nodes=max_nodes, default=default, default_error=default_error,
                        rows=rows, chosen=chosen, int8=int8)


def plan_report(profile: DeviceProfile, config: ModelConfig, *, tp: Optional[int] = None, ep: Optional[int] = None,
                dp_attention: Optional[int] = None, nodes: Optional[int] = None, **kwargs) -> str:
    """What `dsa plan` prints: with any of tp / ep / dp_attention, exactly that layout (nodes from `nodes` or
    the profile); with none, the search over 1..nodes (default DEFAULT_SEARCH_NODES) nodes and the chosen plan."""
    if any(v is not None for v in (tp, ep, dp_attention)):
        return make_plan(profile, config, tp=tp, ep=ep, dp_attention=dp_attention, nodes=nodes, **kwargs).describe()
    search = search_layouts(profile, config, max_nodes=nodes, **kwargs)
    which = ("the smallest layout that fits" if search.chosen is not None else
             "the profile's default layout (no layout fits)" if search.default is not None else
             "the largest layout searched (no layout fits)")
    return f"plan for {which}\n\n{search.shown.describe()}\n\n{search.summary()}"



__all__ = ["Plan", "MemoryEstimate", "TensorGroup", "LayoutSearch", "make_plan", "search_layouts", "plan_report",
           "candidate_layouts", "activation_terms", "weights_per_rank", "weight_groups", "count_parameters",
           "cache_bytes_per_token_layer", "GiB", "RESERVE_FRACTION", "RESERVE_MIN_GB", "PREFILL_CHUNK", "MOE_SLACK",
           "DEFAULT_SEARCH_NODES"]
