"""Dispatch: an OpSet call equals the direct torch.ops.dsa call; fallback on supports_args, logged once."""
from __future__ import annotations

import logging

import pytest
import torch

from dsa.conformance.inputs import paged_cache, quantize_weight, randn, rng, sparse_indices
from dsa.errors import NoProviderError
from dsa.hal import OpSet, registry


def small_args(op: str) -> tuple:
    """One small, valid argument tuple per op (contract order, without the provider)."""
    g = rng(3)
    if op == "act_quant":
        return randn((3, 200), g, torch.bfloat16), 128, True
    if op == "fp8_linear":
        return (randn((3, 200), g, torch.bfloat16), *quantize_weight(randn((72, 200), g, scale=0.07)), False)
    if op == "indexer_topk":
        starts = torch.tensor([0, 0, 0, 5, 7], dtype=torch.int32)
        ends = torch.tensor([1, 4, 5, 9, 7], dtype=torch.int32)
        return randn((5, 2, 16), g), randn((5, 2), g), randn((12, 16), g), torch.ones(12), starts, ends, 3, 12
    if op == "sparse_mla_prefill":
        q, kv = randn((4, 2, 80), g, torch.bfloat16), randn((10, 1, 80), g, torch.bfloat16)
        return q, kv, sparse_indices(4, 6, 10, g, [3, 6, 2, 5]), 0.1, 64
    if op == "sparse_mla_decode":
        cache, table = paged_cache([7, 3], 4, randn((2, 7, 160), g), 128, False, g)
        indices = sparse_indices(3, 5, 3, g, [0, 2, 3])[1:].reshape(2, 1, 5)
        return (randn((2, 1, 2, 160), g, torch.bfloat16), cache, table, torch.tensor([7, 3], dtype=torch.int32),
                indices, 0.1, 128)
    if op == "grouped_gemm":
        return randn((6, 64), g), None, randn((2, 16, 64), g), None, torch.tensor([3, 2], dtype=torch.int32)
    raise KeyError(op)


def opset_for(op: str, providers: list[registry.Provider]) -> OpSet:
    """An OpSet whose `op` tries `providers` in order (the other ops are never called here)."""
    return OpSet({name: registry.Selection(name, list(providers)) for name in registry.OPS})


def same(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return a.dtype == b.dtype and torch.equal(a, b)


def check_opset_equals_direct(op: str, provider: str):
    args = small_args(op)
    chosen = registry.get(op, provider)
    reason = chosen.supports_args(*args)
    if reason is not None:
        pytest.skip(f"{provider} declines the small {op} case: {reason}")
    via_opset = getattr(opset_for(op, [chosen]), op)(*args)
    direct = getattr(torch.ops.dsa, op)(*args, provider)
    assert same(via_opset, direct), f"{op}: OpSet result differs from torch.ops.dsa.{op}(..., {provider!r})"


@pytest.mark.op("act_quant")
def test_opset_equals_direct_act_quant(provider):
    check_opset_equals_direct("act_quant", provider)


@pytest.mark.op("fp8_linear")
def test_opset_equals_direct_fp8_linear(provider):
    check_opset_equals_direct("fp8_linear", provider)


@pytest.mark.op("indexer_topk")
def test_opset_equals_direct_indexer_topk(provider):
    check_opset_equals_direct("indexer_topk", provider)


@pytest.mark.op("sparse_mla_prefill")
def test_opset_equals_direct_sparse_mla_prefill(provider):
    check_opset_equals_direct("sparse_mla_prefill", provider)


@pytest.mark.op("sparse_mla_decode")
def test_opset_equals_direct_sparse_mla_decode(provider):
    check_opset_equals_direct("sparse_mla_decode", provider)


@pytest.mark.op("grouped_gemm")
def test_opset_equals_direct_grouped_gemm(provider):
    check_opset_equals_direct("grouped_gemm", provider)


# ---------------------------------------------------------------- fallback, with test-only providers


@pytest.fixture
def fake_provider():
    """register(op, name, fn, supports_args) for test-only providers, removed again afterwards."""
    added = []

    def add(op, name, fn, supports_args):
        added.append((op, name))
        return registry.register(op, name, fn, backend="test", supports_args=supports_args)

    yield add
    for op, name in added:
        registry.unregister(op, name)


def fake_act_quant(calls: list):
    def fn(x, block_size, ue8m0):
        calls.append(x.shape)
        nb = -(-x.shape[-1] // block_size)
        return torch.zeros(x.shape).to(torch.float8_e4m3fn), torch.ones(*x.shape[:-1], nb)

    return fn


def never_called(*args):
    raise AssertionError("a provider that declined the arguments was called")


def test_falls_back_when_supports_args_rejects_and_logs_once(fake_provider, caplog):
    calls = []
    reject = fake_provider("act_quant", "test-reject", never_called, lambda x, b, u: "test: K too small")
    accept = fake_provider("act_quant", "test-accept", fake_act_quant(calls), lambda *a: None)
    ops = opset_for("act_quant", [reject, accept])
    x = torch.ones(2, 130)
    with caplog.at_level(logging.WARNING, logger="dsa.ops"):
        y, s = ops.act_quant(x, 128, False)
        ops.act_quant(x, 128, False)
    assert calls == [x.shape, x.shape] and s.shape == (2, 2)
    logged = [r.getMessage() for r in caplog.records if "test-reject" in r.getMessage()]
    assert len(logged) == 1, f"the skip should be logged exactly once, got {logged}"
    assert "test: K too small" in logged[0]


def test_first_accepting_provider_wins(fake_provider):
    calls = []
    first = fake_provider("act_quant", "test-first", fake_act_quant(calls), lambda *a: None)
    second = fake_provider("act_quant", "test-second", never_called, lambda *a: None)
    opset_for("act_quant", [first, second]).act_quant(torch.ones(1, 8), 128, True)
    assert len(calls) == 1


def test_no_provider_accepts_lists_every_reason(fake_provider):
    a = fake_provider("act_quant", "test-a", never_called, lambda *args: "reason A")
    b = fake_provider("act_quant", "test-b", never_called, lambda *args: "reason B")
    with pytest.raises(NoProviderError) as err:
        opset_for("act_quant", [a, b]).act_quant(torch.ones(1, 8), 128, True)
    assert "test-a: reason A" in str(err.value) and "test-b: reason B" in str(err.value)
