"""dsa/backends/cuda (FlashMLA, DeepGEMM adapters) on CPU, through documented-semantics stand-ins.

What these tests prove: given FlashMLA's and DeepGEMM's documented interfaces (tests/backends/fakes/),
our adapters hand them correctly translated arguments and translate the results back, so the HAL op
matches the fp64 oracle: the packed 656-byte cache is read as FlashMLA's "FP8 with scale" token,
logical positions become block * page + offset, heads are padded / chunked to 64 / 128, index rows are
padded to 128 with -1, lse comes back natural-log and [b, s_q, h_q], empty rows give 0 / +inf,
DeepGEMM's ks / ke windows and its 128-aligned contiguous grouped layout (with -1 padding rows) are
built right, and fp32 scales stay exact on SM100. What they do not prove: that the vendor kernels
themselves compute what their documentation says (run `dsa conformance` on the GPU for that), nor the
exact conventions of releases whose documentation we did not read.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

import dsa.backends.cuda  # noqa: F401  (registers the providers)
from dsa.backends import vendor
from dsa.backends.cuda import deepgemm, flashmla
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.ops import ref_fp8_linear
from dsa.hal import registry
from tests.backends import common
from tests.backends.fakes import deep_gemm as fake_dg
from tests.backends.fakes import flash_mla as fake_fm
from tests.backends.fakes import loader


@pytest.fixture
def fakes(monkeypatch):
    """Route the vendor seam (dsa.backends.vendor) to the stand-ins; returns a function to swap them."""

    def use(fm=None, dg=None):
        monkeypatch.setattr(vendor, "load",
                            loader({"flash_mla": fm or fake_fm.module(), "deep_gemm": dg or fake_dg.module()}))

    use()
    return use


# ---------------------------------------------------------------- import, registration, support reasons


def test_vendor_libraries_are_not_imported_with_the_package():
    """Importing dsa.backends.cuda registers the providers without importing flash_mla or deep_gemm."""
    assert "flash_mla" not in sys.modules and "deep_gemm" not in sys.modules
    assert registry.get("sparse_mla_prefill", "flashmla").backend == "cuda"
    for op in ("indexer_topk", "grouped_gemm", "fp8_linear"):
        assert registry.get(op, "deepgemm").backend == "cuda"


def test_placeholders_say_why():
    """Ops a CUDA profile lists deepgemm / tilelang under, with nothing to run there, say so."""
    t = common.target()
    assert "no activation-quantisation kernel" in registry.get("act_quant", "deepgemm").supported(t)
    assert "no TileLang kernel" in registry.get("sparse_mla_decode", "tilelang").supported(t)


def test_missing_library_is_the_reason():
    """Without the library (this machine) supported() and supports_args() name the import failure."""
    t = common.target()
    reason = registry.get("sparse_mla_decode", "flashmla").supported(t)
    assert reason.startswith("flash_mla not importable:")
    assert registry.get("grouped_gemm", "deepgemm").supported(t).startswith("deep_gemm not importable:")
    q, kv, idx = common.prefill_case(2, 4, 8, 4, 0)
    why = registry.get("sparse_mla_prefill", "flashmla").supports_args(q, kv, idx, 1.0, 512)
    assert why.startswith("flash_mla not importable:")


@pytest.mark.parametrize("kw,decode,expect", [
    ({}, True, None),
    ({"arch": "sm100", "heads": 128}, True, None),
    ({"heads": 3}, False, None),  # any head count: padded
    ({"arch": "sm80"}, False, "needs arch sm90 or sm100 (this plan: sm80)"),
    ({"arch": "sm120"}, True, "needs arch sm90 or sm100 (this plan: sm120)"),
    ({"platform": "rocm", "arch": "gfx942"}, False, "needs platform cuda (this plan: rocm)"),
    ({"kv": "bf16"}, True, "needs kv cache dtype fp8 (this plan: bf16)"),
    ({"kv": "bf16"}, False, None),  # prefill takes bf16 kv whatever the cache is
    ({"page": 16}, True, "needs page size 64 (this plan: 16)"),
])
def test_flashmla_target_reasons(fakes, kw, decode, expect):
    op = "sparse_mla_decode" if decode else "sparse_mla_prefill"
    assert registry.get(op, "flashmla").supported(common.target(**kw)) == expect


@pytest.mark.parametrize("kw,op,expect", [
    ({}, "indexer_topk", None),
    ({"arch": "sm100"}, "grouped_gemm", None),
    ({"arch": "sm89"}, "fp8_linear", "needs arch sm90 or sm100 (this plan: sm89)"),
    ({"fp8_format": "e4m3fnuz"}, "grouped_gemm", "needs fp8 format e4m3fn (this plan: e4m3fnuz)"),
    ({"index_heads": 128}, "indexer_topk", "needs at most 64 index heads (this plan: 128)"),
    ({"index_heads": 128}, "grouped_gemm", None),  # only the indexer has the head limit
])
def test_deepgemm_target_reasons(fakes, kw, op, expect):
    assert registry.get(op, "deepgemm").supported(common.target(**kw)) == expect


def test_declarations_are_next_to_the_adapters():
    """The registered providers carry the adapters' own declarations (what `dsa plan` reasons from)."""
    assert registry.get("sparse_mla_prefill", "flashmla").requires is flashmla.PREFILL
    assert registry.get("sparse_mla_decode", "flashmla").requires is flashmla.DECODE
    assert registry.get("indexer_topk", "deepgemm").requires is deepgemm.INDEXER
    assert flashmla.DECODE.page_sizes == (flashmla.PAGE,) and deepgemm.INDEXER.max_index_heads == deepgemm.INDEX_HEADS


