"""Parameter accounting: every weight tensor of a config, grouped with its sharding, and what it costs.

    groups = weight_groups(config)            # TensorGroup per tensor kind (MTP layer excluded)
    count_parameters(config)                  # parameters per group
    weights_per_rank(config, layout, "fp8", "bf16")  # bytes on one rank, by group and by dtype, whole model
    cache_bytes_per_token_layer(config, "fp8")       # KV latent + index key bytes of one token, one layer

No weights are read: sizes come from the config's shapes. Anything that needs per-group sizes of a
config (the memory model, `dsa plan`, the benches) uses this.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from dsa.errors import DsaError
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import LayoutSpec

GiB = 1 << 30
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
BLOCK = 128  # fp8 weight block (weight_scale_inv is one fp32 per 128 x 128 block)


@dataclass(frozen=True)
class TensorGroup:
    """`copies` tensors of `shape`, stored as `kind`, split over the `shard` dimension of the layout.

    kind: "linear" = a Linear weight (fp8 + 128x128 fp32 block scales in an fp8 checkpoint, else the
    compute dtype); "dense" = always the compute dtype (bf16 in the checkpoint); "fp32" = norms/biases.
    shard: "tp" | "ep" | "replicated".
    """

    group: str
    name: str
    shape: tuple[int, ...]
    kind: str
    shard: str
    copies: int = 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape) * self.copies

    def bytes_by_dtype(self, weights: str, dtype: str = "bf16") -> dict[str, int]:
        """Bytes of all copies (unsharded), by storage dtype: {"fp8": .., "fp32 scales": ..} for an fp8 linear
        (one fp32 per 128x128 block), {"int8": .., "fp32 scales": ..} for an int8 W8A8 linear (one fp32 per
        output channel), {dtype: ..} for a linear in the compute dtype or a "dense" tensor, {"fp32": ..} for norms."""
        if self.kind == "fp32":
            return {"fp32": 4 * self.numel}
        if self.kind == "linear" and weights in ("fp8", "int8"):
            out, inp = self.shape
            scales = math.ceil(out / BLOCK) * math.ceil(inp / BLOCK) if weights == "fp8" else out
            return {weights: self.numel, "fp32 scales": 4 * scales * self.copies}
        return {dtype: DTYPE_BYTES[dtype] * self.numel}

    def nbytes(self, weights: str, dtype: str = "bf16") -> int:
        """Bytes of all copies (unsharded). weights: "fp8" keeps linears fp8 with block scales."""
        return sum(self.bytes_by_dtype(weights, dtype).values())


def weight_groups(config: ModelConfig) -> list[TensorGroup]:
    """Every weight tensor of the model (MTP layer excluded), grouped, with its sharding."""
    c = config
    L, dense, moe = c.num_hidden_layers, c.first_k_dense_replace, c.num_hidden_layers - c.first_k_dense_replace
    H, D = c.num_attention_heads, c.hidden_size
    g: list[TensorGroup] = [
        TensorGroup("embed", "embed_tokens", (c.vocab_size, D), "dense", "tp"),
        TensorGroup("lm_head", "lm_head", (c.vocab_size, D), "dense", "tp"),
        TensorGroup("norms", "norm", (D,), "fp32", "replicated"),
        TensorGroup("norms", "input/post_attention_layernorm", (D,), "fp32", "replicated", 2 * L),
        TensorGroup("norms", "q_a_layernorm", (c.q_lora_rank,), "fp32", "replicated", L),
        TensorGroup("norms", "kv_a_layernorm", (c.kv_lora_rank,), "fp32", "replicated", L),
        TensorGroup("attention", "q_a_proj", (c.q_lora_rank, D), "linear", "replicated", L),
        TensorGroup("attention", "kv_a_proj_with_mqa", (c.kv_lora_rank + c.qk_rope_head_dim, D), "linear",
                    "replicated", L),
        TensorGroup("attention", "q_b_proj", (H * c.qk_head_dim, c.q_lora_rank), "linear", "tp", L),
        TensorGroup("attention", "kv_b_proj", (H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank), "linear",
                    "tp", L),
        TensorGroup("attention", "o_proj", (D, H * c.v_head_dim), "linear", "tp", L),
        TensorGroup("indexer", "indexer.wq_b", (c.index_n_heads * c.index_head_dim, c.q_lora_rank), "linear",
                    "replicated", L),
        TensorGroup("indexer", "indexer.wk", (c.index_head_dim, D), "linear", "replicated", L),
        TensorGroup("indexer", "indexer.weights_proj", (c.index_n_heads, D), "dense", "replicated", L),
        TensorGroup("norms", "indexer.k_norm weight+bias", (c.index_head_dim,), "fp32", "replicated", 2 * L),
    ]
    if dense:
        g += [
            TensorGroup("dense_ffn", "mlp.gate_proj/up_proj", (c.intermediate_size, D), "linear", "tp", 2 * dense),
            TensorGroup("dense_ffn", "mlp.down_proj", (D, c.intermediate_size), "linear", "tp", dense),
        ]
    if moe:
        E, inter = c.n_routed_experts, c.moe_intermediate_size
        g += [
            TensorGroup("router", "mlp.gate", (E, D), "dense", "replicated", moe),
            TensorGroup("router", "mlp.gate.e_score_correction_bias", (E,), "fp32", "replicated", moe),
            TensorGroup("routed_experts", "experts.gate_proj/up_proj", (inter, D), "linear", "ep", 2 * moe * E),
            TensorGroup("routed_experts", "experts.down_proj", (D, inter), "linear", "ep", moe * E),
        ]
        if c.n_shared_experts:
            S = inter * c.n_shared_experts
            g += [
                TensorGroup("shared_experts", "shared_experts.gate_proj/up_proj", (S, D), "linear", "tp", 2 * moe),
                TensorGroup("shared_experts", "shared_experts.down_proj", (D, S), "linear", "tp", moe),
            ]
    return g


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters per group (embed, lm_head, norms, attention, indexer, dense_ffn, router, ...)."""
    out: dict[str, int] = {}
    for t in weight_groups(config):
        out[t.group] = out.get(t.group, 0) + t.numel
    return out


