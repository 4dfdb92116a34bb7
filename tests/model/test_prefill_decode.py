"""Serving-path consistency of the tiny model (fp32, provider "torch"): prefill + token-by-token decode,
chunked prefill, and batching give the logits of one full forward pass.

Sparsity is real: index_topk 16 < 48 tokens, so from token 16 on every layer attends to a strict subset.
Both runs go through the same fp32 model, so they differ only by fp32 rounding of differently shaped
computations (a [T, K] GEMM vs a [1, K] GEMM, gather order, chunked softmax): observed max |diff| ~4e-6
on logits of magnitude ~4. Tolerance: atol 1e-4 / rtol 1e-4 per element (25x margin, still 1000x below a
single wrongly selected or wrongly cached key, which moves logits by >1e-2), global diff 1e-9.

The selection is compared exactly (as sets). That is sound only when the top-k boundary has no tie: with
random weights ReLU makes exact-0 index scores common, and tied keys may legally be chosen either way
(then the logits legally differ). The seeds below were picked tie-free (docs/model-and-ops.md 7 allows "configs without
ties"), and each test first asserts that premise on the fp64 reference scores, so a failure of the
selection check means a real divergence, not a tie.

With an fp8 latent cache, a latent value on an fp8 rounding boundary may round one way in one run and the
other way in another (the GEMMs' fp32 sums differ with the shapes and the torch thread count), moving the
logits by ~2e-3. So a run is compared with the full forward only where both stored the same fp8 bytes;
every fp8 run is also compared with the fp64 reference computed on the fp8 cache that run holds.
"""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.model_helpers import (
    Runner,
    assert_same_selection,
    make_weights,
    min_boundary_gap,
    run_prefill_decode,
    tiny_config,
    tiny_config_json,
    token_ids,
)
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.model_ref import reference_logits

SEED = 2  # checkpoint seed; sequence A = token_ids(48, seed 2), B = token_ids(30, seed 4): tie-free
TOL = dict(atol=1e-4, rtol=1e-4, cos_eps=1e-9)
TIE_MARGIN = 1e-5  # relative boundary gap >> fp32 noise of the scores (~1e-7)


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    assert cfg.index_topk == 16
    w = make_weights(cfg, SEED)
    return cfg, w, token_ids(cfg, 48, 2), token_ids(cfg, 30, 4)


def assert_consistent(r, seq, got, full_runner, full, w, ids, kv, name):
    """got (runner r, sequence seq) vs the full forward: equal logits, or with an fp8 cache, equal logits
    where the two caches hold the same bytes and, always, the reference on r's own fp8 cache."""
    n = ids.numel()
    same_cache = kv != "fp8" or all(torch.equal(a, b) for a, b in zip(r.cache_latents(seq, n),
                                                                       full_runner.cache_latents("s", n)))
    if same_cache:
        assert_close(got, full, name=name, **TOL)
        assert torch.equal(got.argmax(-1), full.argmax(-1))
    if kv == "fp8":
        masks = [r.selection_mask(seq, layer, n) for layer in range(r.config.num_hidden_layers)]
        ref = reference_logits(tiny_config_json(), w, ids, selections=masks,
                               cache_latents=r.cache_latents(seq, n))
        assert_close(got, ref, name=f"{name}: vs the reference on its own fp8 cache", **TOL)


_FULL: dict = {}


def full_forward(cfg, w, ids, kv):
    """One forward over the whole sequence (cached per kv dtype); it also reads its own cache."""
    key = (kv, ids.numel(), tuple(ids[:4].tolist()))
    if key not in _FULL:
        r = Runner(cfg, w, kv_cache_dtype=kv)
        _FULL[key] = (r, r.step({"s": ids})["s"])
    return _FULL[key]


@pytest.mark.parametrize("kv", ["bf16", "fp8"])
@pytest.mark.parametrize("chunks", [[40], [20, 20]], ids=["prefill40", "chunked20+20"])
def test_prefill_then_decode_equals_full_forward(setup, kv, chunks):
    cfg, w, ids, _ = setup
    ref_kv = "fp8" if kv == "fp8" else None
    assert min_boundary_gap(tiny_config_json(), w, ids, kv_cache_dtype=ref_kv) > TIE_MARGIN, "top-k tie: pick another"
    full_runner, full = full_forward(cfg, w, ids, kv)
    r = Runner(cfg, w, kv_cache_dtype=kv)
    got = run_prefill_decode(r, ids, chunks, "s")  # then 8 single-token decode steps
    assert len(r.selections) == len(chunks) + 8
    assert_same_selection(r, "s", full_runner, "s", ids.numel())
    assert_consistent(r, "s", got, full_runner, full, w, ids, kv, f"logits {kv} {chunks}+decode vs full")


def test_fp8_kv_cache_changes_the_logits(setup):
    """The fp8 cache really is used (the two kv dtypes give visibly different logits)."""
    cfg, w, ids, _ = setup
    _, a = full_forward(cfg, w, ids, "bf16")
    _, b = full_forward(cfg, w, ids, "fp8")
    assert (a - b).abs().max() > 1e-3


SCHEDULES = {
    # prefill both (uneven lengths) in one step, then decode both together
    "prefill-together": [{"a": (0, 40), "b": (0, 22)}]
    + [{"a": (40 + i, 41 + i), "b": (22 + i, 23 + i)} for i in range(8)],
    # a alone, then a mixed step (a decodes while b prefills), decode both, b finishes alone
    "mixed": [{"a": (0, 40)}, {"a": (40, 41), "b": (0, 22)}]
    + [{"a": (41 + i, 42 + i), "b": (22 + i, 23 + i)} for i in range(7)] + [{"b": (29, 30)}],
}


@pytest.mark.parametrize("kv", ["bf16", "fp8"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_two_sequences_in_one_batch_equal_each_alone(setup, kv, schedule):
    cfg, w, a_ids, b_ids = setup
    ids = {"a": a_ids, "b": b_ids}
    ref_kv = "fp8" if kv == "fp8" else None
    assert min_boundary_gap(tiny_config_json(), w, b_ids, kv_cache_dtype=ref_kv) > TIE_MARGIN
    r = Runner(cfg, w, kv_cache_dtype=kv)
    got = {"a": [], "b": []}
    for step in SCHEDULES[schedule]:
        out = r.step({s: ids[s][lo:hi] for s, (lo, hi) in step.items()})
        for s in step:
            got[s].append(out[s])
    for s in "ab":
        alone_runner, alone = full_forward(cfg, w, ids[s], kv)
        assert_same_selection(r, s, alone_runner, "s", ids[s].numel())
        assert_consistent(r, s, torch.cat(got[s]), alone_runner, alone, w, ids[s], kv,
                          f"sequence {s} batched vs alone ({kv}, {schedule})")


def test_last_only_returns_the_last_token_of_each_sequence(setup):
    cfg, w, a_ids, b_ids = setup
    from dsa.model.cache import Batch

    r = Runner(cfg, w)
    r.blocks = {"a": r.alloc.allocate(3), "b": r.alloc.allocate(2)}
    batch = Batch.build(new_lens=[48, 30], context_lens=[0, 0], block_tables=[r.blocks["a"], r.blocks["b"]],
                        page_size=16)
    with torch.no_grad():
        last = r.model(torch.cat([a_ids, b_ids]), batch, r.cache, last_only=True)
    assert last.shape == (2, cfg.vocab_size) and last.dtype == torch.float32
    for row, ids in zip(last, (a_ids, b_ids)):
        assert_close(row, full_forward(cfg, w, ids, "bf16")[1][-1], name="last_only", **TOL)
