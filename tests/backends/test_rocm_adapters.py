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
