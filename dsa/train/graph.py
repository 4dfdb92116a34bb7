"""The differentiable path the training runs: DeepseekV32's function on whole sequences, in plain autograd.

The serving graph (dsa.model) calls HAL ops that have no backward (sparse MLA over gathered keys, grouped
GEMMs, the indexer's top-k). Training runs the same parameters through this module instead, on a batch of
B sequences of L tokens (positions 0..L-1):

- MLA in the absorbed form as in dsa/model/attention.py, attention as a masked dense [B, H, L, L] softmax:
  causal (mode "dense"), or causal and restricted to each query's top-k keys by index score ("sparse",
  selection as the HAL's indexer_topk: every visible key when a row sees at most top-k);
- the indexer's scores I[t, s] = sum_h w[t, h] relu(q[t, h] . k[s]) (docs/model-and-ops.md 2.2) unquantised
  (the fp8 rounding of q / k is an inference-time approximation of these numbers);
- the MoE as a loop over experts (a handful here) with the router's selection, and its weights
  differentiable through the chosen sigmoid scores.

tests/model/test_train_graph.py checks the logits against the serving graph (dense and sparse). The
outputs carry what the DSA recipe's losses need (dsa.train.recipe): per layer the main attention summed
over heads (L1-normalised, the warm-up's target) and the index scores, masked to what each row may see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dsa.model.layers import apply_rope_interleaved, apply_rope_rotate_half, hadamard_transform
from dsa.model.transformer import DeepseekV32

MODES = ("dense", "sparse")


@dataclass
class LayerAux:
    """What the indexer loss of one layer needs, [B, L, L] each (rows: queries, columns: keys)."""

    attention: Tensor  # main attention summed over heads / H (rows sum to 1), detached
    index_scores: Tensor  # I[t, s] fp32, -inf where s is not visible (causal)
    selected: Optional[Tensor]  # bool, the top-k set (sparse mode), else None


@dataclass
class TrainOutput:
    logits: Tensor  # [B, L, vocab] fp32
    aux: list[LayerAux] = field(default_factory=list)  # per attention layer, when asked for
    expert_load: list[Tensor] = field(default_factory=list)  # per MoE layer, tokens routed to each expert [E]


def causal_mask(L: int, device) -> Tensor:
    return torch.ones(L, L, dtype=torch.bool, device=device).tril()


def topk_mask(scores: Tensor, visible: Tensor, k: int) -> Tensor:
    """The top-k visible keys of each row of scores [B, L, L] as a bool mask (all visible ones when a row sees
    at most k); ties go to the lower position, as the torch provider breaks them."""
    L = scores.shape[-1]
    if k >= L:
        return visible.expand_as(scores).clone()
    masked = scores.detach().masked_fill(~visible, float("-inf"))
    # a stable sort of the descending scores puts the lower position first among equals
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :k]
    chosen = torch.zeros_like(masked, dtype=torch.bool).scatter_(-1, order, True)
    return chosen & visible


class TrainGraph:
    """Training forward over a built DeepseekV32 (float weights). `trainable(model)` marks its parameters."""

    def __init__(self, model: DeepseekV32):
        if model.fp8_weights:
            raise ValueError("training needs float weights (build the model with fp8_weights=False)")
        self.model = model
        self.config = model.config

    def __call__(self, ids: Tensor, mode: str = "dense", want_aux: bool = False,
                 detach_indexer: bool = False) -> TrainOutput:
        """ids [B, L] int64 -> logits [B, L, vocab]. detach_indexer: the indexer sees its inputs detached
        from the main graph (the sparse stage: the indexer is trained only by its own loss)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        m, cfg = self.model, self.config
        B, L = ids.shape
        pos = torch.arange(L, device=ids.device)
        cos, sin = m.model.rotary_emb(pos)  # [L, r/2]
        cos_t, sin_t = cos.repeat(B, 1), sin.repeat(B, 1)  # [B*L, r/2]: rows in (b, l) order
        visible = causal_mask(L, ids.device)
        out = TrainOutput(logits=torch.empty(0))
        h = m.model.embed_tokens(ids).view(B * L, -1)  # [T, D]
        for layer in m.model.layers:
            x = layer.input_layernorm(h)
            a, aux = self._mla(layer.self_attn, x, B, L, cos_t, sin_t, visible, mode, want_aux, detach_indexer)
            if aux is not None:
                out.aux.append(aux)
            h = h + a
            y = layer.post_attention_layernorm(h)
            if cfg.is_moe_layer(layer.layer_id):
                f, load = self._moe(layer.mlp, y)
                out.expert_load.append(load)
            else:
                f = layer.mlp(y)
            h = h + f
        h = m.model.norm(h)
        out.logits = m.lm_head(h).float().view(B, L, -1)
        return out

    # ---- attention --------------------------------------------------------------------------------
    def _mla(self, attn, x: Tensor, B: int, L: int, cos: Tensor, sin: Tensor, visible: Tensor, mode: str,
             want_aux: bool, detach_indexer: bool):
        H = attn.n_heads
        qr = attn.q_a_layernorm(attn.q_a_proj(x))  # [T, q_lora]
        q = attn.q_b_proj(qr).view(B * L, H, attn.nope_dim + attn.rope_dim)
        q_nope, q_pe = q.split([attn.nope_dim, attn.rope_dim], dim=-1)
        q_pe = apply_rope_interleaved(q_pe, cos, sin)
        c_kv, k_pe = attn.kv_a_proj_with_mqa(x).split([attn.kv_lora_rank, attn.rope_dim], dim=-1)
        c_kv = attn.kv_a_layernorm(c_kv)  # [T, C]
        k_pe = apply_rope_interleaved(k_pe, cos, sin)  # [T, r]

        need_index = mode == "sparse" or want_aux
        scores_i = None
        if need_index:
            xi, qri = (x.detach(), qr.detach()) if detach_indexer else (x, qr)
            scores_i = self._index_scores(attn.indexer, xi, qri, B, L, cos, sin)  # [B, L, L]
        allowed = visible.expand(B, L, L)  # [B, L, L]
        selected = None
        if mode == "sparse":
            selected = topk_mask(scores_i, visible, attn.indexer.topk)
            allowed = selected

        w_uk, w_uv = attn.absorbed_weights()  # [H, nope, C], [H, v, C]
        q_lat = torch.einsum("thd,hdc->thc", q_nope, w_uk)  # [T, H, C]
        qf = q_lat.view(B, L, H, -1).transpose(1, 2)  # [B, H, L, C]
        qp = q_pe.view(B, L, H, -1).transpose(1, 2)  # [B, H, L, r]
        ck = c_kv.view(B, L, -1)  # [B, L, C]
        kp = k_pe.view(B, L, -1)  # [B, L, r]
        s = (qf @ ck.unsqueeze(1).transpose(-1, -2) + qp @ kp.unsqueeze(1).transpose(-1, -2)) * attn.softmax_scale
        s = s.float().masked_fill(~allowed.unsqueeze(1), float("-inf"))  # [B, H, L, L]
        p = torch.softmax(s, dim=-1)
        o = (p.to(ck.dtype) @ ck.unsqueeze(1)).transpose(1, 2).reshape(B * L, H, -1)  # [T, H, C]
        o = torch.einsum("thc,hvc->thv", o, w_uv)
        out = attn.o_proj(o.flatten(1))
        aux = None
        if want_aux:
            index = scores_i.masked_fill(~visible, float("-inf"))
            aux = LayerAux(attention=p.detach().mean(dim=1), index_scores=index, selected=selected)
        return out, aux

    @staticmethod
    def _index_scores(ix, x: Tensor, qr: Tensor, B: int, L: int, cos: Tensor, sin: Tensor) -> Tensor:
        """I [B, L, L] fp32 (unmasked): the lightning indexer's scores, unquantised."""
        T = x.shape[0]

        def rope_first(v: Tensor) -> Tensor:
            pe, rest = v.split([ix.rope_dim, ix.head_dim - ix.rope_dim], dim=-1)
            return torch.cat([apply_rope_rotate_half(pe, cos, sin), rest], dim=-1)

        q = hadamard_transform(rope_first(ix.wq_b(qr).view(T, ix.n_heads, ix.head_dim)))  # [T, Hi, Di]
        k = hadamard_transform(rope_first(ix.k_norm(ix.wk(x))))  # [T, Di]
        w = F.linear(x.float(), ix.weights_proj.weight.float()) * ix.n_heads**-0.5 * ix.head_dim**-0.5  # [T, Hi]
        qb = q.float().view(B, L, ix.n_heads, ix.head_dim)
        kb = k.float().view(B, L, ix.head_dim)
        logits = torch.einsum("blhd,bsd->blhs", qb, kb).relu()  # [B, L, Hi, L]
        return torch.einsum("blhs,blh->bls", logits, w.view(B, L, ix.n_heads))

    # ---- MoE --------------------------------------------------------------------------------------
    @staticmethod
    def _moe(moe, x: Tensor) -> tuple[Tensor, Tensor]:
        """The routed experts as a loop over experts (differentiable) + the shared expert; also the load."""
        T, D = x.shape
        weights, experts = moe.gate(x)  # [T, k] (differentiable through the gate's scores), [T, k]
        ex = moe.experts
        out = torch.zeros(T, D, dtype=torch.float32, device=x.device)
        load = torch.bincount(experts.flatten(), minlength=moe.n_experts)
        for e in range(moe.n_experts):
            tok, slot = (experts == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            xe = x[tok]
            h = F.silu(xe @ ex.gate_proj[e].t()) * (xe @ ex.up_proj[e].t())
            y = (h @ ex.down_proj[e].t()).float() * weights[tok, slot, None]
            out = out.index_add(0, tok, y)
        if moe.shared_experts is not None:
            out = out + moe.shared_experts(x).float()
        return out.to(x.dtype), load


def trainable(model: DeepseekV32) -> list[torch.nn.Parameter]:
    """Every float parameter of the model, made trainable (the serving graph builds them frozen)."""
    params = []
    for p in model.parameters():
        if p.dtype.is_floating_point:
            p.requires_grad_(True)
            params.append(p)
    return params


def indexer_parameters(model: DeepseekV32) -> list[torch.nn.Parameter]:
    return [p for layer in model.model.layers for p in layer.self_attn.indexer.parameters()]


__all__ = ["TrainGraph", "TrainOutput", "LayerAux", "topk_mask", "trainable", "indexer_parameters", "MODES"]
