"""dsa/backends/npu (torch_npu / CANN adapters) on CPU, through documented-semantics stand-ins.

What these tests prove: given the CANN ops' documented interfaces (tests/backends/fakes/torch_npu.py),
our adapters lay the HAL's arguments out as those ops want them (TND queries with prefix-sum lengths,
PA_BSND paged keys with a renumbered block table, the 576-wide query split into 512 latent + 64 rope,
valid-first index rows, one single-query batch per indexer token paged from its window start, heads
padded to 64 / a power of two, weight [E, K, N] as a transposed view, cumulative group lists) and read
the results back (positions shifted by the window start, lse from softmax max / sum, empty rows 0 /
+inf, padding rows 0), matching the fp64 oracle. Also that torch_npu is never imported on its own and
that A2 / A3 come from the SoC version. What they do not prove: the CANN kernels themselves, or
layouts the documentation leaves open (the softmax statistics' exact shape is taken from the grad op).
"""
from __future__ import annotations

import sys

import pytest
import torch

import dsa.backends.npu  # noqa: F401  (registers the provider)
from dsa.backends import vendor
from dsa.backends.npu import cann
from dsa.hal import registry
from tests.backends import common
from tests.backends.fakes import loader
from tests.backends.fakes import torch_npu as fake_npu


@pytest.fixture
def fakes(monkeypatch):
    def use(soc=223):
        monkeypatch.setattr(vendor, "load", loader({"torch_npu": fake_npu.module(soc)}))

    use()
    return use


def npu_target(**kw):
    kw = {"platform": "npu", "arch": "ascend910b", "fp8_format": "none", "kv": "bf16", "page": 128, **kw}
    return common.target(**kw)


def test_torch_npu_is_never_imported_by_the_package():
    assert "torch_npu" not in sys.modules
    assert registry.get("indexer_topk", "npu").supported(npu_target()).startswith("torch_npu not importable:")


@pytest.mark.parametrize("soc,kw,op,expect", [
    (223, {}, "sparse_mla_decode", None),
    (253, {"arch": "ascend910_93"}, "indexer_topk", None),
    (253, {}, "grouped_gemm", "this machine's NPU is ascend910_93, the target is ascend910b"),  # A3 machine, A2 profile
    (223, {"arch": "ascend310p"}, "grouped_gemm", "needs arch ascend910b or ascend910_93 (this plan: ascend310p)"),
    (223, {"kv": "fp8"}, "sparse_mla_decode", "needs kv cache dtype bf16 (this plan: fp8)"),
    (223, {"kv": "fp8"}, "sparse_mla_prefill", None),  # prefill takes the bf16 kv, whatever the cache is
    (223, {"page": 100}, "sparse_mla_decode", "needs page size a multiple of 16 up to 1024 (this plan: 100)"),
    (223, {"page": 2048}, "sparse_mla_decode", "needs page size a multiple of 16 up to 1024 (this plan: 2048)"),
    (223, {"page": 1024}, "sparse_mla_decode", None),
    (223, {"index_heads": 128}, "indexer_topk", "needs at most 64 index heads (this plan: 128)"),
    (223, {"platform": "cuda", "arch": "sm90"}, "indexer_topk", "needs platform npu (this plan: cuda)"),
])
def test_target_reasons(fakes, soc, kw, op, expect):
    fakes(soc)
    assert registry.get(op, "npu").supported(npu_target(**kw)) == expect


def test_indexer_args_reasons(fakes):
    q, w, k, ks, st, en = common.indexer_case(6, 8, 20, seed=1)  # fp8
    assert "no fp8" in cann.indexer_args_reason(q, w, k, ks, st, en, 8)
    q, w, k, ks, st, en = common.indexer_case(6, 8, 20, seed=1, fp8=False)
    assert cann.indexer_args_reason(q, w, k, ks, st, en, 8) is None
    assert "k_scale" in cann.indexer_args_reason(q, w, k, ks * 2, st, en, 8)
    assert "sparse_count" in cann.indexer_args_reason(q, w, k, ks, st, en, 2500)


@pytest.mark.parametrize("topk", [6, 40], ids=["topk6", "topk40_gt_windows"])
def test_indexer(fakes, topk):
    """Two packed sequences (two window starts -> two paged key copies), an empty window, 20 heads
    padded to 64, positions shifted back by the start; bf16 inputs and bf16-exact weights."""
    q, w, k, ks, starts, ends = common.indexer_case(12, 20, 300, seed=topk, fp8=False)
    idx = cann.indexer_topk(q, w, k, ks, starts, ends, topk)
    common.check_topk(idx, q, w, k, ks, starts, ends, topk)


@pytest.mark.parametrize("T,H,S,K", [(6, 16, 40, 24), (3, 130, 20, 8)], ids=["H16", "H130_chunked_and_padded"])
def test_prefill(fakes, T, H, S, K):
    q, kv, idx = common.prefill_case(T, H, S, K, seed=H)
    common.check_prefill(cann.sparse_mla_prefill, q, kv, idx, f"npu prefill H{H}")


