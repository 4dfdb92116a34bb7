"""Each HAL op's ONNX translation (dsa.hal.onnx_graph), exported alone and run in onnxruntime, against the
torch provider on the same inputs - including what the model export does not reach: sparse_mla_decode over a
paged cache, fp8 weights (fp8_linear, fp8 grouped_gemm), -1 / out-of-range indices and empty rows.

Tolerances: fp8 values and scales exact (act_quant is bit-exact by contract); top-k compared as sets; fp32
outputs within the fp32 row of docs/model-and-ops.md 7 (atol 1e-5, rtol 1e-4: summation order only); +inf lse
of empty rows at the same places.
"""
from __future__ import annotations

import pytest

pytest.importorskip("onnx", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install -e '.[onnx]') is not installed")

import warnings  # noqa: E402

import torch  # noqa: E402

FP8 = torch.float8_e4m3fn
ops = torch.ops.dsa


class _Call(torch.nn.Module):
    """fn over the arguments; fp8 tensors become buffers (initializers: numpy has no fp8 to feed)."""

    def __init__(self, fn, args):
        super().__init__()
        self.fn, self.slots = fn, []
        for i, a in enumerate(args):
            if a.dtype == FP8:
                self.register_buffer(f"b{i}", a)
            self.slots.append(f"b{i}" if a.dtype == FP8 else None)

    def forward(self, *fed):
        it = iter(fed)
        return self.fn(*[getattr(self, s) if s else next(it) for s in self.slots])


def run_both(fn, *args):
    """(onnxruntime outputs, torch outputs) of fn(*args), each a list of tensors."""
    import onnxruntime as ort

    from dsa.hal.onnx_graph import translation_table

    torch.set_num_threads(1)
    expected = fn(*args)
    expected = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    fed = [a for a in args if a.dtype != FP8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Call(fn, args).eval(), tuple(fed), dynamo=True, opset_version=21,
                                    custom_translation_table=translation_table(), verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), fed)})
    return [torch.from_numpy(g) for g in got], expected


def close(got, expected, atol=1e-5, rtol=1e-4):
    expected = expected.float()
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], atol=atol, rtol=rtol)


def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("block, ue8m0", [(128, True), (64, False)])
def test_act_quant_bit_exact(block, ue8m0):
    x = torch.randn(5, 200, generator=gen()) * 3  # 200: a partial last block
    got, expected = run_both(lambda x: tuple(t.float() for t in ops.act_quant(x, block, ue8m0, "torch")), x)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_fp8_linear():
    g = gen()
    x = torch.randn(5, 200, generator=g)
    w, ws = torch.randn(150, 200, generator=g).to(FP8), torch.rand(2, 2, generator=g) + 0.5
    got, expected = run_both(lambda x, w, ws: ops.fp8_linear(x, w, ws, True, "torch"), x, w, ws)
    close(got[0], expected[0], atol=1e-4)


@pytest.mark.parametrize("fp8", [False, True])
def test_indexer_topk_sets(fp8):
    g = gen()
    q, w = torch.randn(6, 4, 64, generator=g), torch.randn(6, 4, generator=g)
    k, ks = torch.randn(20, 64, generator=g), torch.rand(20, generator=g)
    if fp8:
        q, _ = ops.act_quant(q, 64, True, "torch")
        k, ks = ops.act_quant(k, 64, True, "torch")
        ks = ks.squeeze(-1)
    starts = torch.tensor([0, 0, 0, 10, 10, 10], dtype=torch.int32)  # rows seeing 3 (< topk) to 10 keys
    ends = torch.tensor([3, 9, 10, 12, 20, 15], dtype=torch.int32)
    (got,), (expected,) = run_both(lambda *a: ops.indexer_topk(*a, 8, 10, "torch"), q, w, k, ks, starts, ends)
    assert got.dtype == torch.int32
    assert [sorted(r) for r in got.tolist()] == [sorted(r) for r in expected.tolist()]


def test_sparse_mla_prefill_with_skips_and_empty_rows():
    g = gen()
    q, kv = torch.randn(6, 4, 96, generator=g), torch.randn(20, 1, 96, generator=g)
    idx = torch.stack([torch.randperm(20, generator=g)[:8] for _ in range(6)]).to(torch.int32)
    idx[0, 3:] = -1
    idx[1, :] = -1  # no valid key: out 0, lse +inf
    idx[2, 5] = 99  # outside the kv: skipped
    got, expected = run_both(lambda *a: ops.sparse_mla_prefill(*a, 0.1, 64, "torch"), q, kv, idx)
    for gt, e in zip(got, expected):
        close(gt, e)


def test_sparse_mla_decode_paged():
    g = gen()
    q, cache = torch.randn(3, 1, 4, 96, generator=g), torch.randn(10, 4, 1, 96, generator=g)
    table = torch.tensor([[3, 1, 7, 0], [2, 5, 0, 0], [9, 8, 6, 4]], dtype=torch.int32)
    lens = torch.tensor([13, 6, 16], dtype=torch.int32)
    idx = torch.stack([torch.randperm(16, generator=g)[:8] for _ in range(3)]).to(torch.int32)[:, None]
    got, expected = run_both(lambda *a: ops.sparse_mla_decode(*a, 0.1, 64, "torch"), q, cache, table, lens, idx)
    for gt, e in zip(got, expected):
        close(gt, e)


@pytest.mark.parametrize("fp8", [False, True])
def test_grouped_gemm_uneven_and_empty_groups(fp8):
    g = gen()
    x, w = torch.randn(12, 200, generator=g), torch.randn(4, 48, 200, generator=g)
    sizes = torch.tensor([3, 0, 5, 2])  # an empty group; rows 10, 11 are padding (output 0)
    if fp8:
        xq, xs = ops.act_quant(x, 128, True, "torch")
        wq, wsc = w.to(FP8), torch.rand(4, 1, 2, generator=g) + 0.5
        got, expected = run_both(lambda x, xs, w, ws, m: ops.grouped_gemm(x, xs, w, ws, m, "torch").float(),
                                 xq, xs, wq, wsc, sizes)
    else:
        got, expected = run_both(lambda x, w, m: ops.grouped_gemm(x, None, w, None, m, "torch"), x, w, sizes)
    close(got[0], expected[0], atol=1e-4)
    assert not got[0][10:].any()
