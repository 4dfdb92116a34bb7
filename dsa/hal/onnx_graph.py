"""The HAL ops in standard ONNX operators, for `torch.onnx.export(..., custom_translation_table=...)`.

Each op module of dsa/hal has an `onnx_translation()` returning the function the exporter calls in place
of `torch.ops.dsa.<op>` (same arguments, the provider name last and ignored); those functions build the
graph from the pieces here, so each contract and its ONNX form sit side by side. `translation_table()`
collects them from `registry.OPS`: an op without one fails the export, naming the op.

Everything is gather-based and truly sparse, as in dsa/backends/torch: the indexer scores the visible keys
and takes ONNX TopK (ties go to the lower position, as top_positions of the torch provider); attention
Gathers the selected latent rows ([T, K, D]) and runs softmax over them only (O(T x K), never T x S);
grouped_gemm Gathers each row's expert weight. fp8 values use Cast to FLOAT8E4M3FN (round to nearest even,
saturating: ONNX opset >= 19) and back; the packed fp8 KV-cache token (dsa.hal.kv_format) is not translated.

Imported only from the op modules' onnx_translation() (onnxscript is the `onnx` extra).
"""
from __future__ import annotations

import importlib
import math

from onnxscript import ir
from onnxscript import opset19 as op

from dsa.hal import registry
from dsa.hal.fp8 import FP8_E4M3_MAX, SCALE_FLOOR, num_blocks

FLOAT, INT64, INT32 = ir.DataType.FLOAT, ir.DataType.INT64, ir.DataType.INT32
FP8, BF16, UINT8 = ir.DataType.FLOAT8E4M3FN, ir.DataType.BFLOAT16, ir.DataType.UINT8
WEIGHT_BLOCK = 128  # fp8 weights: 128 x 128 scale blocks; activations of fp8 GEMMs: 1 x 128


def translation_table() -> dict:
    """{torch.ops.dsa.<op>.default: its ONNX translation} for every HAL op (registry.OPS).

    An op module without `onnx_translation()` is a NotImplementedError naming it: a new op cannot be
    exported by accident without one."""
    from dsa.hal.opset import HAL_OPS

    table, missing = {}, []
    for name in registry.OPS:
        make = getattr(importlib.import_module(f"dsa.hal.{name}"), "onnx_translation", None)
        if make is None:
            missing.append(name)
        else:
            table[HAL_OPS[name].default] = make()
    if missing:
        raise NotImplementedError(f"HAL op(s) {', '.join(missing)} have no ONNX translation: add "
                                  f"onnx_translation() to dsa/hal/<op>.py (pieces in dsa/hal/onnx_graph.py)")
    return table


# ---------------------------------------------------------------- constants and shapes


def ints(*values: int):
    return op.Constant(value_ints=[int(v) for v in values])


def f32(value: float):
    return op.Constant(value_float=float(value))


def i64(value: int):
    return op.Constant(value_int=int(value))


def static_dim(x, axis: int, what: str) -> int:
    """A dimension the translation needs as a number (head dims, page size, top-k): fixed by the model."""
    dim = x.shape[axis]
    if not isinstance(dim, int):
        raise ValueError(f"{what}: dimension {axis} of {x.shape} must be static for the ONNX translation")
    return dim


def dim(x, axis: int):
    """Dimension `axis` of x as a 1-D int64 tensor [1] (dynamic sizes: token counts, cache lengths)."""
    return op.Shape(x, start=axis) if axis == -1 else op.Shape(x, start=axis, end=axis + 1)


# ---------------------------------------------------------------- fp8


def pow2_ceil(s):
    """2 ** ceil(log2(s)) exactly for positive fp32 s (dsa.hal.fp8.pow2_ceil): a Log estimate, corrected."""
    p = op.Pow(f32(2.0), op.Ceil(op.Div(op.Log(s), f32(math.log(2.0)))))
    half = op.Div(p, f32(2.0))
    p = op.Where(op.GreaterOrEqual(half, s), half, p)
    return op.Where(op.Less(p, s), op.Mul(p, f32(2.0)), p)