def test_decode(fakes):
    """PA_BSND over the used blocks of a shuffled 128-token-page cache (renumbered table: three
    unowned garbage blocks are put in front), s_q 2, an empty sequence, 12 heads padded to 16."""
    q, cache, table, lens, idx = common.decode_case([200, 0, 37], 2, 12, 128, 24, fp8=False, seed=4)
    cache = torch.cat([torch.full_like(cache[:3], 500.0), cache])
    common.check_decode(cann.sparse_mla_decode, q, cache, table + 3, lens, idx, "npu decode")


def test_grouped_gemm(fakes):
    """Uneven and empty groups through a cumulative group_list; padding rows after the groups are 0."""
    x, _, w, _, sizes = common.grouped_case([5, 0, 11, 2], pad_rows=3, E=4, N=48, K=64, seed=7, fp8=False)
    y = cann.grouped_gemm(x, None, w, None, sizes)
    common.check_grouped(y, x, None, w, None, sizes, "npu grouped")
    assert bool((y[-3:] == 0).all())
    xq, xs, wq, wsc, _ = common.grouped_case([2], 0, 1, 128, 128, seed=7)
    assert "no fp8" in cann.grouped_args_reason(xq, xs, wq, wsc, sizes[:1])


def test_no_fp8_ops_on_ascend():
    """act_quant / fp8_linear are registered for npu only to say why they never run there."""
    for op in ("act_quant", "fp8_linear"):
        assert "no fp8" in registry.get(op, "npu").supported(npu_target())


# ---------------------------------------------------------------- the stand-ins reject broken arguments


def test_npu_fake_rejects_wrong_arguments():
    """Block tables outside the key, length tensors of another dtype / count, a non-float scale, unmodelled options."""
    npu = fake_npu.module()
    g = common.rng(8)
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    key = common.randn((4, 16, 1, 512), g, torch.bfloat16)
    rope = common.randn((4, 16, 1, 64), g, torch.bfloat16)
    q = common.randn((2, 16, 512), g, torch.bfloat16)
    qr = common.randn((2, 16, 64), g, torch.bfloat16)
    kw = dict(block_table=i32([[2, 0], [1, 3]]), actual_seq_lengths_query=i32([1, 2]),
              actual_seq_lengths_kv=i32([20, 9]),
              query_rope=qr, key_rope=rope, layout_query="TND", layout_kv="PA_BSND", sparse_mode=0, attention_mode=2,
              return_softmax_lse=True)
    sparse = i32([[[0, 19, 5, -1]], [[8, 2, -1, -1]]])
    out, _, _ = npu.npu_sparse_flash_attention(q, key, key, sparse, 0.1, **kw)
    assert out.shape == (2, 16, 512)
    bad = [{"block_table": i32([[2, 4], [1, 3]])}, {"block_table": i32([[2, -1], [1, 3]])},
           {"block_table": i32([[2, 0], [1, 3]]).long()}, {"actual_seq_lengths_kv": i32([20, 9]).long()},
           {"actual_seq_lengths_kv": i32([40, 9])}, {"actual_seq_lengths_kv": i32([20])},
           {"actual_seq_lengths_query": i32([1, 1])}, {"pre_tokens": 5}, {"sinks": torch.zeros(16)},
           {"key_rope": rope.float()}]
    for change in bad:
        with pytest.raises(AssertionError):
            npu.npu_sparse_flash_attention(q, key, key, sparse, 0.1, **{**kw, **change})
    with pytest.raises(AssertionError):
        npu.npu_sparse_flash_attention(q, key, key, sparse, torch.tensor(0.1), **kw)
    # the block table is read: swapping a sequence's blocks changes what it attends to
    swapped_table = {**kw, "block_table": i32([[0, 2], [1, 3]])}
    swapped, _, _ = npu.npu_sparse_flash_attention(q, key, key, sparse, 0.1, **swapped_table)
    assert not torch.equal(swapped[0], out[0]) and torch.equal(swapped[1], out[1])

    iq = common.randn((2, 64, 128), g, torch.bfloat16)
    ik = common.randn((2, 128, 1, 128), g, torch.bfloat16)
    iw = common.randn((2, 64), g, torch.bfloat16)
    ikw = dict(actual_seq_lengths_query=i32([1, 2]), actual_seq_lengths_key=i32([100, 30]), block_table=i32([[1], [0]]),
               layout_query="TND", layout_key="PA_BSND", sparse_count=8, sparse_mode=3)
    npu.npu_lightning_indexer(iq, ik, iw, **ikw)
    for change in [{"block_table": i32([[1], [2]])}, {"actual_seq_lengths_key": i32([100, 30]).long()},
                   {"actual_seq_lengths_key": i32([200, 30])}, {"block_table": i32([[1, 0]]) }, {"next_tokens": 0}]:
        with pytest.raises(AssertionError):
            npu.npu_lightning_indexer(iq, ik, iw, **{**ikw, **change})

    x, w = common.randn((6, 32), g, torch.bfloat16), common.randn((2, 32, 8), g, torch.bfloat16)
    gl = torch.tensor([2, 5])
    npu.npu_grouped_matmul([x], [w], group_list=gl, split_item=3, group_type=0)
    for change in [{"group_list": gl.int()}, {"group_list": torch.tensor([2, 7])}, {"bias": [torch.zeros(8)]},
                   {"output_dtype": torch.float32}, {"group_list_type": 1}]:
        with pytest.raises(AssertionError):
            npu.npu_grouped_matmul([x], [w], **{"group_list": gl, "split_item": 3, "group_type": 0, **change})
