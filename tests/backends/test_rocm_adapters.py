"""dsa/backends/rocm (AITER adapters) on CPU, through documented-semantics stand-ins.

What these tests prove: given AITER's documented interfaces (tests/backends/fakes/aiter.py), our
adapters build correct ragged index lists (valid entries only, a dummy for empty rows), translate
logical decode positions into page-1 slots of the viewed cache, pad heads to 16 / 128 and to powers of
two, convert e4m3fn to e4m3fnuz on gfx942 with doubled scales (exactly), feed top_k_per_row_prefill
and read its absolute indices, build the MoE GEMM's sorted_token_ids / expert_ids layout, and quantise
the activation for gemm_a8w8_blockscale, so the HAL ops match the fp64 oracle. What they do not prove:
the AITER kernels themselves (asm MLA, Triton logits / MoE GEMM, top-k), nor conventions of AITER
releases other than the documented ones.

No second check with AITER's own Triton code under TRITON_INTERPRET: the adapters call the asm
mla_decode_fwd (no Triton), and the Triton files they do call (fp8_mqa_logits, the MoE GEMM) come only
with the amd-aiter package, whose `import aiter` needs ROCm; getting them would mean installing (or
unpacking and stubbing) amd-aiter here, which this environment does not do. AITER's Triton sparse-MLA
file (a port of flash_mla_sparse_fwd) is not on any adapter's path.
"""
from __future__ import annotations

import sys

import pytest
import torch

import dsa.backends.rocm  # noqa: F401  (registers the provider)
from dsa.backends import adapt, vendor
from dsa.backends.rocm import aiter
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.ops import ref_fp8_linear
from dsa.hal import registry
from tests.backends import common
from tests.backends.fakes import aiter as fake_aiter
from tests.backends.fakes import loader


@pytest.fixture
def fakes(monkeypatch):
    def use(gfx="gfx942"):
        monkeypatch.setattr(vendor, "load", loader(fake_aiter.modules(gfx)))

    use()
    return use


def rocm_target(**kw):
    kw = {"platform": "rocm", "arch": "gfx942", "fp8_format": "e4m3fnuz", "kv": "bf16", "page": 1, **kw}
    return common.target(**kw)


def test_not_imported_and_missing_library_reason():
    assert "aiter" not in sys.modules
    assert registry.get("sparse_mla_decode", "aiter").supported(rocm_target()).startswith("aiter not importable:")


@pytest.mark.parametrize("kw,op,expect", [
    ({}, "sparse_mla_decode", None),
    ({"arch": "gfx950", "fp8_format": "e4m3fn", "page": 16}, "sparse_mla_decode", None),  # any page size
    ({"arch": "gfx950"}, "indexer_topk",  # gfx950 is OCP fp8
     "fp8 format e4m3fnuz needs arch gfx942 (this plan: gfx950, which takes e4m3fn)"),
    ({"fp8_format": "e4m3fn"}, "grouped_gemm",  # gfx942 is fnuz
     "fp8 format e4m3fn needs arch gfx950 (this plan: gfx942, which takes e4m3fnuz)"),
    ({"fp8_format": "none"}, "fp8_linear", "needs fp8 format e4m3fnuz on gfx942 (this plan: none)"),
    ({"arch": "gfx90a"}, "grouped_gemm", "needs arch gfx942 or gfx950 (this plan: gfx90a)"),
    ({"platform": "cuda", "arch": "sm90"}, "indexer_topk", "needs platform rocm (this plan: cuda)"),
    ({"kv": "fp8"}, "sparse_mla_decode", "needs kv cache dtype bf16 (this plan: fp8)"),
    ({"kv": "fp8"}, "sparse_mla_prefill", None),
])
def test_target_reasons(fakes, kw, op, expect):
    assert registry.get(op, "aiter").supported(rocm_target(**kw)) == expect


def test_missing_submodule_is_the_reason(monkeypatch):
    """Each op declares the AITER modules it calls: one that does not import rejects that op only."""
    mods = fake_aiter.modules()
    del mods["aiter.ops.topk"]
    monkeypatch.setattr(vendor, "load", loader(mods))
    assert registry.get("indexer_topk", "aiter").supported(rocm_target()).startswith("aiter.ops.topk not importable:")
    assert registry.get("sparse_mla_prefill", "aiter").supported(rocm_target()) is None
    for path in aiter.MOE_OP:
        mods.pop(path, None)
    why = registry.get("grouped_gemm", "aiter").supported(rocm_target())
    assert why.startswith(f"{aiter.MOE_OP[0]} not importable (") and aiter.MOE_OP[1] in why  # both paths tried


def test_old_mla_without_lse_is_rejected(fakes, monkeypatch):
    mods = fake_aiter.modules()
    mods["aiter.mla"].mla_decode_fwd = (
        lambda q, kv_buffer, o, qo_indptr, kv_indptr, kv_indices, kv_last_page_lens, max_seqlen_q,
        page_size=1, nhead_kv=1, sm_scale=None: None
    )
    monkeypatch.setattr(vendor, "load", loader(mods))
    assert "return_lse" in registry.get("sparse_mla_prefill", "aiter").supported(rocm_target())


