"""Whole-model reference forward for DeepSeek-V3.2, in float64, for ONE sequence.

Written from docs/model-and-ops.md 2 and 3 only (independent of `model/` and `dsa/backends/`): it reads HF-named
weights, dequantises fp8 128x128 blocks itself, and computes

    h = embed(ids)
    per layer:  h += MLA(rmsnorm(h))        naive (non-absorbed) form, 192-dim q.k per head,
                                            causal, optionally restricted to the indexer's top-k
                h += FFN(rmsnorm(h))        dense SwiGLU (layer < first_k_dense_replace) or MoE
    logits = lm_head(rmsnorm(h))

Conventions (docs/model-and-ops.md 2.1 / 2.2):
  * MLA RoPE is INTERLEAVED (pairs (0,1),(2,3),...), on the LAST qk_rope_head_dim dims of q and on k_pe.
  * Indexer RoPE is ROTATE-HALF (dim i pairs with i + R/2), on the FIRST qk_rope_head_dim dims of q, k.
  * Both use the YaRN frequencies of docs/model-and-ops.md 2.1, computed here from the config.
  * The indexer's optional fp8 simulation quantises each head vector (one scale per vector) after the
    Hadamard transform: amax floor 1e-4, scale amax/448 (rounded up to a power of two when ue8m0),
    clamp +-448, cast to float8_e4m3fn and back.
  * Top-k ties: among equal scores the LOWER position wins (stable descending sort). Implementations
    may break ties differently; compare selections tie-aware (see `topk_equivalent`).

Storage / arithmetic the model may legitimately apply, simulated on request so comparisons stay tight:
`kv_cache_dtype` ("bf16" / "fp8" latent-cache rounding), `act_quant` (fp8 GEMMs' 1x128 activation
quantisation for fp8 checkpoints), `selections` (attend to a given top-k, for tie-aware comparisons).
Variants used by tests to prove that the model is sensitive to a convention: `indexer_rope` and
`mla_rope` ("interleaved" / "rotate_half"), `yarn=False` (plain RoPE frequencies).
"""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from .fp8 import DECODE_TABLE, round_to_e4m3
from .kv_layout import unpack_parts

F64 = torch.float64
FP8_MAX = 448.0
AMAX_FLOOR = 1e-4
_FP8_TYPES = tuple(
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2") if hasattr(torch, n)
)