def act_quant(x, block_size: int, ue8m0: bool):
    """dsa.hal.act_quant: x [..., K] -> (fp8 [..., K], fp32 scales [..., ceil(K / block_size)])."""
    K = static_dim(x, -1, "act_quant")
    nb = num_blocks(K, block_size)
    pad = nb * block_size - K
    lead = op.Shape(x, end=-1)
    xf = op.Reshape(op.Cast(x, to=FLOAT), ints(-1, K))
    if pad:  # zero padding never raises a block's amax
        xf = op.Pad(xf, ints(0, 0, 0, pad))
    xb = op.Reshape(xf, ints(-1, nb, block_size))
    amax = op.Max(op.ReduceMax(op.Abs(xb), ints(-1), keepdims=0), f32(SCALE_FLOOR))  # [M, nb]
    scale = op.Div(amax, f32(FP8_E4M3_MAX))
    if ue8m0:
        scale = pow2_ceil(scale)
    y = op.Clip(op.Div(xb, op.Unsqueeze(scale, ints(-1))), f32(-FP8_E4M3_MAX), f32(FP8_E4M3_MAX))
    y = op.Reshape(y, ints(-1, nb * block_size))
    if pad:
        y = op.Slice(y, ints(0), ints(K), ints(1))
    y = op.Cast(y, to=FP8)
    return (op.Reshape(y, op.Concat(lead, ints(K), axis=0)),
            op.Reshape(scale, op.Concat(lead, ints(nb), axis=0)))


def dequant_rows(xq, xs, K: int, block: int = WEIGHT_BLOCK):
    """fp8 x [..., K] times its 1 x block scales [..., nb] -> fp32 [..., K] (K given: the tracer knows the
    shapes of graph inputs only)."""
    nb = num_blocks(K, block)
    pad = nb * block - K
    x = op.Reshape(op.Cast(xq, to=FLOAT), ints(-1, K))
    if pad:
        x = op.Pad(x, ints(0, 0, 0, pad))
    x = op.Mul(op.Reshape(x, ints(-1, nb, block)), op.Unsqueeze(op.Reshape(xs, ints(-1, nb)), ints(-1)))
    x = op.Reshape(x, ints(-1, nb * block))
    if pad:
        x = op.Slice(x, ints(0), ints(K), ints(1))
    return op.Reshape(x, op.Shape(xq))


def dequant_tiles(w, ws, block: int = WEIGHT_BLOCK):
    """fp8 w [..., N, K] times its block x block scales [..., ceil(N/b), ceil(K/b)] -> fp32 [..., N, K]."""
    N, K = static_dim(w, -2, "dequant_tiles"), static_dim(w, -1, "dequant_tiles")
    bn, bk = num_blocks(N, block), num_blocks(K, block)
    s = op.Reshape(ws, ints(-1, bn, 1, bk, 1))
    s = op.Expand(s, ints(1, 1, block, 1, block))  # [L, bn, b, bk, b]
    s = op.Slice(op.Reshape(s, ints(-1, bn * block, bk * block)), ints(0, 0), ints(N, K), ints(1, 2))
    return op.Mul(op.Cast(w, to=FLOAT), op.Reshape(s, op.Shape(w)))


def fp8_linear(x, weight, weight_scale_inv, ue8m0: bool):
    """dsa.hal.fp8_linear: act_quant(x, 128) dequantised @ dequant(weight)^T in fp32, one rounding to x's type."""
    xq, xs = act_quant(x, WEIGHT_BLOCK, ue8m0)
    K = static_dim(x, -1, "fp8_linear")
    y = op.MatMul(dequant_rows(xq, xs, K), op.Transpose(dequant_tiles(weight, weight_scale_inv), perm=[1, 0]))
    return op.CastLike(y, x)


