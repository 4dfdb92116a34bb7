"""RoPE conventions (docs/model-and-ops.md 2.1, 2.2): the indexer uses ROTATE-HALF RoPE on its first qk_rope_head_dim
dims, MLA uses INTERLEAVED RoPE on its last ones, both with the YaRN frequencies.

The first public demo used interleaved RoPE in the indexer (a bug fixed in Nov 2025, shipped by several
engines), so the indexer test is built to FAIL for that variant: it checks the model's indexer scores
at positions > 0 against the rotate-half reference AND that the interleaved variant is far away.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dsa.conformance.model_helpers import Runner, make_weights, tiny_config, tiny_config_json, token_ids
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.model_ref import (
    cosine_diff,
    reference_logits,
    rope_frequencies,
    rope_interleaved,
    rope_rotate_half,
    yarn_correction_range,
)
from dsa.model.config import ModelConfig

BIG = Path(__file__).resolve().parents[2] / "dsa/configs/models/deepseek-v3.2-exp/config.json"
TOL = dict(atol=1e-4, rtol=1e-4, cos_eps=1e-8)


# ---- YaRN frequencies of the 671B config -----------------------------------------------------------
def spec_yarn_671b() -> torch.Tensor:
    """docs/model-and-ops.md 2.1, numbers written out: f_i = 10000^(-2i/64), ramp over dims 10..23, factor 40."""
    i = torch.arange(32, dtype=torch.float64)
    f = 10000.0 ** (-2 * i / 64)
    ramp = ((i - 10) / (23 - 10)).clamp(0, 1)
    return f / 40 * ramp + f * (1 - ramp)


def test_671b_yarn_correction_range_is_10_23():
    assert yarn_correction_range(BIG) == (10, 23)
    corr = lambda r: 64 * math.log(4096 / (2 * math.pi * r)) / (2 * math.log(10000))  # noqa: E731
    assert (math.floor(corr(32)), math.ceil(corr(1))) == (10, 23)


def test_671b_yarn_frequencies_reference_and_model():
    big = ModelConfig.from_file(BIG)
    want = spec_yarn_671b()
    # a few values by hand: untouched below dim 10, divided by 40 from dim 23, mixed in between
    assert want[0] == 1.0
    assert want[10].item() == pytest.approx(10000 ** (-20 / 64), rel=1e-12)  # 0.0562341
    assert want[16].item() == pytest.approx(0.01 * 0.55, rel=1e-12)  # ramp 6/13: 1/40*6/13 + 7/13 = 0.55
    assert want[31].item() == pytest.approx(10000 ** (-62 / 64) / 40, rel=1e-12)  # 3.3338e-6
    torch.testing.assert_close(rope_frequencies(BIG), want, rtol=1e-12, atol=0)
    from dsa.model.layers import rope_inv_freq

    got = rope_inv_freq(big.qk_rope_head_dim, big.rope_theta, big.rope_scaling)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)


# ---- the two rotation conventions (reference sanity) -------------------------------------------------
def test_reference_rope_conventions_by_hand():
    freqs = torch.tensor([0.5, 0.25], dtype=torch.float64)  # R = 4
    pos = torch.tensor([2])
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    c0, s0, c1, s1 = math.cos(1.0), math.sin(1.0), math.cos(0.5), math.sin(0.5)
    # interleaved: pairs (x0, x1) at angle 1.0 and (x2, x3) at angle 0.5
    inter = [1 * c0 - 2 * s0, 1 * s0 + 2 * c0, 3 * c1 - 4 * s1, 3 * s1 + 4 * c1]
    # rotate-half: pairs (x0, x2) at angle 1.0 and (x1, x3) at angle 0.5
    half = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]
    torch.testing.assert_close(rope_interleaved(x, pos, freqs)[0], torch.tensor(inter, dtype=torch.float64))
    torch.testing.assert_close(rope_rotate_half(x, pos, freqs)[0], torch.tensor(half, dtype=torch.float64))


# ---- the model ---------------------------------------------------------------------------------------
def model_index_scores(runner: Runner, layer: int, T: int) -> torch.Tensor:
    """The model's index scores [T, T] of a single-sequence prefill, recomputed (fp64) from the exact
    arguments it passed to indexer_topk: score = k_scale * sum_h w * relu(q . k); -inf where not visible."""
    (q, w, k, k_scale, starts, ends, _, _), _ = runner.ops.topk_calls[layer]
    dots = torch.einsum("thd,sd->tsh", q.double(), k.double()).clamp_min(0)
    scores = (dots * w.double()[:, None, :]).sum(-1) * k_scale.double()[None, :]
    s = torch.arange(k.shape[0])
    visible = (s[None, :] >= starts[:, None]) & (s[None, :] < ends[:, None])
    assert k.shape[0] == T and torch.equal(visible, torch.ones(T, T, dtype=torch.bool).tril())
    return scores.masked_fill(~visible, float("-inf"))


def test_indexer_rope_is_rotate_half():
    cfg, ref_cfg = tiny_config(), tiny_config_json()
    w, ids = make_weights(cfg, 2), token_ids(cfg, 48, 2)
    r = Runner(cfg, w)
    r.step({"s": ids})
    _, good = reference_logits(ref_cfg, w, ids, return_aux=True)
    _, bad = reference_logits(ref_cfg, w, ids, return_aux=True, indexer_rope="interleaved")
    vis = torch.ones(48, 48, dtype=torch.bool).tril()
    # layer 0 sees the embeddings directly: its scores isolate the indexer's own RoPE
    got = model_index_scores(r, 0, 48)
    assert_close(got[0, :1], good["scores"][0][0, :1], atol=1e-5, rtol=1e-5, cos_eps=1e-9)  # position 0: no rotation
    d_good = cosine_diff(got[vis], good["scores"][0][vis])
    d_bad = cosine_diff(got[vis], bad["scores"][0][vis])
    assert d_good < 1e-6, f"model indexer scores differ from the rotate-half reference (global diff {d_good:.3g})"
    assert d_bad > 1e-2, f"the interleaved variant should be far away (global diff {d_bad:.3g})"
    # and the selection: the interleaved reference would pick other keys for many queries
    for layer in range(cfg.num_hidden_layers):
        m = r.selection_mask("s", layer, 48)
        assert torch.equal(m, good["own_masks"][layer]), f"layer {layer}: selection differs from rotate-half reference"
    assert (r.selection_mask("s", 0, 48) != bad["own_masks"][0]).any(1).sum() >= 10


def test_mla_rope_is_interleaved_with_yarn():
    cfg, ref_cfg = tiny_config(index_topk=64), tiny_config_json(index_topk=64)  # dense: only MLA's RoPE matters
    w, ids = make_weights(cfg, 1), token_ids(cfg, 24, 1)
    r = Runner(cfg, w)
    got = r.step({"s": ids})["s"]
    assert_close(got, reference_logits(ref_cfg, w, ids), name="interleaved MLA rope", **TOL)
    for variant in (dict(mla_rope="rotate_half"), dict(yarn=False)):
        d = cosine_diff(got, reference_logits(ref_cfg, w, ids, **variant))
        assert d > 1e-3, f"{variant}: should differ clearly from the model (global diff {d:.3g})"


def test_tiny_config_yarn_is_active():
    """The tiny config extends 1024 -> 4096 positions with YaRN factor 4: ramp over dims 2..9 of 16."""
    assert yarn_correction_range(tiny_config_json()) == (2, 9)
    f = rope_frequencies(tiny_config_json())
    plain = rope_frequencies(tiny_config_json(), yarn=False)
    torch.testing.assert_close(f[:3], plain[:3], rtol=1e-12, atol=0)
    torch.testing.assert_close(f[9:], plain[9:] / 4, rtol=1e-12, atol=0)
