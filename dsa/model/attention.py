"""Multi-head latent attention with DeepSeek Sparse Attention (docs/model-and-ops.md 2.1 and 2.2).

The lightning `Indexer` picks, for every new token, the `index_topk` cached positions of its own
sequence that the token will attend to (causal: never a later position). `MLA` then attends in the
absorbed (MQA) form over exactly those positions: one shared 576-wide latent key per cached token,
value = its first kv_lora_rank dims. Both write the new tokens into the paged cache first, so a token
can select itself.

Index conventions: the indexer scores the packed keys of all sequences (`PagedCache.gather_index`,
sequence b at rows kv_start[b]:kv_start[b+1]) and returns rows of that packed tensor. Prefill attends
over the latent rows packed the same way; decode converts them to logical positions (row - kv_start[b])
and reads the paged cache directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsa.model.cache import Batch, PagedCache
from dsa.model.config import ModelConfig
from dsa.model.layers import (
    LayerNorm,
    Linear,
    RMSNorm,
    apply_rope_interleaved,
    apply_rope_rotate_half,
    hadamard_transform,
)

INDEXER_NORM_EPS = 1e-6  # k_norm's LayerNorm eps (docs/model-and-ops.md 2.2)


class Indexer(nn.Module):
    """Scores cached positions with a small fp8 multi-head dot product and keeps the top-k."""

    def __init__(self, config: ModelConfig, ops, *, fp8: bool, ue8m0: bool, dtype: torch.dtype, indexer_fp8: bool):
        super().__init__()
        self.ops, self.indexer_fp8 = ops, indexer_fp8
        self.n_heads, self.head_dim = config.index_n_heads, config.index_head_dim
        self.rope_dim, self.topk = config.qk_rope_head_dim, config.index_topk
        linear = dict(ops=ops, fp8=fp8, ue8m0=ue8m0, dtype=dtype)
        self.wq_b = Linear(config.q_lora_rank, self.n_heads * self.head_dim, **linear)
        self.wk = Linear(config.hidden_size, self.head_dim, **linear)
        self.k_norm = LayerNorm(self.head_dim, INDEXER_NORM_EPS)
        self.weights_proj = Linear(config.hidden_size, self.n_heads, ops=ops, fp8=False, ue8m0=ue8m0, dtype=dtype)

    def _rope_first(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate-half RoPE on dims [0, rope_dim); the rest pass through (the reverse of MLA's order)."""
        pe, rest = x.split([self.rope_dim, self.head_dim - self.rope_dim], dim=-1)
        return torch.cat([apply_rope_rotate_half(pe, cos, sin), rest], dim=-1)

    def forward(
        self, x: Tensor, qr: Tensor, cos: Tensor, sin: Tensor, layer: int, batch: Batch, cache: PagedCache
    ) -> Tensor:
        """x [T, D], qr [T, q_lora_rank] -> indices [T, index_topk] int32 into the packed cache (-1 = none)."""
        T = x.shape[0]
        q = self.wq_b(qr).view(T, self.n_heads, self.head_dim)  # [T, Hi, Di]
        q = hadamard_transform(self._rope_first(q, cos, sin))
        k = self.k_norm(self.wk(x))  # [T, Di]
        k = hadamard_transform(self._rope_first(k, cos, sin))

        weights = F.linear(x.float(), self.weights_proj.weight.float()) * self.n_heads**-0.5  # [T, Hi] fp32
        if self.indexer_fp8:  # one power-of-two scale per head vector
            q, q_scale = self.ops.act_quant(q, self.head_dim, True)  # [T, Hi, Di] fp8, [T, Hi, 1]
            k, k_scale = self.ops.act_quant(k, self.head_dim, True)  # [T, Di] fp8, [T, 1]
            weights = weights * q_scale.squeeze(-1)
            k_scale = k_scale.squeeze(-1)
        else:
            k_scale = torch.ones(T, dtype=torch.float32, device=x.device)
        weights = weights * self.head_dim**-0.5
        cache.write_index(layer, batch, k, k_scale)

        keys, key_scales = cache.gather_index(layer, batch)  # [S, Di], [S]
        starts, ends = batch.visible_range()  # each token sees positions 0..pos of its own sequence
        return self.ops.indexer_topk(q, weights, keys, key_scales, starts, ends, self.topk, batch.max_seq_len)


