"""The DeepSeek-V3.2 decoder: embedding, N pre-norm blocks (MLA + dense MLP or MoE), norm, lm_head.

Module names mirror the HF checkpoint (model.embed_tokens, model.layers.N.self_attn.*, ..., lm_head),
so `state_dict()` keys are HF names, except the routed experts, which are stacked per layer
(mlp.experts.gate_proj [E, I, D], ...); `load_hf_state_dict` maps the per-expert HF tensors onto them.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from torch import Tensor, nn

from dsa.errors import ConfigError
from dsa.model.attention import MLA
from dsa.model.cache import Batch, PagedCache
from dsa.model.config import ModelConfig
from dsa.model.layers import Linear, RMSNorm, RotaryEmbedding, uses_ue8m0
from dsa.model.moe import MLP, MoE

EXPERT_NAME = re.compile(
    r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.(weight|weight_scale_inv)$"
)
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.")
MAX_LISTED_PROBLEMS = 8


class Block(nn.Module):
    """h = h + attn(norm(h)); h = h + ffn(norm(h)). Residual in the model dtype, norms in fp32."""

    def __init__(self, config: ModelConfig, layer_id: int, ops, **kw):
        super().__init__()
        self.layer_id = layer_id
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLA(config, ops, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        kw.pop("indexer_fp8")
        if config.is_moe_layer(layer_id):
            self.mlp = MoE(config, ops, **kw)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size, ops, **kw)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, batch: Batch, cache: PagedCache) -> Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, self.layer_id, batch, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    """HF's `model.` prefix: embed_tokens, layers, norm (plus the rope table, not in the checkpoint)."""

    def __init__(self, config: ModelConfig, ops, **kw):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=kw["dtype"], _freeze=True)
        self.layers = nn.ModuleList(Block(config, i, ops, **kw) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)


class DeepseekV32(nn.Module):
    """The whole model. Every attention / indexer / fp8 GEMM op runs through `ops` (an OpSet)."""

    def __init__(
        self,
        config: ModelConfig,
        ops,
        dtype: torch.dtype = torch.bfloat16,
        kv_cache_dtype: str = "bf16",
        indexer_fp8: bool = True,
        fp8_weights: Optional[bool] = None,  # default: config.fp8_weights (quantization_config present)
    ):
        super().__init__()
        self.config, self.ops, self.dtype = config, ops, dtype
        self.kv_cache_dtype, self.indexer_fp8 = kv_cache_dtype, indexer_fp8
        self.fp8_weights = config.fp8_weights if fp8_weights is None else fp8_weights
        kw = dict(fp8=self.fp8_weights, ue8m0=uses_ue8m0(config), dtype=dtype, indexer_fp8=indexer_fp8)
        self.model = Backbone(config, ops, **kw)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, ops=ops, fp8=False, ue8m0=False, dtype=dtype)

    def forward(self, input_ids: Tensor, batch: Batch, cache: PagedCache, last_only: bool = False) -> Tensor:
        """input_ids [T] -> logits [T, vocab] fp32 ([B, vocab] with last_only); writes the new tokens to cache."""
        self._check(input_ids, batch, cache)
        h = self.model.embed_tokens(input_ids)  # [T, D]
        cos, sin = self.model.rotary_emb(batch.positions)  # [T, rope/2] each
        for layer in self.model.layers:
            h = layer(h, cos, sin, batch, cache)
        h = self.model.norm(h)
        if last_only:
            h = h[batch.query_start[1:] - 1]  # [B, D]
        return self.lm_head(h).float()

    def _check(self, input_ids: Tensor, batch: Batch, cache: PagedCache) -> None:
        if input_ids.dim() != 1 or input_ids.shape[0] != batch.positions.shape[0]:
            raise ValueError(f"input_ids must be [T] with T = {batch.positions.shape[0]} (the batch's new tokens), "
                             f"got {list(input_ids.shape)}")
        ours = (self.kv_cache_dtype, self.indexer_fp8, self.dtype, len(self.model.layers))
        theirs = (cache.kv_cache_dtype, cache.indexer_fp8, cache.dtype, len(cache.latent))
        if ours != theirs:
            raise ValueError(f"cache (kv_cache_dtype, indexer_fp8, dtype, layers) = {theirs} "
                             f"does not match the model's {ours}")
        if batch.page_size != cache.page_size:
            raise ValueError(f"batch built for page size {batch.page_size}, cache has {cache.page_size}")

    # ---- checkpoint ---------------------------------------------------------------------------------
    def hf_layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The HF tensor names this model loads, with the shape and dtype each must have."""
        layout = {}
        for name, t in self.state_dict(keep_vars=True).items():
            m = re.match(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)(_scale_inv)?$", name)
            if m is None:
                layout[name] = (tuple(t.shape), t.dtype)
                continue
            suffix = "weight_scale_inv" if m.group(3) else "weight"
            for e in range(t.shape[0]):
                layout[f"{m.group(1)}.{e}.{m.group(2)}.{suffix}"] = (tuple(t.shape[1:]), t.dtype)
        return layout

    def load_hf_state_dict(self, weights: dict[str, Tensor]) -> None:
        """Load HF-named tensors (docs/model-and-ops.md 3). Strict: a missing, unexpected, mis-shaped or mistyped tensor
        is a ConfigError naming it and what was expected. The MTP layers (stored after the last decoder layer) are
        skipped."""
        layout = self.hf_layout()
        weights = {k: v for k, v in weights.items() if not is_mtp_tensor(k, self.config)}
        problems = []
        for name, (shape, dtype) in layout.items():
            t = weights.get(name)
            if t is None:
                problems.append(f"missing tensor {name} (expected shape {list(shape)}, {dtype})")
            elif tuple(t.shape) != shape or t.dtype != dtype:
                problems.append(f"tensor {name} is {list(t.shape)} {t.dtype}, expected shape {list(shape)} {dtype}")
        problems += [f"unexpected tensor {name} {list(weights[name].shape)}" for name in weights if name not in layout]
        if problems:
            more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
            raise ConfigError(
                f"checkpoint does not fit this model ({self.dtype}, fp8 weights {self.fp8_weights}): "
                + "; ".join(problems[:MAX_LISTED_PROBLEMS]) + more
            )

        state, stacks = {}, {}
        for name, t in weights.items():
            m = EXPERT_NAME.match(name)
            if m is None:
                state[name] = t
            else:
                key = f"{m.group(1)}.{m.group(3)}" + ("_scale_inv" if m.group(4) == "weight_scale_inv" else "")
                stacks.setdefault(key, {})[int(m.group(2))] = t
        for key, per_expert in stacks.items():
            state[key] = torch.stack([per_expert[e] for e in range(len(per_expert))])
        on_meta = any(p.is_meta for p in self.parameters())
        self.load_state_dict(state, strict=True, assign=on_meta)
        self._after_load()

    def _after_load(self) -> None:
        """Rebuild what the checkpoint does not hold: the rope table (if built on meta), absorbed weights."""
        device = self.model.embed_tokens.weight.device
        if self.model.rotary_emb.inv_freq.device != device:
            self.model.rotary_emb = RotaryEmbedding(self.config).to(device)
        for layer in self.model.layers:
            layer.self_attn.prepare()


def is_mtp_tensor(name: str, config: ModelConfig) -> bool:
    """A tensor of a multi-token-prediction layer (ModelConfig.is_mtp_layer), stored after the decoder layers
    (docs/model-and-ops.md 3). Neither load_hf_state_dict nor dsa.io's checkpoint loader loads it."""
    m = LAYER_NAME.match(name)
    return m is not None and config.is_mtp_layer(int(m.group(1)))
