"""The Triton kernels' number handling and device-specific paths, under TRITON_INTERPRET=1 on the CPU.

The conformance suite runs the Triton providers as a CPU would (fp8 decoded to fp32, big tiles). These
tests cover what a GPU would take instead: each way of feeding fp8 to the tensor cores
(dsa.backends.triton.numerics.FP8_*), the one-query-per-program indexer tiling of GPUs, and the bit-level
conversions (fp32 -> bf16 / e4m3fn, round to nearest even) every path relies on.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from dsa.backends.triton.common import INTERPRETING  # noqa: E402

if not INTERPRETING:
    pytest.skip("these tests run Triton kernels on CPU tensors (TRITON_INTERPRET=1)", allow_module_level=True)

import triton.language as tl  # noqa: E402

from dsa.backends.torch import grouped_gemm as torch_gg  # noqa: E402
from dsa.backends.triton import grouped_gemm as gg  # noqa: E402
from dsa.backends.triton import indexer, numerics  # noqa: E402
from dsa.conformance.inputs import quantize_rows, quantize_weight, randn, rng  # noqa: E402
from dsa.conformance.reference.compare import assert_topk_equivalent  # noqa: E402
from dsa.conformance.reference.ops import ref_indexer_scores, ref_topk_count  # noqa: E402

# triton < 3.7 (3.6.0 is the H200 machine's) interprets no fp8e4b8, the fnuz format of MI300 ("fail to convert
# fp8e4b8 to ir type"); compiled for gfx942 the path is unaffected (test_triton_compile.py).
OLD_INTERPRETER = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7)
FP8_MODES = [pytest.param(numerics.FP8_NATIVE, id="native"),
             pytest.param(numerics.FP8_FNUZ, id="fnuz", marks=pytest.mark.skipif(
                 OLD_INTERPRETER, reason=f"triton {triton.__version__}'s interpreter has no fp8e4b8 (fnuz); "
                                         "triton >= 3.7 interprets it, gfx942 compiles it")),
             pytest.param(numerics.FP8_FP16, id="fp16"), pytest.param(numerics.FP8_F32, id="f32")]


@triton.jit
def _convert_kernel(x_ptr, bf16_ptr, e4m3_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    tl.store(bf16_ptr + offs, numerics.f32_to_bf16_bits(x), mask=ok)
    tl.store(e4m3_ptr + offs, numerics.f32_to_e4m3_bits(tl.minimum(tl.maximum(x, -448.0), 448.0)), mask=ok)


@triton.jit
def _decode_kernel(bits_ptr, out_ptr, MODE: tl.constexpr):
    offs = tl.arange(0, 256)
    tl.store(out_ptr + offs, numerics.fp8_operand(tl.load(bits_ptr + offs), MODE).to(tl.float32))


def test_rounding_matches_torch_bit_for_bit():
    g = rng(0)
    grid = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # every finite e4m3
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties between fp8 neighbours (incl. subnormals)
    bf16_grid = torch.randn(2000, generator=g).bfloat16().float()
    bf16_mids = bf16_grid + bf16_grid.abs() * 2.0**-9  # ties between bf16 neighbours
    x = torch.cat([grid, mids, torch.nextafter(mids, torch.zeros_like(mids)), bf16_grid, bf16_mids,
                   torch.randn(4000, generator=g) * 100, torch.randn(2000, generator=g) * 1e-3,
                   torch.tensor([0.0, -0.0, 448.0, -448.0, 1e-30, 3e38, float("inf")])])
    x = torch.cat([x, -x])
    bf16 = torch.empty(x.shape, dtype=torch.bfloat16)
    e4m3 = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
    _convert_kernel[(triton.cdiv(x.numel(), 8192),)](x, bf16.view(torch.int16), e4m3.view(torch.uint8), x.numel(),
                                                     BLOCK=8192)
    assert torch.equal(bf16.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))
    expect = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(e4m3.float(), expect)  # value compare: +0 == -0


@pytest.mark.parametrize("mode", FP8_MODES)
def test_fp8_operand_decodes_every_code(mode):
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    out = torch.empty(256)
    _decode_kernel[(1,)](bits, out, MODE=mode)
    expect = bits.view(torch.float8_e4m3fn).float()
    finite = ~expect.isnan()
    scale = numerics.fp8_dot_factor(mode) ** 0.5  # each operand carries the square root of the factor
    assert torch.equal(out[finite] * scale, expect[finite])


@pytest.mark.parametrize("mode", FP8_MODES)
def test_grouped_gemm_each_fp8_path(monkeypatch, mode):
    monkeypatch.setattr(gg, "fp8_mode", lambda device: mode)
    g = rng(1)
    sizes, N, K = [5, 0, 9], 48, 256
    M = sum(sizes) + 2  # two padding rows
    x, xs = quantize_rows(randn((M, K), g))
    pairs = [quantize_weight(randn((N, K), g, scale=K**-0.5)) for _ in sizes]
    w, ws = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    m_sizes = torch.tensor(sizes, dtype=torch.int32)
    y = gg.grouped_gemm(x, xs, w, ws, m_sizes)
    ref = torch_gg.grouped_gemm(x, xs, w, ws, m_sizes)
    torch.testing.assert_close(y.float(), ref.float(), rtol=2 / 128, atol=1e-3)
    assert torch.count_nonzero(y[sum(sizes):].float()) == 0


@pytest.mark.parametrize("mode", FP8_MODES)
def test_indexer_gpu_tiling_each_fp8_path(monkeypatch, mode):
    """One query per program (the GPU tiling): windows of packed decode sequences and causal prefill."""
    monkeypatch.setattr(indexer, "fp8_mode", lambda device: mode)
    monkeypatch.setattr(indexer, "_tiles", lambda T, h_p2: (1, 32, 4))
    g = rng(2)
    T, H, D, S, topk = 6, 8, 64, 150, 24
    # rows 0-2: three decode sequences packed as keys [0,40) [40,110) [110,150); rows 3-5: a prefill
    # chunk of the last one (causal); row 5 also has a window narrower than topk
    starts = torch.tensor([0, 40, 110, 110, 110, 110], dtype=torch.int32)
    ends = torch.tensor([40, 110, 150, 140, 147, 121], dtype=torch.int32)
    q8, q_scale = quantize_rows(randn((T * H, D), g), block=D)
    k8, k_scale = quantize_rows(randn((S, D), g), block=D)
    q8 = q8.view(T, H, D)
    weights = randn((T, H), g) * H**-0.5 * D**-0.5 * q_scale.view(T, H)
    idx = indexer.indexer_topk(q8, weights, k8, k_scale.view(S), starts, ends, topk)
    ref = ref_indexer_scores(q8, weights, k8, k_scale.view(S), starts, ends)
    assert_topk_equivalent(idx, ref, ref_topk_count(starts, ends, topk), tie_tol=1e-5)


def test_indexer_interpreter_tiling_prefills_minus_inf():
    """Large query tiles (the interpreter's) whose rows start far apart still give -inf past each window."""
    g = rng(3)
    T, H, D, S = 3, 4, 32, 300
    starts = torch.tensor([0, 250, 120], dtype=torch.int32)
    ends = torch.tensor([10, 300, 121], dtype=torch.int32)
    q, k = randn((T, H, D), g), randn((S, D), g)
    w = randn((T, H), g).abs()
    logits = indexer.indexer_logits(q, w, k, torch.ones(S), starts, ends)
    assert logits.shape == (T, 50)
    widths = (ends - starts).tolist()
    for t in range(T):
        assert torch.isfinite(logits[t, : widths[t]]).all()
        assert (logits[t, widths[t]:] == float("-inf")).all()