def test_args_reasons(fakes):
    q, kv, idx = common.prefill_case(2, 4, 8, 4, 0)
    assert flashmla.prefill_args_reason(q, kv, idx, 1.0, 512) is None
    assert "bf16 query" in flashmla.prefill_args_reason(q.float(), kv, idx, 1.0, 512)
    assert "d_qk 576 / d_v 512" in flashmla.prefill_args_reason(q[..., :320], kv[..., :320], idx, 1.0, 256)
    qd, cache, table, lens, didx = common.decode_case([5], 1, 4, 64, 8, fp8=False, seed=0)
    assert "fp8 cache" in flashmla.decode_args_reason(qd, cache, table, lens, didx, 1.0, 512)


# ---------------------------------------------------------------- FlashMLA


@pytest.mark.parametrize("first_release", [False, True], ids=["natural_lse", "base2_lse_first_release"])
@pytest.mark.parametrize("T,H,S,K", [(9, 16, 70, 40), (5, 64, 33, 24), (4, 130, 50, 150)],
                         ids=["H16_padded_to_64", "H64", "H130_chunked_K150"])
def test_flashmla_prefill(fakes, first_release, T, H, S, K):
    """Head padding / chunking, -1 / out-of-range / interleaved invalid indices, topk padded to 128,
    lse base and the empty-row convention (row 0 has no valid index) against the oracle."""
    fakes(fm=fake_fm.module(first_release=first_release))
    q, kv, idx = common.prefill_case(T, H, S, K, seed=T + H)
    common.check_prefill(flashmla.sparse_mla_prefill, q, kv, idx, f"flashmla prefill H{H}")


@pytest.mark.parametrize("seq_lens,s_q,H,K", [([70, 5, 0], 1, 16, 48), ([130, 64], 2, 128, 40)],
                         ids=["H16_s_q1_empty_seq", "H128_s_q2_multi_page"])
def test_flashmla_decode(fakes, seq_lens, s_q, H, K):
    """Our packed 656-byte cache read through FlashMLA's documented token layout, logical positions
    translated through a shuffled block table, lse transposed back, against the oracle."""
    q, cache, table, lens, idx = common.decode_case(seq_lens, s_q, H, 64, K, fp8=True, seed=H + s_q)
    assert cache.shape[-1] == fake_fm.TOKEN_BYTES
    common.check_decode(flashmla.sparse_mla_decode, q, cache, table, lens, idx, f"flashmla decode H{H}")


