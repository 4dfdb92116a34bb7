"""Every HAL op is a well-formed torch custom op: schema, fake (meta) kernel and AOT tracing agree
with the real kernel (torch.library.opcheck), so the model stays one opaque graph for torch.compile
and torch.export. Run with the portable provider; a vendor provider is checked the same way with
`pytest tests/unit/test_op_registration.py` on its hardware after changing PROVIDER. Also: every
provider every backend registers declares what it needs (dsa.hal.capability.Requires)."""
import importlib
import importlib.util

import pytest
import torch

import dsa.hal as ops
from dsa.hal import kv_format, registry
from dsa.hal.capability import Requires

PROVIDER = "torch"


def _cases():
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    T, H, D, S, K = 5, 2, 160, 9, 4
    idx = torch.randint(-1, S, (T, K), generator=g, dtype=torch.int32)
    xq, xs = ops.act_quant(randn(T, 200), 128, True, PROVIDER)
    w = randn(136, 200).to(torch.float8_e4m3fn)
    ws = torch.rand(2, 2, generator=g) + 0.5
    cache = kv_format.pack(randn(3, 4, 1, 256 + 32), 256)  # 3 blocks of 4 tokens, packed fp8
    m_sizes = torch.tensor([2, 0, 3], dtype=torch.int32)
    return {
        "act_quant": (randn(3, 200, dtype=torch.bfloat16), 128, True),
        "fp8_linear": (randn(T, 200, dtype=torch.bfloat16), w, ws, True),
        "indexer_topk": (randn(T, 4, 64).to(torch.float8_e4m3fn), torch.rand(T, 4, generator=g),
                         randn(S, 64).to(torch.float8_e4m3fn), torch.rand(S, generator=g),
                         torch.zeros(T, dtype=torch.int32), torch.tensor([1, 3, 5, 7, 9], dtype=torch.int32), 4, 9),
        "sparse_mla_prefill": (randn(T, H, D, dtype=torch.bfloat16), randn(S, 1, D, dtype=torch.bfloat16), idx, 0.1,
                               128),
        "sparse_mla_decode": (randn(2, 1, H, 256 + 32, dtype=torch.bfloat16), cache,
                              torch.tensor([[2, 0], [1, 0]], dtype=torch.int32),
                              torch.tensor([6, 3], dtype=torch.int32),
                              torch.tensor([[[0, 5, -1]], [[2, 1, 0]]], dtype=torch.int32), 0.1, 256),
        "grouped_gemm": (xq, xs, randn(3, 136, 200).to(torch.float8_e4m3fn), torch.rand(3, 2, 2, generator=g) + 0.5,
                         m_sizes),
    }


CASES = _cases()


def test_every_op_has_a_case():
    assert set(CASES) == set(registry.OPS) == set(ops.HAL_OPS)


def _has_fp8(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.dtype == torch.float8_e4m3fn for a in args)


@pytest.mark.parametrize("op", registry.OPS)
def test_opcheck(op):
    args = (*CASES[op], PROVIDER)
    tests = ["test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    if not _has_fp8(args):  # torch's schema checker multiplies inputs, which CPU fp8 tensors cannot do
        tests.append("test_schema")
    result = torch.library.opcheck(ops.HAL_OPS[op], args, test_utils=tests)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("op", registry.OPS)
def test_ops_do_not_mutate_inputs(op):
    """What test_schema checks, done by hand so fp8 inputs are covered too (schemas say mutates_args=())."""
    args = CASES[op]
    before = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    ops.HAL_OPS[op](*args, PROVIDER)
    after = [a for a in args if isinstance(a, torch.Tensor)]
    for b, a in zip(before, after):
        assert torch.equal(b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b,
                           a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a)


@pytest.mark.parametrize("op", ["sparse_mla_prefill", "grouped_gemm"])
def test_compiled_call_equals_eager(op):
    fn = ops.HAL_OPS[op]
    compiled = torch.compile(lambda *a: fn(*a, PROVIDER), backend="aot_eager", fullgraph=True)
    eager = fn(*CASES[op], PROVIDER)
    got = compiled(*CASES[op])
    for a, b in zip(eager if isinstance(eager, tuple) else (eager,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(a, b)


def test_every_backend_provider_declares_its_requirements(monkeypatch):
    """Each backend package, imported afresh into an empty registry, registers only declared providers.
    (Afresh: a test elsewhere may have re-registered a provider without its declaration.)"""
    fresh = {op: {} for op in registry.OPS}
    monkeypatch.setattr(registry, "_PROVIDERS", fresh)
    packages = sorted(set(registry.KNOWN_PROVIDERS.values()))
    for package in packages:
        importlib.reload(importlib.import_module(package))
    found = [p for by_name in fresh.values() for p in by_name.values()]
    expected = {"torch", "cuda", "rocm", "npu"} | ({"triton"} if importlib.util.find_spec("triton") else set())
    assert {p.backend for p in found} == expected
    undeclared = [f"{p.backend}: {p.op}/{p.name}" for p in found if not isinstance(p.requires, Requires)]
    assert not undeclared, f"providers registered without requires=Requires(...): {undeclared}"
    # every provider either runs (an implementation) or is a placeholder that says why it never does
    anywhere = registry.Target("cuda", "sm90", "e4m3fn", "fp8", 64, 128, 64)
    for p in found:
        assert callable(p.fn) and (p.requires.unavailable is None or p.supported(anywhere) == p.requires.unavailable)
