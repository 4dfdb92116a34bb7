"""The 671B shapes and the cost arithmetic of `python -m dsa.bench.gpu_ops`: FLOPs and bytes moved per op call,
the roofline floor of a card. Standard library only, so the unit tests check it anywhere."""
from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------- 671B dimensions (docs/model-and-ops.md 1)
HEADS, D_QK, D_V, ROPE, TOPK = 128, 576, 512, 64, 2048
INDEX_HEADS, INDEX_DIM = 64, 128
HIDDEN, MOE_INTER, EXPERTS, EXPERTS_PER_TOKEN = 7168, 2048, 256, 8
TOKEN_BYTES = {"bf16": 2 * D_QK, "fp8": 656}  # latent-cache bytes per token (docs/model-and-ops.md 4)
CONTEXTS = (4096, 32768, 65536, 131072)  # 64K: where issue 16's targets are measured
DECODE_BATCH = 64  # sequences per decode step (one DP-attention rank)
PREFILL_CHUNK = 4096  # query tokens per prefill call


@dataclass(frozen=True)
class Peak:
    """Dense peaks of one card: FLOP/s in bf16 and fp8 tensor-core math, bytes/s of HBM."""

    name: str
    bf16_flops: float
    fp8_flops: float
    bytes_per_s: float


PEAKS = {"H200": Peak("H200", 790e12, 1580e12, 4.8e12)}  # matched against torch.cuda.get_device_name()


@dataclass(frozen=True)
class Cost:
    """Useful work of one op call: FLOPs (2 per multiply-add) and the bytes it must move at least."""

    flops: float
    bytes: float
    fp8: bool = False  # the FLOPs run at the fp8 peak

    def floor_seconds(self, peak: Peak) -> float:
        """Roofline floor: the call cannot beat its compute time nor its memory time."""
        rate = peak.fp8_flops if self.fp8 else peak.bf16_flops
        return max(self.flops / rate, self.bytes / peak.bytes_per_s)

    def achieved(self, seconds: float) -> tuple[float, float]:
        """(TFLOP/s, GB/s) at this run time."""
        return self.flops / seconds / 1e12, self.bytes / seconds / 1e9


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def sparse_mla_cost(tokens: int, kv_rows: int, token_bytes: int, heads: int = HEADS, topk: int = TOPK) -> Cost:
    """Sparse MLA over `topk` keys per token: QK^T over 576 dims and PV over 512, per head.
    Bytes: q (bf16) + kv_rows distinct cache rows + out (bf16) + lse (fp32) + indices (int32)."""
    flops = 2.0 * tokens * heads * topk * (D_QK + D_V)
    moved = tokens * heads * D_QK * 2 + kv_rows * token_bytes + tokens * heads * (D_V * 2 + 4) + tokens * topk * 4
    return Cost(flops, moved)


def sparse_mla_decode_cost(batch: int, context: int, cache: str, topk: int = TOPK, s_q: int = 1) -> Cost:
    """Decode: each sequence reads its selected rows once (min(s_q * topk, context) of them)."""
    return sparse_mla_cost(batch * s_q, batch * min(s_q * topk, context), TOKEN_BYTES[cache], topk=topk)


def sparse_mla_prefill_cost(tokens: int, context: int, topk: int = TOPK) -> Cost:
    """Prefill of `tokens` queries over a bf16 kv of `context` rows: every distinct row read at least once."""
    return sparse_mla_cost(tokens, min(context, tokens * topk), TOKEN_BYTES["bf16"], topk=topk)


def dense_decode_cost(batch: int, context: int, heads: int = HEADS) -> Cost:
    """The dense baseline of a decode step: every head of every sequence attends to all `context` latent rows
    (QK^T over 576 dims, PV over 512: MLA's absorbed form, as one shared key / value head). Bytes: the whole bf16
    cache of the batch, q and out."""
    flops = 2.0 * batch * heads * context * (D_QK + D_V)
    moved = batch * context * D_QK * 2 + batch * heads * (D_QK + D_V) * 2
    return Cost(flops, moved)


def causal_pairs(tokens: int, context: int) -> int:
    """Visible (query, key) pairs of the last `tokens` positions of a `context`-long sequence."""
    return tokens * (context - tokens) + tokens * (tokens + 1) // 2


def indexer_cost(queries: int, keys: int, pairs: int, topk: int = TOPK, fp8: bool = True) -> Cost:
    """Indexer logits + top-k: 64 x 128 dot products per visible pair (relu / weights / scale are
    small next to them). Bytes: q, keys (+ fp32 scale each), weights, the fp32 logits of every
    visible pair written and read back by the top-k, and the int32 indices."""
    el = 1 if fp8 else 2
    flops = 2.0 * pairs * INDEX_HEADS * INDEX_DIM
    moved = queries * INDEX_HEADS * (INDEX_DIM * el + 4) + keys * (INDEX_DIM * el + 4) + pairs * 8 + queries * topk * 4
    return Cost(flops, moved, fp8=fp8)


def grouped_gemm_cost(rows: int, n: int, k: int, experts_used: int, fp8: bool) -> Cost:
    """y [rows, n] (bf16) = x [rows, k] @ w[e]^T for the experts that own rows; each weight read once."""
    el = 1 if fp8 else 2
    moved = rows * k * el + experts_used * n * k * el + rows * n * 2
    if fp8:
        moved += rows * cdiv(k, 128) * 4 + experts_used * cdiv(n, 128) * cdiv(k, 128) * 4
    return Cost(2.0 * rows * n * k, moved, fp8=fp8)


def act_quant_cost(rows: int, k: int, in_bytes: int = 2) -> Cost:
    """Read x, write fp8 values and one fp32 scale per 128: pure bandwidth."""
    return Cost(0.0, rows * k * (in_bytes + 1) + rows * cdiv(k, 128) * 4)


def fp8_linear_cost(rows: int, n: int, k: int, in_bytes: int = 2) -> Cost:
    """act_quant + fp8 GEMM as one ideal fused op: read x and w (+ scales), write y in x's dtype."""
    moved = rows * k * in_bytes + n * k + cdiv(n, 128) * cdiv(k, 128) * 4 + rows * n * in_bytes
    return Cost(2.0 * rows * n * k, moved, fp8=True)