def test_packed_cache_is_flashmla_token_layout():
    """dsa.hal.kv_format.pack writes exactly the bytes FlashMLA's README describes."""
    from dsa.hal import kv_format

    latent = common.randn((37, 576), common.rng(3)) * 4
    raw = kv_format.pack(latent, 512)
    assert raw.shape == (37, 656)
    scales = raw[:, 512:528].contiguous().view(torch.float32)
    assert bool((torch.frexp(scales).mantissa == 0.5).all()), (
        "scales are powers of two (ue8m0), as FlashMLA's quantiser makes them")
    assert_close(fake_fm.dequantize_fp8_tokens(raw), kv_format.unpack(raw, 512), 0.0, 0.0, 0.0,
                 "FlashMLA decoding of our bytes")


def test_flashmla_through_the_hal_op(fakes):
    """The registered provider runs through torch.ops.dsa like any other (dispatch, not just the function)."""
    q, kv, idx = common.prefill_case(3, 8, 20, 8, 1)
    out, lse = torch.ops.dsa.sparse_mla_prefill(q, kv, idx, common.SM_SCALE, 512, "flashmla")
    out_ref, lse_ref = common.ref_sparse_mla_prefill(q, kv, idx, common.SM_SCALE, 512)
    common.check_attention(out, lse, out_ref, lse_ref, "dispatch")


# ---------------------------------------------------------------- DeepGEMM


@pytest.mark.parametrize("T,H,S,topk,budget", [(12, 64, 40, 16, None), (10, 16, 30, 64, 4 * 30 * 3)],
                         ids=["H64", "H16_padded_topk_gt_S_chunked"])
def test_deepgemm_indexer(fakes, monkeypatch, T, H, S, topk, budget):
    """ks / ke windows (two packed sequences, one empty window), head padding, -1 for picks outside
    the window, rows shorter than topk, query chunking of the logits."""
    if budget:
        monkeypatch.setattr(deepgemm, "LOGITS_BYTES", budget)
    q, w, k, ks, starts, ends = common.indexer_case(T, H, S, seed=T)
    idx = deepgemm.indexer_topk(q, w, k, ks, starts, ends, topk)
    common.check_topk(idx, q, w, k, ks, starts, ends, topk)
    assert bool((idx[0] == -1).all())


def test_contiguous_layout():
    """Each group starts at a multiple of 128; filler rows are -1; source rows keep their group."""
    dest, m_indices, m_pad = deepgemm.contiguous_layout(torch.tensor([3, 0, 130, 1]), 128)
    assert m_pad == 128 + 256 + 128 and m_indices.shape == (m_pad,)
    assert dest[:3].tolist() == [0, 1, 2] and dest[3].item() == 128 and dest[-1].item() == 384
    assert m_indices[:3].tolist() == [0, 0, 0] and bool((m_indices[3:128] == -1).all())
    assert bool((m_indices[128:258] == 2).all()) and bool((m_indices[258:384] == -1).all())


@pytest.mark.parametrize("arch", ["sm90", "sm100"])
def test_deepgemm_grouped_gemm(fakes, arch):
    """Uneven and empty groups, HAL padding rows after the groups (output 0), fp32 (non power of two)
    scales kept exact on SM100 (disable_ue8m0_cast)."""
    fakes(dg=fake_dg.module(arch))
    x, xs, w, ws, sizes = common.grouped_case([5, 0, 140, 1], pad_rows=3, E=4, N=192, K=256, seed=2)
    y = deepgemm.grouped_gemm(x, xs, w, ws, sizes)
    common.check_grouped(y, x, xs, w, ws, sizes, f"deepgemm grouped {arch}")
    assert bool((y[-3:] == 0).all())
    assert "fp8" in deepgemm.grouped_args_reason(x.float(), None, w.float(), None, sizes)


@pytest.mark.parametrize("ue8m0", [False, True])
def test_deepgemm_fp8_linear(fakes, ue8m0):
    g = common.rng(5)
    x = common.randn((2, 3, 256), g, torch.bfloat16)
    wq, ws = common.quantize_weight(common.randn((160, 256), g) * 0.06)
    y = deepgemm.fp8_linear(x, wq, ws, ue8m0)
    tol = common.out_tol(torch.bfloat16)
    assert y.shape == (2, 3, 160) and y.dtype == torch.bfloat16
    assert_close(y, ref_fp8_linear(x, wq, ws, ue8m0), tol.atol, tol.rtol, tol.cos_eps, "deepgemm fp8_linear")
    assert "bf16" in deepgemm.linear_args_reason(x.float(), wq, ws, ue8m0)