def grouped_gemm(x, x_scale, w, w_scale, m_sizes):
    """dsa.hal.grouped_gemm: row r of x times the weight of its group's expert (Gathered per row), 0 after
    the last group. Rows: [M, K] x [M, K, N] -> [M, N]; only the experts rows use are read."""
    E = static_dim(w, 0, "grouped_gemm")
    fp8 = x.dtype == FP8
    ends = op.CumSum(op.Cast(m_sizes, to=INT64), i64(0))  # [E]
    rows = op.Range(i64(0), op.Squeeze(dim(x, 0), ints(0)), i64(1))  # [M]
    expert = op.ReduceSum(op.Cast(op.LessOrEqual(op.Unsqueeze(ends, ints(0)), op.Unsqueeze(rows, ints(1))),
                                  to=INT64), ints(1), keepdims=0)  # [M] groups ending at or before r
    used = op.Less(rows, op.Gather(ends, i64(E - 1), axis=0))  # [M]
    expert = op.Min(expert, i64(E - 1))
    if fp8:
        K = static_dim(x, -1, "grouped_gemm")
        xd, wd = dequant_rows(x, x_scale, K), dequant_tiles(w, w_scale)  # fp32 [M, K], [E, N, K]
    else:
        xd, wd = op.Cast(x, to=FLOAT), op.Cast(w, to=FLOAT)
    wr = op.Gather(wd, expert, axis=0)  # [M, N, K]
    y = op.MatMul(op.Unsqueeze(xd, ints(1)), op.Transpose(wr, perm=[0, 2, 1]))  # [M, 1, N]
    y = op.Where(op.Unsqueeze(used, ints(1)), op.Squeeze(y, ints(1)), f32(0.0))
    return op.Cast(y, to=BF16) if fp8 else op.CastLike(y, x)


# ---------------------------------------------------------------- indexer and sparse attention


def indexer_topk(q, weights, k, k_scale, starts, ends, topk: int):
    """dsa.hal.indexer_topk: scores [T, S] of the visible keys, ONNX TopK, -1 where fewer than topk are visible."""
    T = dim(q, 0)
    if topk == 0:
        return op.Cast(op.Expand(i64(-1), op.Concat(T, ints(0), axis=0)), to=INT32)
    qf, kf = op.Cast(q, to=FLOAT), op.Cast(k, to=FLOAT)  # [T, H, D], [S, D]
    logits = op.Relu(op.MatMul(qf, op.Transpose(kf, perm=[1, 0])))  # [T, H, S]
    score = op.Squeeze(op.MatMul(op.Unsqueeze(op.Cast(weights, to=FLOAT), ints(1)), logits), ints(1))  # [T, S]
    score = op.Mul(score, op.Unsqueeze(op.Cast(k_scale, to=FLOAT), ints(0)))
    pos = op.Unsqueeze(op.Range(i64(0), op.Squeeze(dim(k, 0), ints(0)), i64(1)), ints(0))  # [1, S]
    lo = op.Unsqueeze(op.Cast(starts, to=INT64), ints(1))
    hi = op.Unsqueeze(op.Cast(ends, to=INT64), ints(1))
    neg_inf = f32(-math.inf)
    score = op.Where(op.And(op.GreaterOrEqual(pos, lo), op.Less(pos, hi)), score, neg_inf)
    # topk -inf columns make TopK legal when S < topk; every -inf pick becomes -1
    score = op.Concat(score, op.Expand(neg_inf, op.Concat(T, ints(topk), axis=0)), axis=1)
    values, idx = op.TopK(score, ints(topk), axis=-1, largest=1, sorted=1)
    return op.Cast(op.Where(op.Equal(values, neg_inf), i64(-1), idx), to=INT32)


