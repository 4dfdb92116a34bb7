"""Triton sparse MLA beyond the conformance cases: the split-selection path (what a GPU uses for decode),
several head blocks per row, dims that are not powers of two, the tiny model's 160/128 dims, an
untrusted block table, and the provider's declared support. Under TRITON_INTERPRET=1 on CPU (set by
tests/conftest.py), against the fp64 oracle with the conformance tolerances.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from dsa.conformance.inputs import paged_cache, randn, rng, sparse_indices
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.ops import ref_sparse_mla_decode, ref_sparse_mla_prefill
from dsa.conformance.tolerances import LSE, out_tol
from dsa.hal.registry import Target

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def tsm():
    from dsa.backends.triton import common, sparse_mla

    if not common.INTERPRETING and not torch.cuda.is_available():
        pytest.skip("triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU machines)")
    return sparse_mla


def _check(out, lse, out_ref, lse_ref, dtype, label):
    tol = out_tol(dtype)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, out_ref, tol.atol, tol.rtol, tol.cos_eps, f"{label} out")
    assert_close(lse, lse_ref, LSE.atol, LSE.rtol, LSE.cos_eps, f"{label} lse")


@pytest.mark.parametrize("d_v,rope,H,block_h,block_k,splits,dtype", [
    (128, 32, 16, 16, 16, 3, torch.bfloat16),  # tiny model dims, selection split in 3 (GPU decode path)
    (96, 24, 20, 16, 16, 1, torch.float32),  # dims and heads not powers of two: padded and masked, 2 head blocks
    (64, 0, 5, 16, 32, 2, torch.float32),  # no rope part at all
])
def test_prefill_tiles_and_splits(tsm, d_v, rope, H, block_h, block_k, splits, dtype):
    g = rng(d_v + rope + H)
    T, S, K = 9, 41, 40
    q = randn((T, H, d_v + rope), g, dtype)
    kv = randn((S, 1, d_v + rope), g, dtype)
    indices = sparse_indices(T, K, S, g, [K - 3 * r for r in range(T)])
    out, lse = tsm.sparse_mla_prefill(q, kv, indices, 0.11, d_v, block_h=block_h, block_k=block_k, num_splits=splits)
    _check(out, lse, *ref_sparse_mla_prefill(q, kv, indices, 0.11, d_v), dtype, "prefill")
    assert torch.isposinf(lse[0]).all() and (out[0] == 0).all()


@pytest.mark.parametrize("fp8", [False, True])
def test_decode_split_matches_oracle(tsm, fp8):
    g = rng(7 + fp8)
    seq_lens, s_q, H, d_v, rope, page, K = [29, 0, 12], 2, 16, 128, 32, 8, 24
    q = randn((3, s_q, H, d_v + rope), g, torch.bfloat16)
    latent = randn((3, max(seq_lens), d_v + rope), g)
    cache, table = paged_cache(seq_lens, page, latent, d_v, fp8, g)
    indices = torch.stack([sparse_indices(s_q + 1, K, n, g, [K, K - 5, K])[1:] for n in seq_lens])
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    out, lse = tsm.sparse_mla_decode(q, cache, table, lens, indices, 0.09, d_v, block_k=16, num_splits=2)
    _check(out, lse, *ref_sparse_mla_decode(q, cache, table, lens, indices, 0.09, d_v), torch.bfloat16, "decode")
    assert torch.isposinf(lse[1]).all() and (out[1] == 0).all(), "sequence of length 0"


def test_decode_block_table_outside_cache_is_skipped(tsm):
    g = rng(11)
    cache, table = paged_cache([6], 4, randn((1, 6, 160), g), 128, False, g)
    table[0, 1] = 1000  # the page of positions 4, 5 points outside the cache
    q = randn((1, 1, 2, 160), g, torch.bfloat16)
    lens = torch.tensor([6], dtype=torch.int32)
    out, lse = tsm.sparse_mla_decode(q, cache, table, lens, torch.tensor([[[5, 4]]], dtype=torch.int32), 0.1, 128)
    assert torch.isposinf(lse).all() and (out == 0).all()
    out, lse = tsm.sparse_mla_decode(q, cache, table, lens, torch.tensor([[[5, 1]]], dtype=torch.int32), 0.1, 128)
    ref = tsm.sparse_mla_decode(q, cache, table, lens, torch.tensor([[[1, -1]]], dtype=torch.int32), 0.1, 128)
    assert torch.equal(out, ref[0]) and torch.equal(lse, ref[1])


def _target(platform="cuda", arch="sm90", kv="fp8", heads=128):
    return Target(platform, arch, "e4m3fn", kv, 64, heads, 64)


@pytest.mark.parametrize("op", ["sparse_mla_prefill", "sparse_mla_decode"])
def test_declared_support(tsm, op):
    from dsa.hal import registry

    provider = registry.get(op, "triton")
    assert provider.requires is tsm.SPARSE_MLA
    supported = provider.supported
    assert supported(_target()) is None
    assert supported(_target("rocm", "gfx942", "bf16")) is None
    assert supported(_target("rocm", "gfx942", "fp8")) is None
    assert supported(_target("cuda", "sm120", "fp8", 16)) is None
    assert supported(_target("cuda", "sm89", "fp8")) is None
    assert supported(_target("cuda", "sm80", "bf16", 7)) is None
    assert supported(_target("cpu", "cpu", "bf16")) == "needs platform cuda or rocm (this plan: cpu)"
    assert supported(_target("npu", "ascend910b", "bf16")) == "needs platform cuda or rocm (this plan: npu)"
    assert supported(_target("cuda", "sm80", "fp8")) == \
        "kv cache dtype fp8 needs arch sm89 or newer (this plan: sm80, which takes bf16)"
    assert supported(_target("cuda", "sm75", "bf16")) == "needs arch sm80 or newer (this plan: sm75)"
    assert "(this plan: gfx906)" in supported(_target("rocm", "gfx906", "bf16"))
    assert "sm80" not in supported(_target("rocm", "gfx906", "bf16"))  # only the archs of the plan's platform


def test_declared_args(tsm):

    g = rng(1)
    q, kv = randn((2, 4, 160), g, torch.bfloat16), randn((5, 1, 160), g, torch.bfloat16)
    idx = torch.zeros(2, 3, dtype=torch.int32)
    assert tsm.prefill_args(q, kv, idx, 0.1, 128) is None
    assert "differs" in tsm.prefill_args(q, kv.float(), idx, 0.1, 128)
    assert "d_v" in tsm.prefill_args(randn((2, 4, 1088), g), randn((5, 1, 1088), g), idx, 0.1, 1024)
    packed = torch.zeros(3, 4, 1, 96 + 4 + 64, dtype=torch.uint8)
    assert "divisible by 128" in tsm.decode_args(randn((1, 1, 2, 128), g), packed, idx[:1], idx[0, :1],
                                                 idx[:1, None], 0.1, 96)
