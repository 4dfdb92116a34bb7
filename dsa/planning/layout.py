"""Parallel layouts: resolve the one the arguments ask for, or list every valid one for the layout search.

    resolve_layout(profile, config, tp=8, ep=None, dp_attention=None, nodes=None)  # -> LayoutSpec or DsaError
    candidate_layouts(profile, config, max_nodes=4)   # valid layouts grouped by device count, smallest first
"""
from __future__ import annotations

import math

from dsa.errors import DsaError
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import MAX_PARALLEL, DeviceProfile, LayoutSpec, check_node_count


def resolve_layout(profile: DeviceProfile, config: ModelConfig, tp, ep, dp_attention, nodes) -> LayoutSpec:
    """The layout the arguments ask for (None = the profile's), checked against the devices and the model.

    DsaError naming the value at fault and the values that would work."""
    base = profile.layout
    for name, v in (("tp", tp), ("ep", ep), ("dp_attention", dp_attention), ("nodes", nodes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise DsaError(f"{name} must be a positive integer, got {v!r}")
        if v is not None and name != "nodes" and v > MAX_PARALLEL:
            raise DsaError(f"{name} must be at most {MAX_PARALLEL}, got {v}")
    if nodes is not None:
        check_node_count(nodes, "nodes")
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
                layouts.append(resolve_layout(profile, config, tp, ep, world // tp, n))
            except DsaError:
                continue
        if layouts:
            groups.append(layouts)
    return groups


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _fmt(values: list[int]) -> str:
    return ", ".join(map(str, values)) or "none"


__all__ = ["resolve_layout", "candidate_layouts"]
