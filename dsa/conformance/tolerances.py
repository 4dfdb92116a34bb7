"""The one tolerance table of the conformance suite (docs/model-and-ops.md 7 rules; see
dsa/conformance/reference/compare.py).

An element passes if |a - e| <= atol OR |a - e| <= rtol * |e| (e = fp64 oracle); then the whole tensor
must satisfy 1 - 2<a,e>/(|a|^2+|e|^2) <= cos_eps. Inputs are built so outputs are O(1) (atol is
meant for elements near zero, where the relative rule is meaningless).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float
    cos_eps: float
    why: str


# ---- float outputs (attention `out`, GEMM `y`), by output dtype
OUT = {
    torch.bfloat16: Tol(
        atol=1e-3,
        rtol=2 / 128,
        cos_eps=5e-6,
        why="rounding to bf16 (8 significant bits) alone is a relative error <= 2^-8; rtol 2/128 = 2^-6 "
        "leaves 4x for fp32 accumulation order and for bf16 softmax probabilities before P@V (what "
        "FlashMLA does). cos_eps 5e-6 is docs/model-and-ops.md 7's decode value; bf16 rounding alone gives ~1e-6.",
    ),
    torch.float32: Tol(
        atol=1e-5,
        rtol=1e-4,
        cos_eps=1e-9,
        why="fp32 accumulation over <= 7168 terms: relative error ~ sqrt(K) * 2^-24 ~ 1e-5 in bad cases; "
        "a 10x margin. A correct fp32 kernel lands near 1e-12 in the global difference.",
    ),
}

# ---- log-sum-exp of sparse MLA (always fp32)
LSE = Tol(
    atol=1e-6,
    rtol=1e-5,
    cos_eps=1e-12,
    why="docs/model-and-ops.md 7: lse atol 1e-6. lse ~ 1..20 here, and its fp32 error is the error of the logits: "
    "sm_scale * (q.k summed in fp32 over Dqk <= 576 terms) ~ 1e-6 relative at worst, so rtol 1e-5.",
)

# ---- act_quant: the rounding rule is fully specified, so the result is exact
ACT_QUANT_EXACT = (
    "fp8 values and fp32 scales must be identical to the oracle: amax and s = amax/448 are exact fp32 "
    "operations, 2^ceil(log2 s) is exact, x/s is one correctly rounded fp32 division and fp8 "
    "conversion is round-to-nearest-even. Only the sign of zero is not compared (+0 == -0)."
)

# ---- indexer top-k: selections compared as sets; a swap is legal only between (near-)equal scores
TOPK_TIE = 1e-5  # docs/model-and-ops.md 7; relative to max(1, |score|): fp32 scores of O(10) differ from fp64 by ~1e-6

# ---- kv_format round trip (pack then unpack) per element, from the number formats alone
KV_LATENT_REL = 2.0**-4  # e4m3 has 4 significant bits: half an ulp is <= 2^-4 of the value (normals)
KV_LATENT_SUBNORMAL_ABS = 2.0**-10  # times the group scale: half of the smallest fp8 subnormal 2^-9
KV_ROPE_REL = 2.0**-8  # bf16 has 8 significant bits


def out_tol(dtype: torch.dtype) -> Tol:
    return OUT[dtype]