def attend(q, keys, valid, sm_scale: float, d_v: int):
    """Softmax attention of q [R, H, D] over its own keys [R, K, D] (valid [R, K]): out [R, H, d_v] fp32,
    lse [R, H] fp32; a row with no valid key gives out 0, lse +inf (dsa.hal.sparse_mla_prefill)."""
    qf, kf = op.Cast(q, to=FLOAT), op.Cast(keys, to=FLOAT)
    scores = op.Mul(op.MatMul(qf, op.Transpose(kf, perm=[0, 2, 1])), f32(sm_scale))  # [R, H, K]
    scores = op.Where(op.Unsqueeze(valid, ints(1)), scores, f32(-math.inf))
    m = op.ReduceMax(scores, ints(-1), keepdims=1)  # [R, H, 1], -inf for an empty row
    m = op.Where(op.IsInf(m), f32(0.0), m)
    p = op.Exp(op.Sub(scores, m))
    total = op.ReduceSum(p, ints(-1), keepdims=1)
    empty = op.Equal(total, f32(0.0))
    values = op.Slice(kf, ints(0), ints(d_v), ints(2))  # [R, K, d_v]
    out = op.MatMul(op.Div(p, op.Where(empty, f32(1.0), total)), values)  # [R, H, d_v]
    lse = op.Where(empty, f32(math.inf), op.Add(op.Log(total), m))
    return out, op.Squeeze(lse, ints(-1))


def sparse_mla_prefill(q, kv, indices, sm_scale: float, d_v: int):
    """dsa.hal.sparse_mla_prefill: Gather the selected rows of kv [S, 1, D] per query, attend over them."""
    D = static_dim(q, -1, "sparse_mla_prefill")
    idx = op.Cast(indices, to=INT64)  # [T, K]
    valid = op.And(op.GreaterOrEqual(idx, i64(0)), op.Less(idx, dim(kv, 0)))
    keys = op.Gather(op.Reshape(kv, ints(-1, D)), op.Where(valid, idx, i64(0)), axis=0)  # [T, K, D]
    out, lse = attend(q, keys, valid, sm_scale, d_v)
    return op.CastLike(out, q), lse


def sparse_mla_decode(q, kv_cache, block_table, seq_lens, indices, sm_scale: float, d_v: int):
    """dsa.hal.sparse_mla_decode: logical positions -> paged rows through the block table, Gather, attend."""
    if kv_cache.dtype == UINT8:
        raise ValueError("sparse_mla_decode: the packed fp8 KV cache has no ONNX translation; "
                         "export with --kv-cache-dtype bf16")
    page = static_dim(kv_cache, 1, "sparse_mla_decode")
    H, D = static_dim(q, 2, "sparse_mla_decode"), static_dim(q, 3, "sparse_mla_decode")
    K = static_dim(indices, -1, "sparse_mla_decode")
    idx = op.Cast(indices, to=INT64)  # [B, s_q, K]
    lens = op.Unsqueeze(op.Cast(seq_lens, to=INT64), ints(1, 2))
    valid = op.And(op.GreaterOrEqual(idx, i64(0)), op.Less(idx, lens))
    flat = op.Reshape(op.Where(valid, idx, i64(0)), ints(0, -1))  # [B, s_q * K]
    blocks = op.GatherElements(op.Cast(block_table, to=INT64), op.Div(flat, i64(page)), axis=1)
    rows = op.Add(op.Mul(blocks, i64(page)), op.Mod(flat, i64(page)))
    keys = op.Reshape(op.Gather(op.Reshape(kv_cache, ints(-1, D)), rows, axis=0), ints(-1, K, D))
    out, lse = attend(op.Reshape(q, ints(-1, H, D)), keys, op.Reshape(valid, ints(-1, K)), sm_scale, d_v)
    lead = op.Shape(q, end=-1)  # [B, s_q, H]
    return (op.CastLike(op.Reshape(out, op.Concat(lead, ints(d_v), axis=0)), q), op.Reshape(lse, lead))