def test_fnuz_conversion_is_exact():
    x = torch.linspace(-448, 448, 301).to(torch.float8_e4m3fn)
    x = torch.cat([x, torch.tensor([-0.0, 2.0**-9, -(2.0**-9)]).to(torch.float8_e4m3fn)])
    z = adapt.e4m3fn_to_fnuz(x)
    assert z.dtype == torch.float8_e4m3fnuz and not torch.isnan(z.float()).any()
    assert torch.equal(z.float() * adapt.FNUZ_SCALE, x.float())


@pytest.mark.parametrize("T,H,S,K", [(7, 16, 40, 24), (3, 20, 30, 12)], ids=["H16", "H20_padded_to_128"])
def test_prefill(fakes, T, H, S, K):
    q, kv, idx = common.prefill_case(T, H, S, K, seed=H)
    common.check_prefill(aiter.sparse_mla_prefill, q, kv, idx, f"aiter prefill H{H}")


@pytest.mark.parametrize("page", [1, 16])
def test_decode(fakes, page):
    """Paged bf16 cache (page 1 as AITER engines use, and 16 to show the slot view), shuffled blocks,
    an empty sequence, s_q 2, junk indices."""
    q, cache, table, lens, idx = common.decode_case([21, 0, 9], 2, 16, page, 16, fp8=False, seed=page)
    common.check_decode(aiter.sparse_mla_decode, q, cache, table, lens, idx, f"aiter decode page {page}")


@pytest.mark.parametrize("gfx", ["gfx942", "gfx950"])
@pytest.mark.parametrize("topk", [8, 64], ids=["topk8", "topk64_gt_S"])
def test_indexer(fakes, gfx, topk):
    """fnuz conversion (gfx942) with scales doubled, heads 12 padded to 16, windows, rows shorter than topk."""
    fakes(gfx)
    q, w, k, ks, starts, ends = common.indexer_case(10, 12, 36, seed=topk)
    idx = aiter.indexer_topk(q, w, k, ks, starts, ends, topk)
    common.check_topk(idx, q, w, k, ks, starts, ends, topk)


def test_moe_layout():
    ids, experts, post = aiter.moe_layout(torch.tensor([3, 0, 5]), 4, num_rows=10)
    assert ids.tolist() == [0, 1, 2, 10, 3, 4, 5, 6, 7, 10, 10, 10] and experts.tolist() == [0, 2, 2]
    assert post.tolist() == [12]


@pytest.mark.parametrize("gfx,fp8", [("gfx942", True), ("gfx950", True), ("gfx942", False)],
                         ids=["fp8_fnuz", "fp8_ocp", "bf16"])
def test_grouped_gemm(fakes, gfx, fp8):
    """Uneven and empty groups, HAL padding rows stay 0, fp8 via fnuz on gfx942."""
    fakes(gfx)
    x, xs, w, ws, sizes = common.grouped_case([70, 0, 3, 9], pad_rows=2, E=4, N=160, K=256, seed=9, fp8=fp8)
    y = aiter.grouped_gemm(x, xs, w, ws, sizes)
    common.check_grouped(y, x, xs, w, ws, sizes, f"aiter grouped {gfx} fp8={fp8}")
    assert bool((y[-2:] == 0).all())


@pytest.mark.parametrize("gfx", ["gfx942", "gfx950"])
def test_fp8_linear(fakes, gfx):
    """The contract's activation quantisation, then gemm_a8w8_blockscale; fnuz on gfx942."""
    fakes(gfx)
    g = common.rng(11)
    x = common.randn((5, 256), g, torch.bfloat16)
    wq, ws = common.quantize_weight(common.randn((144, 256), g) * 0.06)
    y = aiter.fp8_linear(x, wq, ws, True)
    tol = common.out_tol(torch.bfloat16)
    assert_close(y, ref_fp8_linear(x, wq, ws, True), tol.atol, tol.rtol, tol.cos_eps, f"aiter fp8_linear {gfx}")


def test_act_quant_is_registered_with_its_reason():
    reason = registry.get("act_quant", "aiter").supported(rocm_target())
    assert "no AITER activation quantiser" in reason


# ---------------------------------------------------------------- the stand-ins reject broken arguments


