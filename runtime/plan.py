"""The plan: device profile + model config + parallel layout -> what will run, and whether it fits.

    plan = make_plan(load_profile("h200"), ModelConfig.from_file("configs/models/deepseek-v3.2-exp"))
    print(plan.describe())      # layout, provider per op (+ why the others were rejected), memory
    plan.check_runnable(detect())
    ops = plan.opset()          # what the model calls

Memory is estimated per device, in GiB, from the config's tensor shapes (`weight_groups`) - no weights
are read. Sharding assumed (the layout pass in model/parallel.py follows it):
  * tp (attention tensor parallelism): q_b_proj, kv_b_proj, o_proj split by heads; dense FFN and
    shared experts split by intermediate size; embed_tokens and lm_head split by vocabulary.
  * ep: routed experts split over ep ranks (with ep < world, each group of ep ranks holds a copy).
  * replicated: q_a_proj, kv_a_proj_with_mqa, the indexer, the router and every norm.
The MTP layer (layer 61) is not counted: plain decoding does not load it.
KV cache: MLA keeps one latent head, so every tp rank of a DP-attention group holds the whole cache of
that group's requests; dp_attention groups hold disjoint requests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from model.config import ModelConfig
from runtime import registry
from runtime.detect import Hardware
from runtime.errors import DsaError, NoProviderError
from runtime.profile import KV_DTYPES, WEIGHT_FORMATS, DeviceProfile, LayoutSpec

GiB = 1 << 30
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
BLOCK = 128  # fp8 weight block (weight_scale_inv is one fp32 per 128 x 128 block)

# Kept free on every device for activations, MoE dispatch buffers, collective buffers, the CUDA/HIP
# context and allocator fragmentation: RESERVE_FRACTION of the device memory, at least RESERVE_MIN_GB.
RESERVE_FRACTION = 0.10
RESERVE_MIN_GB = 1.0
# The plan "fits" only if the cache left over holds at least this many tokens per DP-attention group.
MIN_CACHE_TOKENS = 4096


# ---- parameter accounting (shared: anything that needs per-group sizes of a config uses this) ----

@dataclass(frozen=True)
class TensorGroup:
    """`copies` tensors of `shape`, stored as `kind`, split over the `shard` dimension of the layout.

    kind: "linear" = a Linear weight (fp8 + 128x128 fp32 block scales in an fp8 checkpoint, else the
    compute dtype); "dense" = always the compute dtype (bf16 in the checkpoint); "fp32" = norms/biases.
    shard: "tp" | "ep" | "replicated".
    """

    group: str
    name: str
    shape: tuple[int, ...]
    kind: str
    shard: str
    copies: int = 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape) * self.copies

    def nbytes(self, weights: str, dtype: str = "bf16") -> int:
        """Bytes of all copies (unsharded). weights: "fp8" keeps linears fp8 with block scales."""
        if self.kind == "fp32":
            return 4 * self.numel
        if self.kind == "linear" and weights == "fp8":
            out, inp = self.shape
            scales = math.ceil(out / BLOCK) * math.ceil(inp / BLOCK)
            return (math.prod(self.shape) + 4 * scales) * self.copies
        return DTYPE_BYTES[dtype] * self.numel


def weight_groups(config: ModelConfig) -> list[TensorGroup]:
    """Every weight tensor of the model (MTP layer excluded), grouped, with its sharding."""
    c = config
    L, dense, moe = c.num_hidden_layers, c.first_k_dense_replace, c.num_hidden_layers - c.first_k_dense_replace
    H, D = c.num_attention_heads, c.hidden_size
    g: list[TensorGroup] = [
        TensorGroup("embed", "embed_tokens", (c.vocab_size, D), "dense", "tp"),
        TensorGroup("lm_head", "lm_head", (c.vocab_size, D), "dense", "tp"),
        TensorGroup("norms", "norm", (D,), "fp32", "replicated"),
        TensorGroup("norms", "input/post_attention_layernorm", (D,), "fp32", "replicated", 2 * L),
        TensorGroup("norms", "q_a_layernorm", (c.q_lora_rank,), "fp32", "replicated", L),
        TensorGroup("norms", "kv_a_layernorm", (c.kv_lora_rank,), "fp32", "replicated", L),
        TensorGroup("attention", "q_a_proj", (c.q_lora_rank, D), "linear", "replicated", L),
        TensorGroup("attention", "kv_a_proj_with_mqa", (c.kv_lora_rank + c.qk_rope_head_dim, D), "linear", "replicated", L),
        TensorGroup("attention", "q_b_proj", (H * c.qk_head_dim, c.q_lora_rank), "linear", "tp", L),
        TensorGroup("attention", "kv_b_proj", (H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank), "linear", "tp", L),
        TensorGroup("attention", "o_proj", (D, H * c.v_head_dim), "linear", "tp", L),
        TensorGroup("indexer", "indexer.wq_b", (c.index_n_heads * c.index_head_dim, c.q_lora_rank), "linear", "replicated", L),
        TensorGroup("indexer", "indexer.wk", (c.index_head_dim, D), "linear", "replicated", L),
        TensorGroup("indexer", "indexer.weights_proj", (c.index_n_heads, D), "dense", "replicated", L),
        TensorGroup("norms", "indexer.k_norm weight+bias", (c.index_head_dim,), "fp32", "replicated", 2 * L),
    ]
    if dense:
        g += [
            TensorGroup("dense_ffn", "mlp.gate_proj/up_proj", (c.intermediate_size, D), "linear", "tp", 2 * dense),
            TensorGroup("dense_ffn", "mlp.down_proj", (D, c.intermediate_size), "linear", "tp", dense),
        ]
    if moe:
        E, I = c.n_routed_experts, c.moe_intermediate_size
        g += [
            TensorGroup("router", "mlp.gate", (E, D), "dense", "replicated", moe),
            TensorGroup("router", "mlp.gate.e_score_correction_bias", (E,), "fp32", "replicated", moe),
            TensorGroup("routed_experts", "experts.gate_proj/up_proj", (I, D), "linear", "ep", 2 * moe * E),
            TensorGroup("routed_experts", "experts.down_proj", (D, I), "linear", "ep", moe * E),
        ]
        if c.n_shared_experts:
            S = I * c.n_shared_experts
            g += [
                TensorGroup("shared_experts", "shared_experts.gate_proj/up_proj", (S, D), "linear", "tp", 2 * moe),
                TensorGroup("shared_experts", "shared_experts.down_proj", (D, S), "linear", "tp", moe),
            ]
    return g


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters per group (embed, lm_head, norms, attention, indexer, dense_ffn, router, ...)."""
    out: dict[str, int] = {}
    for t in weight_groups(config):
        out[t.group] = out.get(t.group, 0) + t.numel
    return out