# ----------------------------------------------------------------------------------------------
# the config: the oracle's own reading of config.json (docs/model-and-ops.md 1), not dsa/model/config.py
# ----------------------------------------------------------------------------------------------
class RefConfig:
    """config.json as a plain dict (json.load), its fields as attributes, and the derived values the
    oracle needs computed here from docs/model-and-ops.md: `yarn` (2.1), `softmax_scale` (2.1) and
    `is_moe_layer` (2.3). Build it with `ref_config(path or dict)`; a ModelConfig is not accepted."""

    # defaults for optional fields, from docs/model-and-ops.md 1
    DEFAULTS = {"routed_scaling_factor": 1.0, "norm_topk_prob": True, "n_shared_experts": 0}
    ROPE_DEFAULTS = {"factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096}

    def __init__(self, raw: Mapping):
        self.raw = dict(raw)
        rope = self.raw.get("rope_scaling") or self.raw.get("rope_parameters")  # newer transformers' name
        self.rope_scaling = None if not rope else SimpleNamespace(**{**self.ROPE_DEFAULTS, **rope})
        if "rope_theta" not in self.raw and rope and "rope_theta" in rope:
            self.raw["rope_theta"] = rope["rope_theta"]

    def __getattr__(self, name):
        raw = self.__dict__.get("raw", {})
        if name in raw:
            return raw[name]
        if name in self.DEFAULTS:
            return self.DEFAULTS[name]
        raise AttributeError(f"config.json has no field {name!r}")

    @property
    def yarn(self) -> bool:
        """YaRN in force: rope_scaling factor > 1 and max_position_embeddings > the original length."""
        rs = self.rope_scaling
        return rs is not None and rs.factor > 1 and self.max_position_embeddings > rs.original_max_position_embeddings

    @property
    def softmax_scale(self) -> float:
        """(qk_nope_head_dim + qk_rope_head_dim)^-0.5 * m^2, m = 0.1 * mscale_all_dim * ln(factor) + 1 with YaRN."""
        scale = (self.qk_nope_head_dim + self.qk_rope_head_dim) ** -0.5
        if self.yarn:
            m = 0.1 * self.rope_scaling.mscale_all_dim * math.log(self.rope_scaling.factor) + 1.0
            scale *= m * m
        return scale

    def is_moe_layer(self, layer: int) -> bool:
        """Layers 0 .. first_k_dense_replace - 1 use the dense FFN, the rest the MoE."""
        return layer >= self.first_k_dense_replace


def ref_config(config) -> RefConfig:
    """A RefConfig from a config.json path, a plain dict (json.load of one) or a RefConfig."""
    if isinstance(config, RefConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            return RefConfig(json.load(f))
    if isinstance(config, Mapping):
        return RefConfig(config)
    raise TypeError(f"the oracle reads config.json itself: pass its path or json.load dict, "
                    f"not {type(config).__name__}")


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------
def dequant_block(w: Tensor, scale_inv: Tensor, block: int = 128) -> Tensor:
    """fp8 [N, K] with fp32 scales [ceil(N/128), ceil(K/128)] -> float64 [N, K] (edge blocks partial)."""
    n, k = w.shape
    s = scale_inv.to(F64).repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return w.to(F64) * s


class Weights(dict):
    """HF-named tensors plus how fp8-stored linears treat their input: with `act_quant` set (True =
    ue8m0 scales, False = plain amax/448 scales), the input of every linear whose weight is stored in fp8
    is first quantised in 1x128 blocks along K (what the fp8 GEMMs compute, docs/model-and-ops.md 3)."""

    act_quant: Optional[bool] = None


def layer_weights(weights: Mapping[str, Tensor], layer: int) -> Weights:
    """The tensors of `model.layers.{layer}.` with that prefix stripped."""
    prefix = f"model.layers.{layer}."
    out = Weights({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    out.act_quant = getattr(weights, "act_quant", None)
    return out


def get(weights: Mapping[str, Tensor], name: str) -> Tensor:
    """A parameter in float64; `name` is the full key (e.g. 'mlp.gate_proj.weight'). fp8 tensors are
    dequantised with their `<module>.weight_scale_inv` sibling."""
    t = weights[name]
    if t.dtype in _FP8_TYPES:
        if not name.endswith(".weight"):
            raise KeyError(f"fp8 tensor {name} is not a .weight")
        return dequant_block(t, weights[name[: -len("weight")] + "weight_scale_inv"])
    return t.to(F64)


def linear(weights: Mapping[str, Tensor], module: str, x: Tensor) -> Tensor:
    ue8m0 = getattr(weights, "act_quant", None)
    if ue8m0 is not None and weights[module + ".weight"].dtype in _FP8_TYPES:
        x = act_quant_simulate(x, ue8m0)
    return x @ get(weights, module + ".weight").T


def act_quant_simulate(x: Tensor, ue8m0: bool, block: int = 128) -> Tensor:
    """x [..., K] -> its fp8 1 x `block` quantised-and-dequantised value (last block may be partial)."""
    K = x.shape[-1]
    pad = (-K) % block
    xp = torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, block)
    q, s = fp8_simulate(xp, ue8m0)  # zero padding does not change a block's amax
    return (q * s[..., None]).reshape(*x.shape[:-1], K + pad)[..., :K]


# ----------------------------------------------------------------------------------------------
# small pieces
# ----------------------------------------------------------------------------------------------
def rmsnorm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def layernorm(x: Tensor, w: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * w + b


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def yarn_correction_range(config) -> tuple[int, int]:
    """(low, high) dims of the YaRN ramp (docs/model-and-ops.md 2.1: 10 and 23 for the 671B config)."""
    config = ref_config(config)
    rs = config.rope_scaling
    dim = config.qk_rope_head_dim
    base = config.rope_theta

    def corr(rot: float) -> float:
        return dim * math.log(rs.original_max_position_embeddings / (rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr(rs.beta_fast)), 0)
    high = min(math.ceil(corr(rs.beta_slow)), dim - 1)
    return low, high


def rope_frequencies(config, yarn: bool = True) -> Tensor:
    """[qk_rope_head_dim / 2] float64 angular frequencies (radians per position)."""
    config = ref_config(config)
    dim = config.qk_rope_head_dim
    i = torch.arange(dim // 2, dtype=F64)
    f = config.rope_theta ** (-2.0 * i / dim)
    rs = config.rope_scaling
    if (
        yarn
        and rs is not None
        and rs.factor > 1
        and config.max_position_embeddings > rs.original_max_position_embeddings
    ):
        low, high = yarn_correction_range(config)
        if low == high:
            high = high + 0.001
        ramp = ((i - low) / (high - low)).clamp(0, 1)
        f = f / rs.factor * ramp + f * (1 - ramp)
    return f


def rope_interleaved(x: Tensor, positions: Tensor, freqs: Tensor) -> Tensor:
    """x [T, ..., R]: pairs (2i, 2i+1) rotated by angle positions[t] * freqs[i]."""
    ang = positions.to(F64)[:, None] * freqs[None, :]  # [T, R/2]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (ang.shape[1],)
    cos, sin = ang.cos().reshape(shape), ang.sin().reshape(shape)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2)


def rope_rotate_half(x: Tensor, positions: Tensor, freqs: Tensor) -> Tensor:
    """x [T, ..., R]: dim i pairs with dim i + R/2 (NeoX style), angle positions[t] * freqs[i]."""
    ang = positions.to(F64)[:, None] * freqs[None, :]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (ang.shape[1],)
    cos, sin = ang.cos().reshape(shape), ang.sin().reshape(shape)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


_ROPES = {"interleaved": rope_interleaved, "rotate_half": rope_rotate_half}


def hadamard(n: int) -> Tensor:
    """Sylvester Hadamard matrix of order n (a power of two), scaled to be orthonormal."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def fp8_simulate(x: Tensor, ue8m0: bool = True) -> tuple[Tensor, Tensor]:
    """Quantise each last-dim vector of x to float8_e4m3fn with one scale; return (fp8 values as
    float64, scale [...] float64) so that x ~= values * scale[..., None]."""
    amax = x.abs().amax(-1).clamp_min(AMAX_FLOOR)
    s = amax / FP8_MAX
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    q = (x / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(F64)
    return q, s


def kv_cache_round(latent: Tensor, kv_lora_rank: int, kv_cache_dtype: Optional[str]) -> Tensor:
    """Simulate storing [c_kv ; k_pe] rows [S, d_v + r] in the latent cache.

    None / "fp32": exact. "bf16": every value rounded to bf16. "fp8": c_kv in 128-value groups as
    float8_e4m3fn with a power-of-two scale (amax floor 1e-4), k_pe rounded to bf16."""
    if kv_cache_dtype in (None, "fp32", "float32"):
        return latent
    if kv_cache_dtype in ("bf16", "bfloat16"):
        return latent.to(torch.bfloat16).to(F64)
    if kv_cache_dtype == "fp8":
        c, pe = latent[:, :kv_lora_rank], latent[:, kv_lora_rank:]
        groups = c.reshape(c.shape[0], -1, 128)
        q, s = fp8_simulate(groups, ue8m0=True)
        c = (q * s[..., None]).reshape(c.shape)
        return torch.cat([c, pe.to(torch.bfloat16).to(F64)], dim=-1)
    raise ValueError(f"unknown kv_cache_dtype {kv_cache_dtype!r}")


NOISE = 1e-5  # fp32 noise of the model's latent, relative to the largest |value| of its row (or fp8 group)


def _check_rounded(stored: Tensor, nearest: Tensor, exact: Tensor, what: str) -> None:
    """stored [T, n] == nearest (exact rounded by the oracle), except where a value within the fp32 noise of
    exact would round to stored: a rounding-boundary flip (fp32 vs fp64), never more than that noise off."""
    noise = NOISE * exact.abs().amax(-1, keepdim=True)
    bad = (stored != nearest) & ((stored - exact).abs() > (nearest - exact).abs() + 2 * noise)
    if bool(bad.any()):
        t, i = [int(v) for v in bad.nonzero()[0][:2]]
        raise AssertionError(f"latent cache {what}: {int(bad.sum())} stored values are not the reference's latent "
                             f"rounded (first at token {t}, dim {i}: stored {float(stored[t, i])}, "
                             f"reference {float(exact[t, i])} -> {float(nearest[t, i])})")


def _bf16_nearest(x: Tensor) -> Tensor:
    return x.to(torch.float32).to(torch.bfloat16).to(F64)  # |x| << fp32 range: rounding twice is exact here


def stored_latent(stored: Tensor, exact: Tensor, kv_lora_rank: int) -> Tensor:
    """The latent the model stored (rows [T, P]: packed fp8 uint8, or bf16 / fp32 values) as float64
    [T, c + r], after checking it against this reference's own latent `exact` [T, c + r] rounded by the
    oracle (fp8: its own e4m3 rounding with a power-of-two scale per 128 values, rope in bf16).

    Comparing the model with the reference on the SAME stored cache means a value sitting on an fp8
    rounding boundary (where fp32 and fp64 may round differently) cannot decide the verdict."""
    c = kv_lora_rank
    if stored.dtype != torch.uint8:
        values = stored.to(F64).reshape(exact.shape)
        if stored.dtype == torch.bfloat16:
            _check_rounded(values, _bf16_nearest(exact), exact, "bf16")
        return values
    codes, scales, rope = unpack_parts(stored.reshape(exact.shape[0], -1), c)  # [T, G, 128], [T, G], [T, r]
    groups = exact[:, :c].reshape(codes.shape)
    amax = groups.abs().amax(-1).clamp_min(AMAX_FLOOR)
    own_scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
    on_edge = (torch.log2(amax / FP8_MAX) - torch.round(torch.log2(amax / FP8_MAX))).abs() < 1e-5
    if bool(((scales != own_scale) & ~on_edge).any()):
        raise AssertionError("latent cache fp8: a stored group scale is not the power of two of amax / 448")
    # round with the stored scale (equal to the oracle's, or a legal flip at a power-of-two amax)
    q = (groups / scales.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX)
    nearest = DECODE_TABLE[round_to_e4m3(q).view(torch.uint8).long()]
    T = exact.shape[0]
    G = codes.shape[1]
    _check_rounded(codes.reshape(T * G, -1), nearest.reshape(T * G, -1), q.reshape(T * G, -1), "fp8")
    _check_rounded(rope, _bf16_nearest(exact[:, c:]), exact[:, c:], "rope bf16")
    return torch.cat([(codes * scales.unsqueeze(-1)).reshape(T, c), rope], dim=-1)


# ----------------------------------------------------------------------------------------------
# the lightning indexer
# ----------------------------------------------------------------------------------------------
def reference_indexer_scores(
    config,
    lw: Mapping[str, Tensor],
    x: Tensor,
    qr: Tensor,
    positions: Optional[Tensor] = None,
    *,
    fp8: bool = True,
    ue8m0: bool = True,
    rope: str = "rotate_half",
    yarn: bool = True,
) -> Tensor:
    """Index scores [T, T] float64 of one sequence: score[t, s] for key s visible to query t, -inf
    for s > t. `x` [T, D] is the normed block input, `qr` [T, q_lora_rank] the normed q latent."""
    config = ref_config(config)
    T = x.shape[0]
    pos = torch.arange(T) if positions is None else positions
    H, D, R = config.index_n_heads, config.index_head_dim, config.qk_rope_head_dim
    freqs = rope_frequencies(config, yarn)
    rot = _ROPES[rope]
    q = linear(lw, "self_attn.indexer.wq_b", qr).reshape(T, H, D)
    k = linear(lw, "self_attn.indexer.wk", x)  # [T, D]
    k = layernorm(k, get(lw, "self_attn.indexer.k_norm.weight"), get(lw, "self_attn.indexer.k_norm.bias"))
    q = torch.cat([rot(q[..., :R], pos, freqs), q[..., R:]], dim=-1)  # rope part FIRST
    k = torch.cat([rot(k[..., :R], pos, freqs), k[..., R:]], dim=-1)
    hd = hadamard(D)
    q, k = q @ hd, k @ hd
    w = linear(lw, "self_attn.indexer.weights_proj", x) * H**-0.5 * D**-0.5  # [T, H]
    if fp8:
        q, q_s = fp8_simulate(q, ue8m0)  # [T, H, D], [T, H]
        k, k_s = fp8_simulate(k, ue8m0)  # [T, D], [T]
        w = w * q_s
    else:
        k_s = torch.ones(T, dtype=F64)
    dots = torch.einsum("thd,sd->tsh", q, k).clamp_min(0)  # ReLU
    scores = (dots * w[:, None, :]).sum(-1) * k_s[None, :]
    future = torch.arange(T)[None, :] > torch.arange(T)[:, None]
    return scores.masked_fill(future, float("-inf"))


def topk_mask(scores: Tensor, topk: int) -> Tensor:
    """[T, S] bool: the min(topk, #visible) best visible keys per query; ties -> lower position."""
    T, S = scores.shape
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    visible = torch.isfinite(scores).sum(-1)  # [T]
    keep = torch.arange(S)[None, :] < torch.clamp(visible, max=topk)[:, None]
    mask = torch.zeros(T, S, dtype=torch.bool)
    mask.scatter_(1, order, keep)
    return mask


def selection_to_mask(sel, T: int) -> Tensor:
    """A [T, T] bool mask from a mask, or from indices [T, k] (positions in the sequence, -1 = pad)."""
    sel = torch.as_tensor(sel)
    if sel.dtype == torch.bool:
        return sel.clone()
    mask = torch.zeros(T, T + 1, dtype=torch.bool)
    idx = sel.long().clone()
    idx[idx < 0] = T  # padding goes to a spare column
    mask.scatter_(1, idx, True)
    return mask[:, :T]


def topk_equivalent(scores: Tensor, mask_a: Tensor, mask_b: Tensor, atol: float, rtol: float = 0.0) -> list[str]:
    """Tie-aware comparison of two selections over the same reference scores [T, S] (docs/model-and-ops.md 7: compare as
    sets; where they differ, the swapped elements' scores must be equal within tolerance). Returns a
    list of problems (empty = equivalent)."""
    problems = []
    for t in range(scores.shape[0]):
        a, b = mask_a[t], mask_b[t]
        if a.sum() != b.sum():
            problems.append(f"query {t}: {int(a.sum())} vs {int(b.sum())} selected")
            continue
        only_a, only_b = a & ~b, b & ~a
        if not only_a.any():
            continue
        row = scores[t]
        if not (torch.isfinite(row[only_a]).all() and torch.isfinite(row[only_b]).all()):
            problems.append(f"query {t}: a non-visible position is selected")
            continue
        sa, sb = row[only_a], row[only_b]
        tol = atol + rtol * row[torch.isfinite(row)].abs().max()
        spread = torch.cat([sa, sb]).max() - torch.cat([sa, sb]).min()
        if spread > tol:
            problems.append(
                f"query {t}: positions {only_a.nonzero().flatten().tolist()} vs {only_b.nonzero().flatten().tolist()}"
                f" with scores {sa.tolist()} vs {sb.tolist()} (spread {float(spread):.3g} > tol {float(tol):.3g})"
            )
    return problems


# ----------------------------------------------------------------------------------------------
# MLA (naive form)
# ----------------------------------------------------------------------------------------------
def reference_mla(
    config,
    lw: Mapping[str, Tensor],
    x: Tensor,
    positions: Tensor,
    mask: Tensor,
    *,
    rope: str = "interleaved",
    yarn: bool = True,
    kv_cache_dtype: Optional[str] = None,
    cache_latent: Optional[Tensor] = None,
    return_qr: bool = False,
):
    """x [T, D] normed input; mask [T, T] bool (True = attend). Returns out [T, D] (and qr).

    cache_latent: the rows [T, P] the model stored in its latent cache for these tokens (packed fp8 uint8
    or float), read by the oracle's own decoder and used INSTEAD of this reference's own rounding, after
    checking that each stored value is this reference's latent correctly rounded (`stored_latent`)."""
    config = ref_config(config)
    T = x.shape[0]
    H, dn, dr, dv = config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
    c = config.kv_lora_rank
    eps = config.rms_norm_eps
    freqs = rope_frequencies(config, yarn)
    rot = _ROPES[rope]
    qr = rmsnorm(linear(lw, "self_attn.q_a_proj", x), get(lw, "self_attn.q_a_layernorm.weight"), eps)
    q = linear(lw, "self_attn.q_b_proj", qr).reshape(T, H, dn + dr)
    q_nope, q_pe = q[..., :dn], rot(q[..., dn:], positions, freqs)
    kv = linear(lw, "self_attn.kv_a_proj_with_mqa", x)  # [T, c + dr]
    c_kv = rmsnorm(kv[:, :c], get(lw, "self_attn.kv_a_layernorm.weight"), eps)
    k_pe = rot(kv[:, c:], positions, freqs)  # one shared rope head
    exact = torch.cat([c_kv, k_pe], dim=-1)
    if cache_latent is None:
        latent = kv_cache_round(exact, c, kv_cache_dtype)
    else:
        latent = stored_latent(cache_latent, exact, c)
    c_kv, k_pe = latent[:, :c], latent[:, c:]
    # kv_b_proj is applied as a dequantised weight (absorbed form: q_nope @ W_UK, out_lat @ W_UV^T), so
    # its input is never activation-quantised, even with act_quant.
    wkv = get(lw, "self_attn.kv_b_proj.weight").reshape(H, dn + dv, c)
    k_nope = torch.einsum("sc,hdc->shd", c_kv, wkv[:, :dn])  # W_UK c_kv
    v = torch.einsum("sc,hdc->shd", c_kv, wkv[:, dn:])  # W_UV c_kv
    logits = torch.einsum("thd,shd->hts", q_nope, k_nope) + torch.einsum("thd,sd->hts", q_pe, k_pe)
    logits = logits * config.softmax_scale
    logits = logits.masked_fill(~mask[None], float("-inf"))
    p = torch.softmax(logits, dim=-1)
    o = torch.einsum("hts,shd->thd", p, v).reshape(T, H * dv)
    out = linear(lw, "self_attn.o_proj", o)
    return (out, qr) if return_qr else out


# ----------------------------------------------------------------------------------------------
# FFN / MoE
# ----------------------------------------------------------------------------------------------
def swiglu(lw: Mapping[str, Tensor], prefix: str, x: Tensor, bf16_out: bool = False) -> Tensor:
    def lin(name: str, v: Tensor) -> Tensor:
        y = linear(lw, f"{prefix}.{name}", v)
        fp8 = lw[f"{prefix}.{name}.weight"].dtype in _FP8_TYPES
        return y.to(torch.bfloat16).to(F64) if bf16_out and fp8 else y

    return lin("down_proj", silu(lin("gate_proj", x)) * lin("up_proj", x))


def reference_router(config, lw: Mapping[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """noaux_tc routing (docs/model-and-ops.md 2.3) of x [T, D] -> (expert ids [T, k] int64, weights [T, k] float64),
    experts in descending order of their biased score (ties -> lower expert id)."""
    config = ref_config(config)
    E, G, TG, K = config.n_routed_experts, config.n_group, config.topk_group, config.num_experts_per_tok
    s = torch.sigmoid(x.to(F64) @ get(lw, "mlp.gate.weight").T)  # [T, E]
    b = s + get(lw, "mlp.gate.e_score_correction_bias")[None, :]
    T = x.shape[0]
    grouped = b.reshape(T, G, E // G)
    group_score = torch.sort(grouped, dim=-1, descending=True).values[..., :2].sum(-1)  # [T, G]
    gorder = torch.sort(group_score, dim=-1, descending=True, stable=True).indices[:, :TG]
    gkeep = torch.zeros(T, G, dtype=torch.bool).scatter_(1, gorder, True)
    b = b.masked_fill(~gkeep.repeat_interleave(E // G, dim=1), float("-inf"))
    ids = torch.sort(b, dim=-1, descending=True, stable=True).indices[:, :K]
    w = s.gather(1, ids)
    if config.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    return ids, w * config.routed_scaling_factor


def reference_moe(config, lw: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Routed experts (a plain loop over the chosen experts) + shared expert. With `lw.act_quant` set,
    the fp8 routed experts' GEMM outputs are rounded to bf16 (the HAL `grouped_gemm` contract: fp8
    inputs give a bf16 result, as DeepGEMM's grouped GEMMs do); the shared expert is a plain linear."""
    config = ref_config(config)
    ids, w = reference_router(config, lw, x)
    out = torch.zeros_like(x)
    bf16_out = getattr(lw, "act_quant", None) is not None
    for e in ids.unique().tolist():
        rows, slot = (ids == e).nonzero(as_tuple=True)
        out[rows] += w[rows, slot, None] * swiglu(lw, f"mlp.experts.{e}", x[rows], bf16_out=bf16_out)
    if config.n_shared_experts:
        out = out + swiglu(lw, "mlp.shared_experts", x)
    return out


# ----------------------------------------------------------------------------------------------
# the whole model
# ----------------------------------------------------------------------------------------------
def reference_logits(
    config,
    weights: Mapping[str, Tensor],
    input_ids,
    *,
    sparse: bool = True,
    indexer_fp8: bool = True,
    indexer_ue8m0: bool = True,
    indexer_rope: str = "rotate_half",
    mla_rope: str = "interleaved",
    yarn: bool = True,
    kv_cache_dtype: Optional[str] = None,
    act_quant: Optional[bool] = None,
    selections: Optional[Sequence] = None,
    cache_latents: Optional[Sequence[Tensor]] = None,
    return_aux: bool = False,
):
    """Logits [T, vocab] float64 of one sequence `input_ids` [T] (positions 0..T-1).

    sparse=False: plain causal attention (the indexer is not evaluated unless return_aux).
    selections: per layer, a [T, T] bool mask or [T, k] indices (-1 padded) to use INSTEAD of this
    reference's own top-k (e.g. the model's choice, for a tie-aware comparison); the reference's own
    scores are still computed and returned in aux.
    act_quant: None = fp8-stored weights are dequantised and applied to exact inputs; True / False =
    also simulate the fp8 GEMMs' 1x128 activation quantisation (ue8m0 / plain scales), see `Weights`,
    and the bf16 output of the fp8 routed-expert GEMMs (`reference_moe`).
    cache_latents: per layer, the latent-cache rows [T, P] the model stored for this sequence (e.g. its
    packed fp8 tokens); the reference checks and uses them instead of rounding its own (`stored_latent`).
    return_aux: also return {"scores": [L x [T, T]], "masks": [L x [T, T] bool used],
    "own_masks": [L x own top-k mask]}.
    """
    config = ref_config(config)
    weights = Weights(weights)
    weights.act_quant = act_quant
    ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    T = ids.numel()
    pos = torch.arange(T)
    eps = config.rms_norm_eps
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    h = weights["model.embed_tokens.weight"].to(F64)[ids]
    aux = {"scores": [], "masks": [], "own_masks": []}
    for layer in range(config.num_hidden_layers):
        lw = layer_weights(weights, layer)
        x = rmsnorm(h, get(lw, "input_layernorm.weight"), eps)
        mask = causal
        if sparse or return_aux:
            qr = rmsnorm(linear(lw, "self_attn.q_a_proj", x), get(lw, "self_attn.q_a_layernorm.weight"), eps)
            scores = reference_indexer_scores(
                config, lw, x, qr, pos, fp8=indexer_fp8, ue8m0=indexer_ue8m0, rope=indexer_rope, yarn=yarn
            )
            own = topk_mask(scores, config.index_topk)
            if sparse:
                mask = own if selections is None else selection_to_mask(selections[layer], T)
            aux["scores"].append(scores)
            aux["own_masks"].append(own)
        aux["masks"].append(mask)
        stored = None if cache_latents is None else cache_latents[layer]
        h = h + reference_mla(config, lw, x, pos, mask, rope=mla_rope, yarn=yarn, kv_cache_dtype=kv_cache_dtype,
                              cache_latent=stored)
        x = rmsnorm(h, get(lw, "post_attention_layernorm.weight"), eps)
        if config.is_moe_layer(layer):
            h = h + reference_moe(config, lw, x)
        else:
            h = h + swiglu(lw, "mlp", x)
    h = rmsnorm(h, get(weights, "model.norm.weight"), eps)
    logits = h @ get(weights, "lm_head.weight").T
    return (logits, aux) if return_aux else logits


def cosine_diff(a: Tensor, b: Tensor) -> float:
    """docs/model-and-ops.md 7 global difference 1 - 2<a,b> / (|a|^2 + |b|^2) in float64."""
    a, b = a.to(F64).flatten(), b.to(F64).flatten()
    denom = (a * a).sum() + (b * b).sum()
    return float(1 - 2 * (a * b).sum() / denom) if denom > 0 else 0.0
