"""The text of `dsa plan`: Plan.describe (describe_plan) and LayoutSearch.summary (summarize_search).

Formatting only: the numbers come from the plan's MemoryEstimate and the search's plans.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dsa.model.config import ModelConfig
from dsa.planning.device_profile import LayoutSpec
from dsa.planning.memory import RESERVE_FRACTION, RESERVE_MIN_GB, MemoryEstimate, sequences_text
from dsa.planning.parameters import GiB, count_parameters

if TYPE_CHECKING:
    from dsa.planning.plan import LayoutSearch, Plan


def describe_plan(plan: Plan) -> str:
    """Plan.describe: device, model, layout, formats, the provider per op (with why others were rejected),
    memory per rank and notes."""
    p, c, lay, m = plan.profile, plan.config, plan.layout, plan.memory
    total_params = sum(count_parameters(c).values())
    lines = [
        f"device   {p.name}: {p.description}  [{p.platform}/{p.arch}, fp8 {p.fp8_format}, {p.collective}]",
        f"model    {_count(total_params)} parameters: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
        f"{c.num_attention_heads} heads, {c.n_routed_experts} routed experts (top {c.num_experts_per_tok})",
        f"layout   {lay.nodes} node(s) x {plan.ranks_per_node} ranks = world {lay.world_size}: "
        f"tp {lay.tp} x dp_attention {lay.dp_attention}, ep {lay.ep} "
        f"({plan.target.num_heads} heads and {_experts_per_rank(c, lay.ep)} routed experts per rank)",
        f"formats  compute {plan.dtype}, weights {plan.weights}, kv cache {plan.kv_cache_dtype} "
        f"({m.latent_bytes_per_token_layer} B latent + {m.index_bytes_per_token_layer} B index per token per "
        f"layer), page {plan.page_size}",
        "",
        "providers (first usable is chosen; later usable ones run when the chosen one declines a call)",
    ]
    width = max(len(op) for op in plan.selections)
    for op, sel in plan.selections.items():
        fallbacks = [pr.name for pr in sel.usable[1:]]
        extra = f"  (then {', '.join(fallbacks)})" if fallbacks else ""
        lines.append(f"  {op:<{width}}  {sel.chosen.name}{extra}")
        for name, reason in sel.rejected:
            lines.append(f"  {'':<{width}}    x {name}: {reason}")
    shared = plan.ranks_per_device
    lines += ["", f"memory per rank (device {p.memory_gb:g} GiB"
              + (f", shared by {shared} ranks" if shared > 1 else "") + ")"]
    lines += _memory_lines(m, lay)
    if plan.notes:
        lines += ["", "notes"] + [f"  - {n}" for n in plan.notes]
    return "\n".join(lines)


def _memory_lines(m: MemoryEstimate, lay: LayoutSpec) -> list[str]:
    dtypes = ", ".join(f"{k} {_size(b)}" for k, b in m.weight_bytes_by_dtype.items() if b)
    groups = ", ".join(f"{g} {_size(b)}" for g, b in m.weight_bytes_by_group.items() if b)
    acts = ", ".join(f"{k} {_size(b)}" for k, b in m.activation_terms.items() if b)
    per_layer = m.latent_bytes_per_token_layer + m.index_bytes_per_token_layer
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
        f"(sequences rounded up to pages): room for {sequences_text(m.sequences_per_group, m.context)} per group, "
        f"{m.sequences_per_group * lay.dp_attention:,} in all",
        f"  verdict        {'fits' if m.fits else 'DOES NOT FIT'}: {m.verdict}",
    ]


def summarize_search(search: LayoutSearch) -> str:
    """LayoutSearch.summary: the best shape at each device count, the profile default and the smallest fit."""
    p = search.profile
    lines = [f"layout search ({p.devices_per_node} devices per node, 1..{search.max_nodes} nodes; fewest devices "
             f"first, then the profile's shape tp {p.layout.tp})"]
    head = ("devices", "nodes", "tp x dp", "ep", "weights/dev", "workspace", "cache/dev", "tokens/group", "")
    rows = [head] + [_row(pl, pl is search.chosen) for pl in search.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if search.default is not None:
        d = search.default
        same = search.chosen is not None and search.chosen.layout == d.layout
        lines.append(f"profile default  {_layout_str(d.layout)}: {'fits' if d.memory.fits else 'does not fit'}"
                     f"{' (= chosen)' if same else ''}")
    else:
        lines.append(f"profile default  invalid for this model: {search.default_error}")
    if search.chosen is not None:
        c = search.chosen
        lines.append(f"smallest fit     {_layout_str(c.layout)}: {c.memory.tokens_per_group:,} tokens per DP group "
                     f"({c.memory.sequences_per_group:,} x {c.memory.context:,})")
    else:
        last = search.rows[-1] if search.rows else search.default
        lines.append(f"smallest fit     none up to {search.max_nodes} node(s)"
                     + (f"; at {last.world_size} devices: {last.memory.verdict}" if last else ""))
    if p.fp8_format == "none" and search.shown.config.fp8_weights:
        bf16 = (f"bf16 weights need {search.chosen.world_size} devices ({_layout_str(search.chosen.layout)})"
                if search.chosen else f"bf16 weights do not fit {search.max_nodes} node(s)")
        if search.int8:
            lay, m = search.int8
            w8 = (f"int8 W8A8 would fit {lay.world_size} devices ({_layout_str(lay)}, "
                  f"{m.weight_bytes / GiB:.1f} GiB weights per device)")
        else:
            w8 = f"int8 W8A8 would not fit {search.max_nodes} node(s) either"
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


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _experts_per_rank(config: ModelConfig, ep: int) -> int:
    return config.n_routed_experts // ep if config.n_routed_experts else 0


__all__ = ["describe_plan", "summarize_search"]