class MLA(nn.Module):
    """Multi-head latent attention, absorbed form, over the indexer's selection."""

    def __init__(self, config: ModelConfig, ops, *, fp8: bool, ue8m0: bool, dtype: torch.dtype, indexer_fp8: bool):
        super().__init__()
        self.ops, self.dtype = ops, dtype
        self.n_heads = config.num_attention_heads
        self.nope_dim, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        self.softmax_scale = config.softmax_scale
        H, eps = self.n_heads, config.rms_norm_eps
        linear = dict(ops=ops, fp8=fp8, ue8m0=ue8m0, dtype=dtype)
        self.q_a_proj = Linear(config.hidden_size, config.q_lora_rank, **linear)
        self.q_a_layernorm = RMSNorm(config.q_lora_rank, eps)
        self.q_b_proj = Linear(config.q_lora_rank, H * config.qk_head_dim, **linear)
        self.kv_a_proj_with_mqa = Linear(config.hidden_size, config.latent_dim, **linear)
        self.kv_a_layernorm = RMSNorm(config.kv_lora_rank, eps)
        self.kv_b_proj = Linear(config.kv_lora_rank, H * (self.nope_dim + self.v_dim), **linear)
        self.o_proj = Linear(H * self.v_dim, config.hidden_size, **linear)
        self.indexer = Indexer(config, ops, fp8=fp8, ue8m0=ue8m0, dtype=dtype, indexer_fp8=indexer_fp8)
        # kv_b_proj dequantised once (fp8 checkpoints), set by prepare(); float weights are used in place.
        self.register_buffer("kv_b_dense", None, persistent=False)

    def prepare(self) -> None:
        """Cache the dense kv_b_proj weight the absorbed form multiplies by (call after loading)."""
        self.kv_b_dense = self.kv_b_proj.dense_weight(self.dtype) if self.kv_b_proj.is_fp8 else None

    def absorbed_weights(self) -> tuple[Tensor, Tensor]:
        """W_UK [H, nope, kv_lora] (to k_nope) and W_UV [H, v, kv_lora] (to v), views of kv_b_proj."""
        w = self.kv_b_dense if self.kv_b_dense is not None else self.kv_b_proj.dense_weight(self.dtype)
        w = w.view(self.n_heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
        return w[:, : self.nope_dim], w[:, self.nope_dim :]

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, batch: Batch, cache: PagedCache) -> Tensor:
        """x [T, D] -> [T, D]; writes the new tokens' latent rows and index keys into `cache`."""
        T, H = x.shape[0], self.n_heads
        qr = self.q_a_layernorm(self.q_a_proj(x))  # [T, q_lora]
        q = self.q_b_proj(qr).view(T, H, self.nope_dim + self.rope_dim)  # [T, H, 192]
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_pe = apply_rope_interleaved(q_pe, cos, sin)

        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)  # [T, kv_lora]
        k_pe = apply_rope_interleaved(k_pe, cos, sin)  # [T, rope]
        cache.write_latent(layer, batch, torch.cat([c_kv, k_pe], dim=-1))

        indices = self.indexer(x, qr, cos, sin, layer, batch, cache)  # [T, K] rows of the packed cache

        w_uk, w_uv = self.absorbed_weights()
        q_lat = torch.einsum("thd,hdc->thc", q_nope, w_uk)  # [T, H, kv_lora]
        query = torch.cat([q_lat, q_pe], dim=-1)  # [T, H, kv_lora + rope]
        if batch.is_decode:  # one token per sequence: row b is sequence b; read the paged cache in place
            logical = torch.where(indices >= 0, indices - batch.kv_start[:-1, None], -1).to(torch.int32)  # [B, K]
            out, _ = self.ops.sparse_mla_decode(
                query.unsqueeze(1), cache.latent[layer], batch.block_table, batch.seq_lens,
                logical.unsqueeze(1), self.softmax_scale, self.kv_lora_rank,
            )
            out = out.squeeze(1)  # [T, H, kv_lora]
        else:
            kv = cache.gather_latent(layer, batch)  # [S, 1, kv_lora + rope]
            out, _ = self.ops.sparse_mla_prefill(query, kv, indices, self.softmax_scale, self.kv_lora_rank)
        o = torch.einsum("thc,hvc->thv", out, w_uv)  # [T, H, v]
        return self.o_proj(o.flatten(1))
