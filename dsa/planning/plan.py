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

Per rank:  free = device - weights - workspace,  workspace = activations(batch, context) + overhead
(`activation_terms`; overhead = RESERVE_FRACTION of the device, at least RESERVE_MIN_GB), and the KV +
index cache gets the rest: tokens per DP group = free / ((latent + index bytes) x layers), in whole pages.
A plan fits when that holds `batch` sequences of `context` tokens (default 1 x max_position_embeddings).
`search_layouts` finds the smallest layout that fits (fewest devices, then the profile's own shape);
`plan_report` is what `dsa plan` prints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from dsa.errors import DsaError, NoProviderError
from dsa.hal import registry
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import KV_DTYPES, WEIGHT_FORMATS, DeviceProfile, LayoutSpec
from dsa.planning.hardware import Hardware

GiB = 1 << 30
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
BLOCK = 128  # fp8 weight block (weight_scale_inv is one fp32 per 128 x 128 block)

# Workspace = activations of one forward step (activation_terms) + a fixed overhead kept free on every
# device for the CUDA/HIP/NPU context, collective buffers, graphs and allocator fragmentation:
# RESERVE_FRACTION of the device memory, at least RESERVE_MIN_GB.
RESERVE_FRACTION = 0.05
RESERVE_MIN_GB = 1.0
PREFILL_CHUNK = 4096  # prompt tokens per forward step per DP-attention group (longer prompts are chunked)
MOE_SLACK = 2  # MoE buffers hold twice the balanced share of routed tokens (routing is never even)
DEFAULT_SEARCH_NODES = 4  # `dsa plan` without a layout searches 1..this many nodes


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

    def bytes_by_dtype(self, weights: str, dtype: str = "bf16") -> dict[str, int]:
        """Bytes of all copies (unsharded), by storage dtype: {"fp8": .., "fp32 scales": ..} for an fp8 linear
        (one fp32 per 128x128 block), {"int8": .., "fp32 scales": ..} for an int8 W8A8 linear (one fp32 per
        output channel), {dtype: ..} for a linear in the compute dtype or a "dense" tensor, {"fp32": ..} for norms."""
        if self.kind == "fp32":
            return {"fp32": 4 * self.numel}
        if self.kind == "linear" and weights in ("fp8", "int8"):
            out, inp = self.shape
            scales = math.ceil(out / BLOCK) * math.ceil(inp / BLOCK) if weights == "fp8" else out
            return {weights: self.numel, "fp32 scales": 4 * scales * self.copies}
        return {dtype: DTYPE_BYTES[dtype] * self.numel}

    def nbytes(self, weights: str, dtype: str = "bf16") -> int:
        """Bytes of all copies (unsharded). weights: "fp8" keeps linears fp8 with block scales."""
        return sum(self.bytes_by_dtype(weights, dtype).values())


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
        from dsa.hal import kv_format

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
    weight_bytes_by_dtype: dict[str, int]  # fp8 / int8, "fp32 scales", the compute dtype, fp32 (norms, biases)
    weight_bytes_total: int  # the whole model, unsharded
    reserve_bytes: int  # the fixed part of the workspace (context, collective buffers, fragmentation)
    activation_bytes: int  # the activation part of the workspace (sum of activation_terms)
    activation_terms: dict[str, int]
    step_tokens: int  # tokens of one forward step per DP group the activations are sized for
    latent_bytes_per_token_layer: int
    index_bytes_per_token_layer: int
    cache_layers: int
    free_bytes: int  # left for the KV + index cache (may be negative)
    tokens_per_group: int  # cache capacity of one DP-attention group (every rank of it holds it all)
    tokens_total: int  # over all dp_attention groups
    context: int  # tokens per sequence asked for
    batch: int  # sequences per DP group asked for
    tokens_needed: int  # batch x context, each sequence rounded up to whole pages
    fits: bool
    verdict: str
    int8_weight_bytes: Optional[int] = None  # devices without fp8: this rank's weights as int8 W8A8

    @property
    def cache_bytes_per_token(self) -> int:
        return (self.latent_bytes_per_token_layer + self.index_bytes_per_token_layer) * self.cache_layers

    @property
    def after_weights_bytes(self) -> int:
        return self.device_bytes - self.weight_bytes

    @property
    def workspace_bytes(self) -> int:
        return self.reserve_bytes + self.activation_bytes

    @property
    def sequences_per_group(self) -> int:
        """How many sequences of `context` tokens the cache of one DP group holds."""
        per_seq = self.tokens_needed // self.batch
        return self.tokens_per_group // per_seq if per_seq else 0


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
        lines += _memory_lines(m, lay)
        if self.notes:
            lines += ["", "notes"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines)

    def _ranks_per_device(self) -> int:
        return max(1, math.ceil(self.ranks_per_node / self.profile.devices_per_node))


def _memory_lines(m: MemoryEstimate, lay: LayoutSpec) -> list[str]:
    dtypes = ", ".join(f"{k} {_size(b)}" for k, b in m.weight_bytes_by_dtype.items() if b)
    groups = ", ".join(f"{g} {_size(b)}" for g, b in m.weight_bytes_by_group.items() if b)
    acts = ", ".join(f"{k} {_size(b)}" for k, b in m.activation_terms.items() if b)
    per_layer = m.latent_bytes_per_token_layer + m.index_bytes_per_token_layer
    seq = m.tokens_needed // m.batch
    return [
        f"  weights        {_size(m.weight_bytes):>11}  by dtype: {dtypes}",
        f"  {'':<26}by group: {groups}; whole model {_size(m.weight_bytes_total)}",
        f"  after weights  {_size(m.after_weights_bytes):>11}",
        f"  workspace      {_size(m.workspace_bytes):>11}  = activations {_size(m.activation_bytes)} (one step of "
        f"{m.step_tokens:,} tokens per DP group at context {m.context:,}: {acts})",
        f"  {'':<26}+ overhead {_size(m.reserve_bytes)} ({RESERVE_FRACTION:.0%} of the device, at least "
        f"{RESERVE_MIN_GB:g} GiB: runtime context, collective buffers, fragmentation)",
        f"  kv + index     {_size(max(m.free_bytes, 0)):>11}  ({m.latent_bytes_per_token_layer} B latent + "
        f"{m.index_bytes_per_token_layer} B index = {per_layer:,} B per token per layer x {m.cache_layers} layers = "
        f"{m.cache_bytes_per_token:,} B per token) -> {m.tokens_per_group:,} tokens per DP group, "
        f"{m.tokens_total:,} in all",
        f"  request        {m.batch} x {m.context:,} tokens per DP group = {m.tokens_needed:,} tokens of cache "
        f"(sequences rounded up to pages): room for {_seqs(m.sequences_per_group, m.context)} per group, "
        f"{m.sequences_per_group * lay.dp_attention:,} in all",
        f"  verdict        {'fits' if m.fits else 'DOES NOT FIT'}: {m.verdict}",
    ]


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


def _remedies(profile: DeviceProfile, weights: str, kv_cache_dtype: str = "fp8", cache_short: bool = False) -> str:
    fixes = ["more devices (--nodes, a larger ep / tp)"]
    if weights != "fp8" and profile.fp8_format != "none":
        fixes.append("fp8 weights")
    if cache_short:
        fixes.insert(0, "a smaller --batch / --context")
        if kv_cache_dtype != "fp8" and profile.fp8_format != "none":
            fixes.append("an fp8 KV cache")
    fixes.append("a device with more memory")
    return ", ".join(fixes[:-1]) + " or " + fixes[-1]


def _fmt(values: list[int]) -> str:
    return ", ".join(map(str, values)) or "none"


def _seqs(n: int, context: int) -> str:
    return f"{n:,} sequence{'' if n == 1 else 's'} of {context:,}"


def _pages(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size) * page_size


def activation_terms(config: ModelConfig, layout: LayoutSpec, dtype: str, context: int, batch: int
                     ) -> tuple[dict[str, int], int]:
    """Peak activation bytes of one forward step on one rank, by term, and the step's tokens T per DP group.

    T = min(max(batch, PREFILL_CHUNK), batch * context): a decode step has `batch` tokens, a prefill step
    at most PREFILL_CHUNK. Layers run one at a time, so one layer's temporaries count (all summed, an
    upper bound), with e = bytes of the compute dtype, h = heads per rank (H / tp):
      hidden        T * 3 * D * e                       residual, normed input, block output
      attention     T * h * (192 + 576 + 512 + 128) * e q, absorbed q, latent output, per-head output
      indexer       T * (64 * (128 + 8) + 2048 * 4)     fp8 index q + scales + head weights, top-k int32
      index scores  T * context * 4                     fp32 indexer logits against the whole context
      ffn           max(dense FFN T * 3 * I_dense / tp * e,
                        MoE MOE_SLACK * T * k / tp * (2 D + 3 I) * e + shared T * 3 * I_shared / tp * e)
                    (routed tokens: the T * dp tokens of all groups, k experts each, spread over the world)
      logits        batch * V / tp * 4                  fp32, last position of each sequence
    """
    c, e = config, DTYPE_BYTES[dtype]
    tp = layout.tp
    T = min(max(batch, PREFILL_CHUNK), batch * context)
    heads = c.num_attention_heads // tp
    dense = T * 3 * math.ceil(c.intermediate_size / tp) * e if c.first_k_dense_replace else 0
    moe = 0
    if c.first_k_dense_replace < c.num_hidden_layers and c.n_routed_experts:
        routed = math.ceil(MOE_SLACK * T * c.num_experts_per_tok / tp)
        moe = routed * (2 * c.hidden_size + 3 * c.moe_intermediate_size) * e
        moe += T * 3 * math.ceil(c.n_shared_experts * c.moe_intermediate_size / tp) * e
    terms = {
        "index scores": T * context * 4,
        "ffn": max(dense, moe),
        "attention": T * heads * (c.qk_head_dim + c.latent_dim + c.kv_lora_rank + c.v_head_dim) * e,
        "hidden": T * 3 * c.hidden_size * e,
        "indexer": T * (c.index_n_heads * (c.index_head_dim + 8) + min(c.index_topk, context) * 4),
        "logits": batch * math.ceil(c.vocab_size / tp) * 4,
    }
    return terms, T


_DTYPE_ORDER = ("fp8", "int8", "fp32 scales", "bf16", "fp16", "fp32")


def weights_per_rank(config: ModelConfig, layout: LayoutSpec, weights: str, dtype: str
                     ) -> tuple[int, dict[str, int], dict[str, int], int]:
    """(bytes on one rank, by group, by dtype, whole model) for weights "fp8" | "int8" | "bf16" | ... ."""
    factor = {"tp": layout.tp, "ep": layout.ep, "replicated": 1}
    by_group: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    total = 0
    for t in weight_groups(config):
        for kind, b in t.bytes_by_dtype(weights, dtype).items():
            share = math.ceil(b / factor[t.shard])
            total += b
            by_group[t.group] = by_group.get(t.group, 0) + share
            by_dtype[kind] = by_dtype.get(kind, 0) + share
    by_dtype = {k: by_dtype[k] for k in sorted(by_dtype, key=lambda k: _DTYPE_ORDER.index(k)
                                                if k in _DTYPE_ORDER else len(_DTYPE_ORDER))}
    return sum(by_group.values()), by_group, by_dtype, total


def _memory(profile: DeviceProfile, config: ModelConfig, layout: LayoutSpec, weights: str, dtype: str,
            kv_cache_dtype: str, page_size: int, memory_gb: float, context: Optional[int] = None,
            batch: Optional[int] = None) -> MemoryEstimate:
    context = context or config.max_position_embeddings
    batch = batch or 1
    ranks_per_device = max(1, math.ceil((layout.world_size // layout.nodes) / profile.devices_per_node))
    device = int(memory_gb * GiB / ranks_per_device)
    weight_bytes, by_group, by_dtype, total = weights_per_rank(config, layout, weights, dtype)
    reserve = max(int(RESERVE_FRACTION * device), int(RESERVE_MIN_GB * GiB))
    terms, step = activation_terms(config, layout, dtype, context, batch)
    act = sum(terms.values())
    latent, index = cache_bytes_per_token_layer(config, kv_cache_dtype)
    layers = config.num_hidden_layers
    per_token = (latent + index) * layers
    free = device - weight_bytes - reserve - act
    tokens = max(free, 0) // per_token // page_size * page_size
    need = batch * _pages(context, page_size)
    int8 = None
    if profile.fp8_format == "none" and weights not in ("fp8", "int8") and config.fp8_weights:
        int8 = weights_per_rank(config, layout, "int8", dtype)[0]
    if free <= 0:
        fits = False
        verdict = (f"weights {weight_bytes / GiB:.1f} GiB + workspace {(reserve + act) / GiB:.1f} GiB per rank is "
                   f"{-free / GiB:.1f} GiB more than the {device / GiB:.1f} GiB available. "
                   f"Use {_remedies(profile, weights)}")
    elif tokens < need:
        fits = False
        verdict = (f"the cache holds {tokens:,} tokens per DP group but {batch} x {context:,} needs {need:,}. "
                   f"Use {_remedies(profile, weights, kv_cache_dtype, cache_short=True)}")
    else:
        fits = True
        seqs = tokens // (need // batch)
        verdict = (f"{free / GiB:.1f} GiB per rank left for the cache = {tokens:,} tokens per DP group: "
                   f"{batch} x {context:,} fits ({_seqs(seqs, context)} per group, "
                   f"{seqs * layout.dp_attention:,} in all)")
        if tokens < 2 * need:
            verdict += " - tight: less than twice what was asked for"
    if int8 is not None:
        int8_free = device - int8 - reserve - act
        int8_fits = int8_free > 0 and int8_free // per_token >= need
        verdict += (f". No fp8 on {profile.arch}: the fp8 checkpoint is dequantised to {weights}; int8 W8A8 "
                    f"weights (~{int8 / GiB:.1f} GiB per rank) would "
                    f"{'fit this layout' if int8_fits else 'not fit this layout either'}, "
                    f"but this runtime does not load W8A8 yet")
    return MemoryEstimate(
        device_bytes=device, weight_bytes=weight_bytes, weight_bytes_by_group=by_group, weight_bytes_by_dtype=by_dtype,
        weight_bytes_total=total, reserve_bytes=reserve, activation_bytes=act, activation_terms=terms,
        step_tokens=step, latent_bytes_per_token_layer=latent, index_bytes_per_token_layer=index,
        cache_layers=layers, free_bytes=free, tokens_per_group=tokens, tokens_total=tokens * layout.dp_attention,
        context=context, batch=batch, tokens_needed=need, fits=fits, verdict=verdict, int8_weight_bytes=int8,
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
    layout = _resolve_layout(profile, config, tp, ep, dp_attention, nodes)
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

    mem = _memory(profile, config, layout, effective, profile.dtype, kv, profile.kv_cache.page_size,
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

def candidate_layouts(profile: DeviceProfile, config: ModelConfig, max_nodes: int) -> list[list[LayoutSpec]]:
    """Valid layouts grouped by device count, smallest first; in each group the profile's shape comes first.

    Device counts: the divisors of devices_per_node on one node, then whole nodes 2..max_nodes. Shapes:
    every tp dividing the heads and the world (dp_attention = world / tp); ep = gcd(world, experts), the
    widest valid expert split. The profile's shape keeps its tp where it divides (gcd(profile tp, world)).
    """
    base = profile.layout
    sizes = [(d, 1) for d in _divisors(profile.devices_per_node)]
    sizes += [(profile.devices_per_node * n, n) for n in range(2, max_nodes + 1)]
    groups = []
    for world, n in sorted(sizes):
        ep = math.gcd(world, config.n_routed_experts) if config.n_routed_experts else world
        preferred = math.gcd(math.gcd(base.tp, world), config.num_attention_heads)
        tps = sorted((d for d in _divisors(world) if config.num_attention_heads % d == 0),
                     key=lambda d: (d != preferred, d))
        layouts = []
        for tp in tps:
            try:
                layouts.append(_resolve_layout(profile, config, tp, ep, world // tp, n))
            except DsaError:
                continue
        if layouts:
            groups.append(layouts)
    return groups


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
        p = self.profile
        lines = [f"layout search ({p.devices_per_node} devices per node, 1..{self.max_nodes} nodes; fewest devices "
                 f"first, then the profile's shape tp {p.layout.tp})"]
        head = ("devices", "nodes", "tp x dp", "ep", "weights/dev", "workspace", "cache/dev", "tokens/group", "")
        rows = [head] + [_row(pl, pl is self.chosen) for pl in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if self.default is not None:
            d = self.default
            same = self.chosen is not None and self.chosen.layout == d.layout
            lines.append(f"profile default  {_layout_str(d.layout)}: {'fits' if d.memory.fits else 'does not fit'}"
                         f"{' (= chosen)' if same else ''}")
        else:
            lines.append(f"profile default  invalid for this model: {self.default_error}")
        if self.chosen is not None:
            c = self.chosen
            lines.append(f"smallest fit     {_layout_str(c.layout)}: {c.memory.tokens_per_group:,} tokens per DP group "
                         f"({c.memory.sequences_per_group:,} x {c.memory.context:,})")
        else:
            last = self.rows[-1] if self.rows else self.default
            lines.append(f"smallest fit     none up to {self.max_nodes} node(s)"
                         + (f"; at {last.world_size} devices: {last.memory.verdict}" if last else ""))
        if p.fp8_format == "none" and self.shown.config.fp8_weights:
            bf16 = (f"bf16 weights need {self.chosen.world_size} devices ({_layout_str(self.chosen.layout)})"
                    if self.chosen else f"bf16 weights do not fit {self.max_nodes} node(s)")
            if self.int8:
                lay, m = self.int8
                w8 = (f"int8 W8A8 would fit {lay.world_size} devices ({_layout_str(lay)}, "
                      f"{m.weight_bytes / GiB:.1f} GiB weights per device)")
            else:
                w8 = f"int8 W8A8 would not fit {self.max_nodes} node(s) either"
            lines.append(f"no fp8 on {p.arch}: {bf16}; {w8}, but this runtime does not load W8A8 yet")
        return "\n".join(lines)


def _layout_str(lay: LayoutSpec) -> str:
    return (f"{lay.nodes} node{'s' if lay.nodes > 1 else ''} x {lay.world_size // lay.nodes} = {lay.world_size}: "
            f"tp {lay.tp} x dp {lay.dp_attention}, ep {lay.ep}")


def _row(plan: Plan, chosen: bool) -> tuple[str, ...]:
    lay, m = plan.layout, plan.memory
    return (str(lay.world_size), str(lay.nodes), f"{lay.tp} x {lay.dp_attention}", str(lay.ep),
            _size(m.weight_bytes), _size(m.workspace_bytes), _size(max(m.free_bytes, 0)),
            f"{m.tokens_per_group:,}", ("fits" if m.fits else "no") + ("  <- chosen" if chosen else ""))


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
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes <= 0:
        raise DsaError(f"nodes must be a positive integer, got {max_nodes!r}")
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
            ests = [(lay, _memory(profile, config, lay, "int8", profile.dtype, kv, profile.kv_cache.page_size, mem_gb,
                                  context, batch)) for lay in layouts]
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
           "cache_bytes_per_token_layer", "RESERVE_FRACTION", "RESERVE_MIN_GB", "PREFILL_CHUNK", "MOE_SLACK",
           "DEFAULT_SEARCH_NODES"]