def _mla_args(page_size=1):
    """Two sequences of 5 and 20 tokens over kv_buffer [pages, page_size, 1, 576]: the fake's paged ragged model."""
    g = common.rng(12)
    q = common.randn((2, 16, 576), g, torch.bfloat16)
    tokens = common.randn((40, 576), g, torch.bfloat16)
    lens, order = [5, 20], torch.randperm(64 // page_size, generator=g).tolist()
    need = [-(-n // page_size) for n in lens]
    pages = [order[: need[0]], order[need[0] : need[0] + need[1]]]
    buf = torch.zeros(64 // page_size, page_size, 1, 576, dtype=torch.bfloat16)
    for b, n in enumerate(lens):
        for t in range(n):
            buf[pages[b][t // page_size], t % page_size, 0] = tokens[t + 5 * b]
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    return dict(q=q, kv_buffer=buf, o=torch.empty(2, 16, 512, dtype=torch.bfloat16), qo_indptr=i32([0, 1, 2]),
                kv_indptr=i32([0, len(pages[0]), len(pages[0]) + len(pages[1])]), kv_indices=i32(pages[0] + pages[1]),
                kv_last_page_lens=i32([(n - 1) % page_size + 1 for n in lens]), max_seqlen_q=1, page_size=page_size,
                nhead_kv=1, sm_scale=common.SM_SCALE, return_lse=True)


def test_aiter_fake_mla_reads_pages_and_rejects_wrong_arguments():
    mla = fake_aiter.modules()["aiter.mla"].mla_decode_fwd
    one, sixteen = _mla_args(1), _mla_args(16)
    _, lse1 = mla(**one)
    _, lse16 = mla(**sixteen)
    assert torch.allclose(lse1, lse16) and torch.equal(one["o"], sixteen["o"])  # page_size / last_page_lens read
    bad = {
        "indptrs swapped": {"qo_indptr": one["kv_indptr"], "kv_indptr": one["qo_indptr"]},
        "kv_indptr not from 0": {"kv_indptr": one["kv_indptr"] + 1},
        "page outside kv_buffer": {"kv_indices": one["kv_indices"] + 64},
        "kv_indices int64": {"kv_indices": one["kv_indices"].long()},
        "last page longer than a page": {"kv_last_page_lens": one["kv_last_page_lens"] + 1},
        "no sm_scale": {"sm_scale": None},
        "page_size of another buffer": {"page_size": 16},
        "o of another shape": {"o": torch.empty(2, 16, 576, dtype=torch.bfloat16)},
        "an unmodelled option": {"q_scale": torch.ones(1)},
    }
    for label, change in bad.items():
        with pytest.raises(AssertionError):
            mla(**{**_mla_args(1), **change})
            pytest.fail(f"accepted: {label}")
    # last_page_lens is used: a shorter last page drops tokens, so the result changes
    short = _mla_args(16)
    short["kv_last_page_lens"] = short["kv_last_page_lens"] - 1
    _, lse_short = mla(**short)
    assert not torch.allclose(lse_short, lse16)


def test_aiter_fake_indexer_and_gemm_reject_wrong_arguments():
    mods = fake_aiter.modules("gfx950")
    logits_fn, topk_fn = mods["aiter.ops.triton.attention.fp8_mqa_logits"].fp8_mqa_logits, \
        mods["aiter.ops.topk"].top_k_per_row_prefill
    q, w, k, ks, st, en = common.indexer_case(6, 16, 20, seed=5)
    st, en = st.int(), en.int()
    logits = logits_fn(q, k, ks, w, st, en)
    for args in [(q, k, ks, w, en, st), (q, k, ks, w, st, en + 1), (q, k, ks[:3], w, st, en),
                 (q, k, ks, w[:2], st, en)]:
        with pytest.raises(AssertionError):
            logits_fn(*args)
    idx = torch.empty(6, 4, dtype=torch.int32)
    topk_fn(logits, st, en, idx, None, 6, logits.stride(0), logits.stride(1), k=4)
    for args in [(logits, en, st, idx, None, 6, 20, 1), (logits, st, en, idx, None, 6, 1, 20),
                 (logits, st, en + 1, idx, None, 6, 20, 1), (logits, st.long(), en, idx, None, 6, 20, 1),
                 (logits, st, en, idx[:3], None, 6, 20, 1)]:
        with pytest.raises(AssertionError):
            topk_fn(*args, k=4)
    fused_moe = mods["aiter.ops.triton.moe.moe_op"].fused_moe
    tl = mods["triton.language"]
    x, _, wt, _, sizes = common.grouped_case([3, 2], 0, 2, 16, 32, seed=6, fp8=False)
    ids, experts, post = aiter.moe_layout(sizes, 64, 5)
    kw = dict(A=x, B=wt, C=torch.zeros(5, 1, 16, dtype=torch.bfloat16), A_scale=None, B_scale=None, B_zp=None,
              topk_weights=torch.ones(5, 1), topk_ids=torch.zeros(5, 1, dtype=torch.int32), sorted_token_ids=ids,
              expert_ids=experts, num_tokens_post_padded=post, mul_routed_weight=False, top_k=1,
              compute_type=tl.bfloat16, use_fp8_w8a8=False, use_int8_w8a16=False, use_int4_w4a16=False,
              block_shape=None,
              config=dict(aiter.MOE_CONFIG))
    fused_moe(**kw)
    for change in [{"compute_type": torch.bfloat16}, {"topk_ids": torch.zeros(5, dtype=torch.int32)},
                   {"expert_ids": experts + 2}, {"sorted_token_ids": ids + 6}, {"num_tokens_post_padded": post - 1},
                   {"block_shape": [128, 128]}, {"B": wt.transpose(1, 2).contiguous()}]:
        with pytest.raises(AssertionError):
            fused_moe(**{**kw, **change, "C": torch.zeros(5, 1, 16, dtype=torch.bfloat16)})