def test_paged_index_cache_layout():
    """A block holds its page's fp8 keys back to back, then the page's fp32 scales (DeepGEMM's layout)."""
    g = common.rng(6)
    k, s = common.quantize_rows(common.randn((3 * 64, 128), g))
    raw = deepgemm.paged_index_cache(k.view(3, 64, 128), s.view(3, 64))
    assert raw.shape == (3, 64, 1, 132) and raw.dtype == torch.uint8
    flat = raw.view(3, 64 * 132)
    keys = flat[:, : 64 * 128].contiguous().view(torch.float8_e4m3fn).view(3 * 64, 128)
    scales = flat[:, 64 * 128 :].contiguous().view(torch.float32).reshape(-1)
    assert torch.equal(keys.view(torch.uint8), k.view(torch.uint8)) and torch.equal(scales, s.view(-1))


# ---------------------------------------------------------------- the stand-ins reject broken arguments


def _flashmla_decode_args(H=64):
    """Arguments for fake flash_mla_with_kvcache built as the contract says (slots through the block table)."""
    from dsa.backends import adapt

    q, cache, table, lens, idx = common.decode_case([70, 5], 1, H, 64, 128, fp8=True, seed=1)
    slots = adapt.logical_to_slots(idx, table, lens, 64).contiguous()
    meta, splits = fake_fm.get_mla_metadata(lens, H, 1, H, True, slots.shape[-1])
    return dict(q=q, k_cache=cache.view(torch.float8_e4m3fn), block_table=table, cache_seqlens=lens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits, softmax_scale=common.SM_SCALE, is_fp8_kvcache=True,
                indices=slots)


def test_flashmla_fake_decode_checks_every_argument():
    """The decode stand-in maps indices back through block_table / cache_seqlens and checks the schedule."""
    good = _flashmla_decode_args()
    out, lse = fake_fm.flash_mla_with_kvcache(**good)
    assert out.shape == (2, 1, 64, 512) and lse.shape == (2, 64, 1)
    blocks = good["k_cache"].shape[0]
    table, lens = good["block_table"], good["cache_seqlens"]
    bad = {
        "block_table outside the cache": {"block_table": table + blocks},
        "block_table rows swapped": {"block_table": table.flip(0).contiguous()},
        "block_table int64": {"block_table": table.long()},
        "cache_seqlens beyond the table": {"cache_seqlens": lens + 64 * table.shape[1]},
        "cache_seqlens too short for the indices": {"cache_seqlens": (lens - 1).clamp_min(0)},
        "indices past the cache": {"indices": torch.where(good["indices"] >= 0, good["indices"] + 64 * blocks, -1)},
        "metadata for another topk": {"tile_scheduler_metadata": fake_fm.get_mla_metadata(lens, 64, 1, 64, True,
                                                                                           64)[0]},
        "metadata for other seqlens": {"tile_scheduler_metadata": fake_fm.get_mla_metadata(lens + 1, 64, 1, 64, True,
                                                                                            128)[0]},
        "metadata not from get_mla_metadata": {"tile_scheduler_metadata": SimpleNamespace(have_initialized=False)},
        "num_splits given": {"num_splits": torch.zeros(3, dtype=torch.int32)},
        "head_dim_v": {"head_dim_v": 576},
        "negative scale": {"softmax_scale": -common.SM_SCALE},
    }
    for label, change in bad.items():
        args = {**_flashmla_decode_args(), **change}
        with pytest.raises(AssertionError):
            fake_fm.flash_mla_with_kvcache(**args)
            pytest.fail(f"accepted: {label}")
    # a schedule is reusable only for calls with the same arguments (the current API's rule)
    again = _flashmla_decode_args()
    fake_fm.flash_mla_with_kvcache(**again)
    other = _flashmla_decode_args()
    with pytest.raises(AssertionError, match="reused"):  # same recorded arguments, another call shape
        fake_fm.flash_mla_with_kvcache(**{**other, "tile_scheduler_metadata": again["tile_scheduler_metadata"],
                                          "k_cache": other["k_cache"].view(-1, 32, 1, 656)})