def cache_bytes_per_token_layer(config: ModelConfig, kv_cache_dtype: str) -> tuple[int, int]:
    """(latent bytes, index bytes) for one token of one layer: 1152 / 656 and 132 for 671B."""
    if kv_cache_dtype == "fp8":
        from dsa.hal import kv_format

        try:
            latent = kv_format.packed_bytes(config.kv_lora_rank, config.qk_rope_head_dim)
        except ValueError as err:
            raise DsaError(f"kv cache fp8: {err}; use kv cache bf16") from None
    else:
        latent = 2 * config.latent_dim
    return latent, config.index_head_dim + 4  # index key fp8 + one fp32 scale


_DTYPE_ORDER = ("fp8", "int8", "fp32 scales", "bf16", "fp16", "fp32")


def weights_per_rank(config: ModelConfig, layout: LayoutSpec, weights: str, dtype: str
                     ) -> tuple[int, dict[str, int], dict[str, int], int]:
    """(bytes on one rank, by group, by dtype, whole model) for weights "fp8" | "int8" | "bf16" | ... ."""
    factor = {"tp": layout.tp, "ep": layout.ep, "replicated": 1}
    by_group: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    total = 0
    for t in weight_groups(config):
        for kind, b in t.bytes_by_dtype(weights, dtype).items():
            share = math.ceil(b / factor[t.shard])
            total += b
            by_group[t.group] = by_group.get(t.group, 0) + share
            by_dtype[kind] = by_dtype.get(kind, 0) + share
    by_dtype = {k: by_dtype[k] for k in sorted(by_dtype, key=lambda k: _DTYPE_ORDER.index(k)
                                                if k in _DTYPE_ORDER else len(_DTYPE_ORDER))}
    return sum(by_group.values()), by_group, by_dtype, total


__all__ = ["GiB", "DTYPE_BYTES", "BLOCK", "TensorGroup", "weight_groups", "count_parameters",
           "cache_bytes_per_token_layer", "weights_per_rank"]
