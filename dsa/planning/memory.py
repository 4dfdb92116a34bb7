"""The memory model: what one rank holds for a layout (weights, workspace, KV + index cache), and whether
`batch` sequences of `context` tokens fit.

Per rank:  free = device - weights - workspace,  workspace = activations(batch, context) + overhead
(`activation_terms`; overhead = RESERVE_FRACTION of the device, at least RESERVE_MIN_GB), and the KV +
index cache gets the rest: tokens per DP group = free / ((latent + index bytes) x layers), in whole pages.
`estimate_memory` returns a MemoryEstimate with the numbers and a verdict (what to change when it does not fit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from dsa.model.config import ModelConfig
from dsa.planning.device_profile import DeviceProfile, LayoutSpec
from dsa.planning.parameters import DTYPE_BYTES, GiB, cache_bytes_per_token_layer, weights_per_rank

# Workspace = activations of one forward step (activation_terms) + a fixed overhead kept free on every
# device for the CUDA/HIP/NPU context, collective buffers, graphs and allocator fragmentation:
# RESERVE_FRACTION of the device memory, at least RESERVE_MIN_GB.
RESERVE_FRACTION = 0.05
RESERVE_MIN_GB = 1.0
PREFILL_CHUNK = 4096  # prompt tokens per forward step per DP-attention group (longer prompts are chunked)
MOE_SLACK = 2  # MoE buffers hold twice the balanced share of routed tokens (routing is never even)


@dataclass(frozen=True)
class MemoryEstimate:
    """Per device, in bytes unless named *_gb."""

    device_bytes: int  # usable by one rank (device memory / ranks sharing the device)
    weight_bytes: int  # this rank's shard of the weights
    weight_bytes_by_group: dict[str, int]
    weight_bytes_by_dtype: dict[str, int]  # fp8 / int8, "fp32 scales", the compute dtype, fp32 (norms, biases)
    weight_bytes_total: int  # the whole model, unsharded
    reserve_bytes: int  # the fixed part of the workspace (context, collective buffers, fragmentation)
    activation_bytes: int  # the activation part of the workspace (sum of activation_terms)
    activation_terms: dict[str, int]
    step_tokens: int  # tokens of one forward step per DP group the activations are sized for
    latent_bytes_per_token_layer: int
    index_bytes_per_token_layer: int
    cache_layers: int
    free_bytes: int  # left for the KV + index cache (may be negative)
    tokens_per_group: int  # cache capacity of one DP-attention group (every rank of it holds it all)
    tokens_total: int  # over all dp_attention groups
    context: int  # tokens per sequence asked for
    batch: int  # sequences per DP group asked for
    tokens_needed: int  # batch x context, each sequence rounded up to whole pages
    fits: bool
    verdict: str
    int8_weight_bytes: Optional[int] = None  # devices without fp8: this rank's weights as int8 W8A8

    @property
    def cache_bytes_per_token(self) -> int:
        return (self.latent_bytes_per_token_layer + self.index_bytes_per_token_layer) * self.cache_layers

    @property
    def after_weights_bytes(self) -> int:
        return self.device_bytes - self.weight_bytes

    @property
    def workspace_bytes(self) -> int:
        return self.reserve_bytes + self.activation_bytes

    @property
    def sequences_per_group(self) -> int:
        """How many sequences of `context` tokens the cache of one DP group holds."""
        per_seq = self.tokens_needed // self.batch
        return self.tokens_per_group // per_seq if per_seq else 0


def activation_terms(config: ModelConfig, layout: LayoutSpec, dtype: str, context: int, batch: int
                     ) -> tuple[dict[str, int], int]:
    """Peak activation bytes of one forward step on one rank, by term, and the step's tokens T per DP group.

    T = min(max(batch, PREFILL_CHUNK), batch * context): a decode step has `batch` tokens, a prefill step
    at most PREFILL_CHUNK. Layers run one at a time, so one layer's temporaries count (all summed, an
    upper bound), with e = bytes of the compute dtype, h = heads per rank (H / tp):
      hidden        T * 3 * D * e                       residual, normed input, block output
      attention     T * h * (192 + 576 + 512 + 128) * e q, absorbed q, latent output, per-head output
      indexer       T * (64 * (128 + 8) + 2048 * 4)     fp8 index q + scales + head weights, top-k int32
      index scores  T * context * 4                     fp32 indexer logits against the whole context
      ffn           max(dense FFN T * 3 * I_dense / tp * e,
                        MoE MOE_SLACK * T * k / tp * (2 D + 3 I) * e + shared T * 3 * I_shared / tp * e)
                    (routed tokens: the T * dp tokens of all groups, k experts each, spread over the world)
      logits        batch * V / tp * 4                  fp32, last position of each sequence
    """
    c, e = config, DTYPE_BYTES[dtype]
    tp = layout.tp
    T = min(max(batch, PREFILL_CHUNK), batch * context)
    heads = c.num_attention_heads // tp
    dense = T * 3 * math.ceil(c.intermediate_size / tp) * e if c.first_k_dense_replace else 0
    moe = 0
    if c.first_k_dense_replace < c.num_hidden_layers and c.n_routed_experts:
        routed = math.ceil(MOE_SLACK * T * c.num_experts_per_tok / tp)
        moe = routed * (2 * c.hidden_size + 3 * c.moe_intermediate_size) * e
        moe += T * 3 * math.ceil(c.n_shared_experts * c.moe_intermediate_size / tp) * e
    terms = {
        "index scores": T * context * 4,
        "ffn": max(dense, moe),
        "attention": T * heads * (c.qk_head_dim + c.latent_dim + c.kv_lora_rank + c.v_head_dim) * e,
        "hidden": T * 3 * c.hidden_size * e,
        "indexer": T * (c.index_n_heads * (c.index_head_dim + 8) + min(c.index_topk, context) * 4),
        "logits": batch * math.ceil(c.vocab_size / tp) * 4,
    }
    return terms, T


def estimate_memory(profile: DeviceProfile, config: ModelConfig, layout: LayoutSpec, weights: str, dtype: str,
                    kv_cache_dtype: str, page_size: int, memory_gb: float, context: Optional[int] = None,
                    batch: Optional[int] = None) -> MemoryEstimate:
    context = context or config.max_position_embeddings
    batch = batch or 1
    ranks_per_device = max(1, math.ceil((layout.world_size // layout.nodes) / profile.devices_per_node))
    device = int(memory_gb * GiB / ranks_per_device)
    weight_bytes, by_group, by_dtype, total = weights_per_rank(config, layout, weights, dtype)
    reserve = max(int(RESERVE_FRACTION * device), int(RESERVE_MIN_GB * GiB))
    terms, step = activation_terms(config, layout, dtype, context, batch)
    act = sum(terms.values())
    latent, index = cache_bytes_per_token_layer(config, kv_cache_dtype)
    layers = config.num_hidden_layers
    per_token = (latent + index) * layers
    free = device - weight_bytes - reserve - act
    tokens = max(free, 0) // per_token // page_size * page_size
    need = batch * _pages(context, page_size)
    int8 = None
    if profile.fp8_format == "none" and weights not in ("fp8", "int8") and config.fp8_weights:
        int8 = weights_per_rank(config, layout, "int8", dtype)[0]
    if free <= 0:
        fits = False
        verdict = (f"weights {weight_bytes / GiB:.1f} GiB + workspace {(reserve + act) / GiB:.1f} GiB per rank is "
                   f"{-free / GiB:.1f} GiB more than the {device / GiB:.1f} GiB available. "
                   f"Use {_remedies(profile, weights)}")
    elif tokens < need:
        fits = False
        verdict = (f"the cache holds {tokens:,} tokens per DP group but {batch} x {context:,} needs {need:,}. "
                   f"Use {_remedies(profile, weights, kv_cache_dtype, cache_short=True)}")
    else:
        fits = True
        seqs = tokens // (need // batch)
        verdict = (f"{free / GiB:.1f} GiB per rank left for the cache = {tokens:,} tokens per DP group: "
                   f"{batch} x {context:,} fits ({sequences_text(seqs, context)} per group, "
                   f"{seqs * layout.dp_attention:,} in all)")
        if tokens < 2 * need:
            verdict += " - tight: less than twice what was asked for"
    if int8 is not None:
        int8_free = device - int8 - reserve - act
        int8_fits = int8_free > 0 and int8_free // per_token >= need
        verdict += (f". No fp8 on {profile.arch}: the fp8 checkpoint is dequantised to {weights}; int8 W8A8 "
                    f"weights (~{int8 / GiB:.1f} GiB per rank) would "
                    f"{'fit this layout' if int8_fits else 'not fit this layout either'}, "
                    f"but this runtime does not load W8A8 yet")
    return MemoryEstimate(
        device_bytes=device, weight_bytes=weight_bytes, weight_bytes_by_group=by_group, weight_bytes_by_dtype=by_dtype,
        weight_bytes_total=total, reserve_bytes=reserve, activation_bytes=act, activation_terms=terms,
        step_tokens=step, latent_bytes_per_token_layer=latent, index_bytes_per_token_layer=index,
        cache_layers=layers, free_bytes=free, tokens_per_group=tokens, tokens_total=tokens * layout.dp_attention,
        context=context, batch=batch, tokens_needed=need, fits=fits, verdict=verdict, int8_weight_bytes=int8,
    )


def _remedies(profile: DeviceProfile, weights: str, kv_cache_dtype: str = "fp8", cache_short: bool = False) -> str:
    fixes = ["more devices (--nodes, a larger ep / tp)"]
    if weights != "fp8" and profile.fp8_format != "none":
        fixes.append("fp8 weights")
    if cache_short:
        fixes.insert(0, "a smaller --batch / --context")
        if kv_cache_dtype != "fp8" and profile.fp8_format != "none":
            fixes.append("an fp8 KV cache")
    fixes.append("a device with more memory")
    return ", ".join(fixes[:-1]) + " or " + fixes[-1]


def sequences_text(n: int, context: int) -> str:
    return f"{n:,} sequence{'' if n == 1 else 's'} of {context:,}"


def _pages(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size) * page_size


__all__ = ["MemoryEstimate", "activation_terms", "estimate_memory", "sequences_text", "RESERVE_FRACTION",
           "RESERVE_MIN_GB", "PREFILL_CHUNK", "MOE_SLACK"]
