"""noaux_tc routing (docs/model-and-ops.md 2.3), checked on hand-computed cases.

The expected experts and weights below were worked out by hand from docs/model-and-ops.md 2.3, NOT by calling
any implementation: s = sigmoid(logit); b = s + bias; group score = sum of the top-2 b in the group;
keep the best topk_group groups; top-k experts by b; weight = s / sum(s of the chosen) * 2.5.
Each case is built so that a plausible mistake changes the answer (noted per token).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from dsa.conformance.model_helpers import tiny_config_json
from dsa.conformance.reference.model_ref import reference_router
from dsa.model.config import ModelConfig

TINY = Path(__file__).resolve().parents[2] / "dsa/configs/models/tiny/config.json"


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# Case A: 8 experts in 2 groups of 4 ({0..3}, {4..7}), keep 1 group, 2 experts per token.
CASE_A = dict(
    routing=dict(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2),
    bias=[0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0],
    logits=[
        # token 0: s = .731 .5 .269 .119 | .953 .047 .047 .047 ; b(2) = .569.
        # group scores: g0 = .731 + .569 = 1.300, g1 = .953 + .047 = 1.000 -> g0, so the single best
        # expert 4 is NOT chosen (group limit). In g0 the bias lifts expert 2 (b .569) above expert 1
        # (b .5), but the weights use the UNBIASED s: s0 + s2 = sig(1) + sig(-1) = 1 exactly.
        [1.0, 0.0, -1.0, -2.0, 3.0, -3.0, -3.0, -3.0],
        # token 1: g0 b = .881 .018 .318 .018 -> top-2 sum 1.199; g1 b = .731 .622 .018 .018 -> 1.354.
        # g1 wins on the sum of its top-2 although g0 holds the best single expert (a max-per-group
        # rule would pick g0).
        [2.0, -4.0, -4.0, -4.0, 1.0, 0.5, -4.0, -4.0],
    ],
    expected=[
        {0: 2.5 * sig(1.0), 2: 2.5 * sig(-1.0)},  # = 1.827646, 0.672354
        {4: 2.5 * sig(1.0) / (sig(1.0) + sig(0.5)), 5: 2.5 * sig(0.5) / (sig(1.0) + sig(0.5))},  # 1.350294, 1.149706
    ],
    numbers=[{0: 1.8276464, 2: 0.6723536}, {4: 1.3502935, 5: 1.1497065}],
)

# Case B: the tiny config's grouping: 8 experts in 4 groups of 2, keep 2 groups, 2 experts.
CASE_B = dict(
    routing=dict(n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2),
    bias=[0.0] * 8,
    logits=[
        # s = .953 .047 | .731 .690 | .5 .378 | .881 .007 ; group sums 1.000, 1.421, .878, .888
        # -> keep g1 and g0. Expert 6 (second best overall, s .881) is dropped with g3; the chosen
        # are 0 and 2.
        [3.0, -3.0, 1.0, 0.8, 0.0, -0.5, 2.0, -5.0],
    ],
    expected=[{0: 2.5 * sig(3.0) / (sig(3.0) + sig(1.0)), 2: 2.5 * sig(1.0) / (sig(3.0) + sig(1.0))}],
    numbers=[{0: 1.4144625, 2: 1.0855375}],
)


def case_config(case) -> ModelConfig:
    base = ModelConfig.from_file(TINY)
    assert base.routed_scaling_factor == 2.5 and base.norm_topk_prob
    cfg = dataclasses.replace(base, **case["routing"])
    cfg.validate()
    return cfg


def case_inputs(case, hidden: int):
    """One-hot tokens so that x @ W^T reproduces the hand-picked logits exactly."""
    logits = torch.tensor(case["logits"], dtype=torch.float32)  # [T, E]
    T, E = logits.shape
    x = torch.zeros(T, hidden)
    x[torch.arange(T), torch.arange(T)] = 1.0
    w = torch.zeros(E, hidden)
    w[:, :T] = logits.T
    return x, w, torch.tensor(case["bias"], dtype=torch.float32)


def as_dicts(experts, weights):
    return [dict(zip(e.tolist(), w.tolist())) for e, w in zip(experts, weights)]


def check(got: list[dict], case) -> None:
    for t, (g, exp, num) in enumerate(zip(got, case["expected"], case["numbers"])):
        assert sorted(g) == sorted(exp), f"token {t}: experts {sorted(g)} != hand-computed {sorted(exp)}"
        for e in exp:
            assert g[e] == pytest.approx(exp[e], abs=1e-6), f"token {t} expert {e}"
            assert exp[e] == pytest.approx(num[e], abs=1e-6)  # the formula gives the written numbers


@pytest.mark.parametrize("case", [CASE_A, CASE_B], ids=["A-group-limit-and-bias", "B-tiny-grouping"])
def test_reference_router_hand_case(case):
    cfg = case_config(case)
    x, w, bias = case_inputs(case, cfg.hidden_size)
    gate = {"mlp.gate.weight": w, "mlp.gate.e_score_correction_bias": bias}
    ids, weights = reference_router(tiny_config_json(**case["routing"]), gate, x)
    check(as_dicts(ids, weights), case)


@pytest.mark.parametrize("case", [CASE_A, CASE_B], ids=["A-group-limit-and-bias", "B-tiny-grouping"])
def test_model_gate_hand_case(case):
    from dsa.model.moe import Gate

    cfg = case_config(case)
    x, w, bias = case_inputs(case, cfg.hidden_size)
    gate = Gate(cfg, torch.float32)
    with torch.no_grad():
        gate.weight.copy_(w)
        gate.e_score_correction_bias.copy_(bias)
        weights, experts = gate(x)
    assert weights.dtype == torch.float32 and experts.shape == (x.shape[0], cfg.num_experts_per_tok)
    check(as_dicts(experts, weights), case)


def test_model_gate_matches_reference_router_on_random_inputs():
    from dsa.model.moe import Gate

    cfg = ModelConfig.from_file(TINY)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, cfg.hidden_size, generator=g)
    w = torch.randn(cfg.n_routed_experts, cfg.hidden_size, generator=g) * 0.1
    bias = torch.randn(cfg.n_routed_experts, generator=g) * 0.05
    gate = Gate(cfg, torch.float32)
    with torch.no_grad():
        gate.weight.copy_(w)
        gate.e_score_correction_bias.copy_(bias)
        weights, experts = gate(x)
    ref_ids, ref_w = reference_router(
        tiny_config_json(), {"mlp.gate.weight": w, "mlp.gate.e_score_correction_bias": bias}, x
    )
    for t, (g_, r) in enumerate(zip(as_dicts(experts, weights), as_dicts(ref_ids, ref_w))):
        assert sorted(g_) == sorted(r), f"token {t}: {g_} vs reference {r}"
        for e in r:
            assert g_[e] == pytest.approx(r[e], rel=1e-5, abs=1e-6)