def test_flashmla_fake_decode_reads_through_the_block_table():
    """Moving a sequence's blocks (cache and table moved together) leaves the result; the cache alone changes it."""
    args = _flashmla_decode_args()
    out, lse = fake_fm.flash_mla_with_kvcache(**args)
    cache, table = args["k_cache"], args["block_table"]
    perm = torch.randperm(cache.shape[0], generator=common.rng(2))
    inverse = torch.argsort(perm)
    moved = dict(args, k_cache=cache[perm].contiguous(), block_table=inverse[table.long()].to(torch.int32),
                 tile_scheduler_metadata=_flashmla_decode_args()["tile_scheduler_metadata"])
    from dsa.backends import adapt

    moved["indices"] = adapt.logical_to_slots(common.decode_case([70, 5], 1, 64, 64, 128, fp8=True, seed=1)[4],
                                              moved["block_table"], args["cache_seqlens"], 64).contiguous()
    out2, lse2 = fake_fm.flash_mla_with_kvcache(**moved)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_flashmla_fake_prefill_rejects_wrong_arguments():
    q, kv, idx = common.prefill_case(3, 64, 20, 128, 0)
    idx = idx.to(torch.int32).unsqueeze(1).contiguous()
    fake_fm.flash_mla_sparse_fwd(q, kv, idx, common.SM_SCALE)
    for args in [(q, kv, idx, 512, common.SM_SCALE), (q, kv, idx, common.SM_SCALE, 576), (q, kv, idx[:2], 0.1, 512),
                 (q, kv, idx.long(), 0.1, 512), (q, kv.float(), idx, 0.1, 512), (q, kv, idx[..., :64], 0.1, 512)]:
        with pytest.raises(AssertionError):
            fake_fm.flash_mla_sparse_fwd(*args)


def test_deep_gemm_fake_rejects_wrong_arguments():
    """Windows past the keys or inverted, scales of another shape, experts out of range, mis-sized outputs."""
    dg = fake_dg.module()
    q, w, k, ks, starts, ends = common.indexer_case(6, 64, 20, seed=3)
    ks, st, en = ks.float(), starts.int(), ends.int()
    assert dg.fp8_mqa_logits(q, (k, ks), w, st, en).shape == (6, 20)
    for args in [(q, (k, ks), w, en, st), (q, (k, ks), w, st, en + 1), (q, (k, ks), w, st - 1, en),
                 (q, (k, ks[:-1]), w, st, en), (q, (k, ks), w[:, :32], st, en), (q, (k, ks), w, st[:3], en[:3]),
                 (q, (k, ks), w.t().contiguous().t(), st, en)]:
        with pytest.raises(AssertionError):
            dg.fp8_mqa_logits(*args)
    g = common.rng(4)
    xq, xs = common.quantize_rows(common.randn((128, 256), g))
    wq, wsc = common.quantize_weight(common.randn((256, 256), g))
    d = torch.empty(128, 256, dtype=torch.bfloat16)
    dg.fp8_gemm_nt((xq, xs), (wq, wsc), d)
    for a, b, out in [((xq, xs), (wq, wsc.t()), d), ((xq, xs), (wq, wsc[:1]), d), ((xq, xs[:, :1]), (wq, wsc), d),
                      ((xq, xs), (wq, wsc), d[:, :128]), ((xq, xs), (wq[:, :128], wsc[:, :1]), d)]:
        with pytest.raises(AssertionError):
            dg.fp8_gemm_nt(a, b, out)
    w3, s3 = wq[None].contiguous(), wsc[None].contiguous()
    m_idx = torch.zeros(128, dtype=torch.int32)
    dg.m_grouped_fp8_gemm_nt_contiguous((xq, xs), (w3, s3), d, m_idx)
    for a, b, out, mi in [((xq, xs), (w3, s3), d, m_idx + 1), ((xq, xs), (w3, s3), d, m_idx - 2),
                          ((xq, xs), (w3, s3), d, m_idx.long()), ((xq, xs), (w3, s3[:, :1]), d, m_idx),
                          ((xq, xs), (w3, s3), d.float(), m_idx)]:
        with pytest.raises(AssertionError):
            dg.m_grouped_fp8_gemm_nt_contiguous(a, b, out, mi)
