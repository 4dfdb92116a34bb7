"""Tests added after a by-hand mutation-testing run (cosmic-ray) on the torch backend: each one kills
surviving mutants of dsa/backends/torch (blocks, quant, indexer, sparse_mla) that the conformance
suite let through (argument checks, the fp8 NaN path, scores() values, the forced sparse-MLA paths)."""
from __future__ import annotations

import pytest
import torch

from dsa.backends.torch import sparse_mla as smla
from dsa.backends.torch.blocks import dequant_rows, dequant_tiles, fp8_has_nan, fp8_to_float, to_float
from dsa.backends.torch.chunks import torch_chunks
from dsa.backends.torch.indexer import scores
from dsa.backends.torch.quant import act_quant, fp8_linear


def _codes(values):
    return torch.tensor(values, dtype=torch.uint8).view(torch.float8_e4m3fn)


def _same(a, b):
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def test_fp8_nan_codes_take_the_table_path():
    x = _codes([0x00, 0x38, 0xFF, 0x7E, 0xC0, 0x7F]).view(2, 3)
    assert fp8_has_nan(x)
    assert fp8_has_nan(_codes([0x01, 0xFF]))  # only the negative NaN code
    assert not fp8_has_nan(_codes([0x01, 0xFE, 0x7E]))
    assert _same(fp8_to_float(x), x.float())
    assert _same(fp8_to_float(_codes([0x01, 0xFF, 0x40])), _codes([0x01, 0xFF, 0x40]).float())
    out = torch.empty(2, 3)
    assert fp8_to_float(x, out=out) is out and _same(out, x.float())
    assert _same(fp8_to_float(x, unscaled=True) * 256.0, x.float())


def test_fp8_to_float_out_and_scratch_checks():
    x = _codes(list(range(0, 120, 5))).view(4, 6)
    out = torch.empty(4, 6)
    assert fp8_to_float(x, out=out) is out and torch.equal(out, x.float())
    scratch = torch.empty(4, 6, dtype=torch.int16)
    assert torch.equal(fp8_to_float(x, scratch=scratch), x.float())
    with pytest.raises(ValueError):
        fp8_to_float(x, out=torch.empty(4, 6, dtype=torch.float16))
    with pytest.raises(ValueError):
        fp8_to_float(x, out=torch.empty(4, 5))
    with pytest.raises(ValueError):
        fp8_to_float(x, out=torch.empty(6, 4).t())
    with pytest.raises(ValueError):
        fp8_to_float(x, scratch=torch.empty(4, 6, dtype=torch.int32))
    with pytest.raises(ValueError):
        fp8_to_float(x, scratch=torch.empty(4, 6, dtype=torch.int8))


def test_to_float_of_non_fp8_is_a_plain_cast():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).bfloat16()
    assert torch.equal(to_float(x), x.float())


def test_dequant_rows_rejects_a_short_scale():
    x = torch.zeros(2, 128).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError):
        dequant_rows(x, torch.ones(1, 1))


def test_dequant_tiles_rejects_a_short_scale():
    w = torch.zeros(256, 128).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError):
        dequant_tiles(w, torch.ones(1, 1))


def test_act_quant_block_size_zero():
    with pytest.raises(ValueError, match="block_size must be positive"):
        act_quant(torch.ones(2, 4), 0, False)


def test_fp8_linear_argument_checks():
    w = torch.zeros(128, 128).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="weight_scale_inv has shape"):
        fp8_linear(torch.ones(2, 128), w, torch.ones(2, 1), False)
    with pytest.raises(ValueError, match="x has K=64 "):
        fp8_linear(torch.ones(2, 3, 64), w, torch.ones(1, 1), False)


@pytest.mark.parametrize("Tc", [1, 3])
def test_indexer_scores_values(Tc):
    g = torch.Generator().manual_seed(Tc)
    H, D, S = 4, 16, 9
    q = torch.randn(Tc, H, D, generator=g).bfloat16()
    w = torch.rand(Tc, H, generator=g)
    k = (torch.randn(S, D, generator=g) * 4).to(torch.float8_e4m3fn)
    k_scale = torch.rand(S, generator=g) + 0.5
    starts = torch.zeros(Tc, dtype=torch.int32)
    ends = torch.full((Tc,), S - 2, dtype=torch.int32)
    ref = torch.einsum("thd,sd->tsh", q.float(), k.float()).relu()
    ref = (ref * w[:, None, :]).sum(-1) * k_scale
    ref[:, S - 2:] = float("-inf")
    got = scores(q, w, k, k_scale, starts, ends)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _prefill_inputs():
    g = torch.Generator().manual_seed(3)
    T, H, d_v, S = 6, 3, 64, 20
    q = torch.randn(T, H, d_v + 16, generator=g)
    kv = torch.randn(S, 1, d_v + 16, generator=g)
    idx = torch.full((T, 5), -1, dtype=torch.int32)
    for t in range(T):
        idx[t, : t % 5 + 1] = torch.randperm(S, generator=g)[: t % 5 + 1].int()
    return q, kv, idx, (d_v + 16) ** -0.5, d_v


@pytest.mark.parametrize("path,forbidden", [("gather", "_attend_window"), ("window", "_attend_gathered")])
def test_sparse_mla_forced_path_is_taken(monkeypatch, path, forbidden):
    args = _prefill_inputs()
    ref = smla.sparse_mla_prefill(*args)

    def boom(*a, **kw):
        raise AssertionError(f"{forbidden} called with path={path!r}")

    monkeypatch.setattr(smla, forbidden, boom)
    with torch_chunks(path=path):
        out, lse = smla.sparse_mla_prefill(*args)
    torch.testing.assert_close(out, ref[0]) and torch.testing.assert_close(lse, ref[1])


def test_sparse_mla_tiny_budget_still_chunks():
    args = _prefill_inputs()
    ref = smla.sparse_mla_prefill(*args)
    with torch_chunks(budget_bytes=1):
        out, lse = smla.sparse_mla_prefill(*args)
    torch.testing.assert_close(out, ref[0])
    torch.testing.assert_close(lse, ref[1])


def test_decode_rejects_a_negative_block_for_a_selected_token():
    indices = torch.tensor([[[0, 5]]], dtype=torch.int32)  # token 5 is in logical block 1
    block_table = torch.tensor([[0, -1]], dtype=torch.int32)
    with pytest.raises(ValueError, match="outside the cache"):
        smla._cache_rows(indices, block_table, torch.tensor([8]), 4, 2)