def cache_bytes_per_token_layer(config: ModelConfig, kv_cache_dtype: str) -> tuple[int, int]:
    """(latent bytes, index bytes) for one token of one layer: 1152 / 656 and 132 for 671B."""
    if kv_cache_dtype == "fp8":
        from runtime.ops import kv_format

        try:
            latent = kv_format.packed_bytes(config.kv_lora_rank, config.qk_rope_head_dim)
        except ValueError as err:
            raise DsaError(f"kv cache fp8: {err}; use kv cache bf16") from None
    else:
        latent = 2 * config.latent_dim
    return latent, config.index_head_dim + 4  # index key fp8 + one fp32 scale


# ---- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    """Per device, in bytes unless named *_gb."""

    device_bytes: int  # usable by one rank (device memory / ranks sharing the device)
    weight_bytes: int  # this rank's shard of the weights
    weight_bytes_by_group: dict[str, int]
    weight_bytes_total: int  # the whole model, unsharded
    reserve_bytes: int
    latent_bytes_per_token_layer: int
    index_bytes_per_token_layer: int
    cache_layers: int
    free_bytes: int  # left for the KV + index cache (may be negative)
    tokens_per_group: int  # cache capacity of one DP-attention group (every rank of it holds it all)
    tokens_total: int  # over all dp_attention groups
    fits: bool
    verdict: str

    @property
    def cache_bytes_per_token(self) -> int:
        return (self.latent_bytes_per_token_layer + self.index_bytes_per_token_layer) * self.cache_layers


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
        from runtime.ops import OpSet

        return OpSet(self.selections)

    def check_runnable(self, hw: Hardware) -> None:
        """DsaError unless this machine is the hardware the profile describes (and has enough devices)."""
        p = self.profile
        if (hw.platform, hw.arch) != (p.platform, p.arch):
            from runtime.detect import matching_profiles
            from runtime.profile import list_profiles, load_profile

            names = []
            for n in list_profiles():
                try:
                    names.append(load_profile(n))
                except DsaError:
                    continue
            matches = matching_profiles(hw, names)
            use = f"use --device {matches[0]}" if matches else (
                f"no shipped profile matches {hw.platform}/{hw.arch}: copy one in configs/devices/ and edit it")
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
        p, c, lay, m = self.profile, self.config, self.layout, self.memory
        total_params = sum(count_parameters(c).values())
        lines = [
            f"device   {p.name}: {p.description}  [{p.platform}/{p.arch}, fp8 {p.fp8_format}, {p.collective}]",
            f"model    {_count(total_params)} parameters: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_attention_heads} heads, {c.n_routed_experts} routed experts (top {c.num_experts_per_tok})",
            f"layout   {lay.nodes} node(s) x {self.ranks_per_node} ranks = world {lay.world_size}: "
            f"tp {lay.tp} x dp_attention {lay.dp_attention}, ep {lay.ep} "
            f"({self.target.num_heads} heads and {_experts_per_rank(c, lay.ep)} routed experts per rank)",
            f"formats  compute {self.dtype}, weights {self.weights}, kv cache {self.kv_cache_dtype} "
            f"({m.latent_bytes_per_token_layer} B latent + {m.index_bytes_per_token_layer} B index per token per "
            f"layer), page {self.page_size}",
            "",
            "providers (first usable is chosen; later usable ones run when the chosen one declines a call)",
        ]
        width = max(len(op) for op in self.selections)
        for op, sel in self.selections.items():
            fallbacks = [pr.name for pr in sel.usable[1:]]
            extra = f"  (then {', '.join(fallbacks)})" if fallbacks else ""
            lines.append(f"  {op:<{width}}  {sel.chosen.name}{extra}")
            for name, reason in sel.rejected:
                lines.append(f"  {'':<{width}}    x {name}: {reason}")
        shared = self._ranks_per_device()
        lines += ["", f"memory per rank (device {p.memory_gb:g} GiB" + (f", shared by {shared} ranks" if shared > 1 else "") + ")"]
        groups = ", ".join(f"{g} {_size(b)}" for g, b in m.weight_bytes_by_group.items() if b)
        lines += [
            f"  weights     {_size(m.weight_bytes):>11}  ({groups}; whole model {_size(m.weight_bytes_total)})",
            f"  reserve     {_size(m.reserve_bytes):>11}  (workspace: {RESERVE_FRACTION:.0%} of the device, "
            f"at least {RESERVE_MIN_GB:g} GiB: activations, buffers, context)",
            f"  kv + index  {_size(max(m.free_bytes, 0)):>11}  ({_size(m.cache_bytes_per_token)} per token "
            f"over {m.cache_layers} layers -> {m.tokens_per_group:,} tokens per DP group, "
            f"{m.tokens_total:,} in all)",
            f"  verdict     {'fits' if m.fits else 'DOES NOT FIT'}: {m.verdict}",
        ]
        if self.notes:
            lines += ["", "notes"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines)

    def _ranks_per_device(self) -> int:
        return max(1, math.ceil(self.ranks_per_node / self.profile.devices_per_node))


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _experts_per_rank(config: ModelConfig, ep: int) -> int:
    return config.n_routed_experts // ep if config.n_routed_experts else 0


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _resolve_layout(profile: DeviceProfile, config: ModelConfig, tp, ep, dp_attention, nodes) -> LayoutSpec:
    base = profile.layout
    for name, v in (("tp", tp), ("ep", ep), ("dp_attention", dp_attention), ("nodes", nodes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise DsaError(f"{name} must be a positive integer, got {v!r}")
    n_nodes = nodes if nodes is not None else base.nodes
    devices = profile.devices_per_node * n_nodes
    cpu = profile.platform == "cpu"  # CPU ranks are processes: not bounded by a device count
    changed = any(v is not None for v in (tp, dp_attention)) or n_nodes != base.nodes
    if tp is None and dp_attention is None:
        tp = base.tp
        dp_attention = base.dp_attention if (n_nodes == base.nodes or cpu) else None
    if dp_attention is None:
        if cpu:
            dp_attention = base.dp_attention
        elif devices % tp:
            raise DsaError(f"tp={tp} does not divide the {devices} devices ({profile.devices_per_node} per node x "
                           f"{n_nodes} node(s)); tp could be {_fmt(_divisors(devices))}")
        else:
            dp_attention = devices // tp
    if tp is None:
        if cpu:
            tp = base.tp
        elif devices % dp_attention:
            raise DsaError(f"dp_attention={dp_attention} does not divide the {devices} devices; "
                           f"dp_attention could be {_fmt(_divisors(devices))}")
        else:
            tp = devices // dp_attention
    world = tp * dp_attention
    if world % n_nodes:
        raise DsaError(f"world size tp * dp_attention = {tp} * {dp_attention} = {world} is not divisible by "
                       f"nodes={n_nodes}; every node must run the same number of ranks")
    if not cpu and world // n_nodes > profile.devices_per_node:
        raise DsaError(f"tp * dp_attention = {world} ranks over {n_nodes} node(s) needs {world // n_nodes} devices "
                       f"per node, but {profile.name} has {profile.devices_per_node}; use fewer ranks or more --nodes")
    H = config.num_attention_heads
    if H % tp:
        ok = [d for d in _divisors(H) if d <= max(world, tp)]
        raise DsaError(f"tp={tp} does not divide num_attention_heads={H}; tp must divide {H}: try {_fmt(ok)}")
    if ep is None:
        ep = base.ep if not changed and world % base.ep == 0 else world
    if world % ep:
        raise DsaError(f"ep={ep} does not divide the world size {world} (= tp {tp} x dp_attention {dp_attention}); "
                       f"ep could be {_fmt(_divisors(world))}")
    E = config.n_routed_experts
    if config.first_k_dense_replace < config.num_hidden_layers and E % ep:
        ok = [d for d in _divisors(world) if E % d == 0]
        raise DsaError(f"ep={ep} does not divide n_routed_experts={E}; ep must divide both {E} and the world size "
                       f"{world}: try {_fmt(ok)}")
    # index_n_heads: the indexer is replicated on every rank, so any tp works for it.
    return LayoutSpec(tp=tp, dp_attention=dp_attention, ep=ep, nodes=n_nodes)


def _remedies(profile: DeviceProfile, weights: str) -> str:
    fixes = ["more devices (--nodes, a larger ep / tp)"]
    if weights != "fp8" and profile.fp8_format != "none":
        fixes.append("fp8 weights")
    fixes.append("a device with more memory")
    return ", ".join(fixes[:-1]) + " or " + fixes[-1]


def _fmt(values: list[int]) -> str:
    return ", ".join(map(str, values)) or "none"


def _memory(profile: DeviceProfile, config: ModelConfig, layout: LayoutSpec, weights: str, dtype: str,
            kv_cache_dtype: str, page_size: int, memory_gb: float) -> MemoryEstimate:
    ranks_per_device = max(1, math.ceil((layout.world_size // layout.nodes) / profile.devices_per_node))
    device = int(memory_gb * GiB / ranks_per_device)
    factor = {"tp": layout.tp, "ep": layout.ep, "replicated": 1}
    by_group: dict[str, int] = {}
    total = 0
    for t in weight_groups(config):
        b = t.nbytes(weights, dtype)
        total += b
        by_group[t.group] = by_group.get(t.group, 0) + math.ceil(b / factor[t.shard])
    weight_bytes = sum(by_group.values())
    reserve = max(int(RESERVE_FRACTION * device), int(RESERVE_MIN_GB * GiB))
    latent, index = cache_bytes_per_token_layer(config, kv_cache_dtype)
    layers = config.num_hidden_layers
    per_token = (latent + index) * layers
    free = device - weight_bytes - reserve
    tokens = max(free, 0) // per_token // page_size * page_size
    need = MIN_CACHE_TOKENS if config.max_position_embeddings >= MIN_CACHE_TOKENS else config.max_position_embeddings
    if free <= 0:
        fits = False
        verdict = (f"the weights need {weight_bytes / GiB:.1f} GiB per rank; with the {reserve / GiB:.1f} GiB reserve "
                   f"that is {(weight_bytes + reserve - device) / GiB:.1f} GiB more than the {device / GiB:.1f} GiB "
                   f"available. Use {_remedies(profile, weights)}")
    elif tokens < need:
        fits = False
        verdict = (f"only {tokens:,} tokens of KV cache fit per DP group (need at least {need:,}); "
                   f"use more devices or an fp8 KV cache")
    else:
        fits = True
        ctx = config.max_position_embeddings
        verdict = f"{free / GiB:.1f} GiB per rank left for the cache = {tokens:,} tokens per DP-attention group"
        if tokens < ctx:
            verdict += f" (tight: less than one full {ctx:,}-token context)"
        else:
            verdict += f" (~{tokens // ctx:,} full {ctx:,}-token contexts)"
    return MemoryEstimate(
        device_bytes=device, weight_bytes=weight_bytes, weight_bytes_by_group=by_group, weight_bytes_total=total,
        reserve_bytes=reserve, latent_bytes_per_token_layer=latent, index_bytes_per_token_layer=index,
        cache_layers=layers, free_bytes=free, tokens_per_group=tokens, tokens_total=tokens * layout.dp_attention,
        fits=fits, verdict=verdict,
    )


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
) -> Plan:
    """Resolve the layout (profile defaults, overridden by the arguments), choose providers, estimate memory.

    Layout overrides: given only tp (or only dp_attention), the other fills the node(s); ep defaults
    to the profile's when the layout is unchanged, else to the world size. `memory_gb` overrides the
    profile's per-device memory (e.g. the RAM detected on a CPU host).
    """
    notes: list[str] = []
    layout = _resolve_layout(profile, config, tp, ep, dp_attention, nodes)

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

    mem = _memory(profile, config, layout, effective, profile.dtype, kv, profile.kv_cache.page_size,
                  memory_gb if memory_gb is not None else profile.memory_gb)
    if layout.tp > 1:
        notes.append(f"each of the {layout.tp} tp ranks of a DP-attention group keeps a full copy of that group's "
                     "KV cache (MLA has one latent head); dp_attention shards requests instead")
    return Plan(profile=profile, config=config, layout=layout, target=target, selections=selections,
                dtype=profile.dtype, weights=effective, kv_cache_dtype=kv, page_size=profile.kv_cache.page_size,
                memory=mem, notes=notes)


__all__ = ["Plan", "MemoryEstimate", "TensorGroup", "make_plan", "weight_groups", "count_parameters",
           "cache_bytes_per_token_layer", "RESERVE_FRACTION", "RESERVE_MIN_GB", "MIN_CACHE_TOKENS"]
