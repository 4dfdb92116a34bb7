"""Print the README's "Memory planning" table: `dsa plan` for every shipped profile on the 671B config.

    .venv/bin/python -m dsa.bench.plan_table            # Markdown table on stdout (paste into README.md)

Each row is the layout search of `dsa plan --device NAME --model deepseek-v3.2-exp` (no layout flags:
1..4 nodes, fewest devices first, then the profile's own shape), at the default request of one
163,840-token sequence per DP-attention group; the extra `h200 --tp 8` row is the pure-TP8 layout.
tests/unit/test_plan.py checks that README.md carries exactly this output.
"""
from __future__ import annotations

from dsa.configs import CONFIG_DIR
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import LayoutSpec, list_profiles, load_profile
from dsa.planning.parameters import GiB
from dsa.planning.plan import Plan, make_plan, search_layouts

HEADER = ("profile", "devices", "profile default", "layout chosen", "weights / device", "left after weights",
          "workspace", "KV + index / token", "tokens that fit / DP group", "verdict")


def _lay(lay: LayoutSpec) -> str:
    return f"{lay.nodes}x{lay.world_size // lay.nodes}: tp{lay.tp} dp{lay.dp_attention} ep{lay.ep}"


def _gib(n: int) -> str:
    return f"{n / GiB:,.1f} GiB"


def _seqs(m) -> str:
    n = m.sequences_per_group
    return f"{n:,} x {m.context:,} tokens per DP group" + (" (tight)" if n < 2 else "")


def _row(name: str, shown: Plan, default: str, chosen: str, verdict: str) -> tuple[str, ...]:
    m, p = shown.memory, shown.profile
    per_layer = m.latent_bytes_per_token_layer + m.index_bytes_per_token_layer
    return (name, f"{p.devices_per_node} x {p.memory_gb:g} GiB per node", default, chosen, _gib(m.weight_bytes),
            _gib(m.after_weights_bytes), _gib(m.workspace_bytes),
            f"{per_layer:,} B x {m.cache_layers} = {m.cache_bytes_per_token:,} B ({shown.kv_cache_dtype})",
            f"{m.tokens_per_group:,}" if m.free_bytes > 0 else "0", verdict)


def rows(config: ModelConfig) -> list[tuple[str, ...]]:
    out = []
    for name in list_profiles():
        profile = load_profile(name)
        s = search_layouts(profile, config)
        default = (f"{_lay(s.default.layout)}: {'fits' if s.default.memory.fits else 'does not fit'}"
                   if s.default else "invalid for this model")
        if s.chosen is not None:
            m = s.chosen.memory
            chosen = _lay(s.chosen.layout)
            verdict = f"fits {s.chosen.weights} weights: {_seqs(m)}"
        else:
            chosen = f"none up to {s.max_nodes} nodes"
            verdict = (f"does not fit {s.max_nodes} nodes: {s.shown.weights} weights are "
                       f"{s.shown.memory.weight_bytes_total / GiB:,.0f} GiB")
        if profile.fp8_format == "none" and config.fp8_weights:
            w8 = (f"would fit {s.int8[0].world_size} dies ({_lay(s.int8[0])})" if s.int8 else "would not fit either")
            verdict = (f"no fp8: bf16 {'needs ' + str(s.chosen.world_size) + ' dies' if s.chosen else 'does not fit'};"
                       f" int8 W8A8 {w8}, not loaded yet")
        out.append(_row(name, s.shown, default, chosen, verdict))
        if name == "h200":
            tp8 = make_plan(profile, config, tp=8)
            out.append(_row("h200 `--tp 8`", tp8, "", _lay(tp8.layout),
                            f"fits {tp8.weights} weights: {_seqs(tp8.memory)}"))
    return out


def markdown_table(config: ModelConfig | None = None) -> str:
    config = config or ModelConfig.from_file(CONFIG_DIR / "models" / "deepseek-v3.2-exp")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(config)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
