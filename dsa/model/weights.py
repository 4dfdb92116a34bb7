"""The HF checkpoint layout of DeepSeek-V3.2 (docs/model-and-ops.md 3), and seeded random checkpoints in that layout.

`hf_tensor_specs` is written from docs/model-and-ops.md 3, independently of the modules in `model/`, so a test can
check that the model loads exactly the checkpoint's tensors. The MTP layer is not included.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.model.config import ModelConfig
from dsa.model.layers import WEIGHT_BLOCK, scale_blocks

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest float8_e4m3fn value
AMAX_FLOOR = 1e-12  # an all-zero block still gets a finite scale
NORM_WEIGHT_STD = 0.1  # random norm weights ~ 1 +- this
BIAS_STD = 0.1  # random k_norm bias and router correction bias

Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]


def hf_tensor_specs(config: ModelConfig, fp8: bool) -> Spec:
    """name -> (shape, dtype) of every tensor of the HF checkpoint (no MTP layer).

    Linear weights are float8_e4m3fn with an fp32 `weight_scale_inv` [ceil(out/128), ceil(in/128)] when
    fp8, else bf16; norms (and the indexer's k_norm bias, the router correction bias) fp32; embedding,
    lm_head, router weight and indexer weights_proj bf16.
    """
    c = config
    specs: Spec = {}

    def linear(name: str, out_features: int, in_features: int) -> None:
        if fp8:
            specs[f"{name}.weight"] = ((out_features, in_features), FP8)
            specs[f"{name}.weight_scale_inv"] = ((scale_blocks(out_features), scale_blocks(in_features)), torch.float32)
        else:
            specs[f"{name}.weight"] = ((out_features, in_features), torch.bfloat16)

    def norm(name: str, dim: int) -> None:
        specs[f"{name}.weight"] = ((dim,), torch.float32)

    def swiglu(prefix: str, inter: int) -> None:
        linear(f"{prefix}.gate_proj", inter, c.hidden_size)
        linear(f"{prefix}.up_proj", inter, c.hidden_size)
        linear(f"{prefix}.down_proj", c.hidden_size, inter)

    D, H = c.hidden_size, c.num_attention_heads
    specs["model.embed_tokens.weight"] = ((c.vocab_size, D), torch.bfloat16)
    for layer in range(c.num_hidden_layers):
        p = f"model.layers.{layer}"
        norm(f"{p}.input_layernorm", D)
        norm(f"{p}.post_attention_layernorm", D)
        a = f"{p}.self_attn"
        linear(f"{a}.q_a_proj", c.q_lora_rank, D)
        norm(f"{a}.q_a_layernorm", c.q_lora_rank)
        linear(f"{a}.q_b_proj", H * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.q_lora_rank)
        linear(f"{a}.kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, D)
        norm(f"{a}.kv_a_layernorm", c.kv_lora_rank)
        linear(f"{a}.kv_b_proj", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)
        linear(f"{a}.o_proj", D, H * c.v_head_dim)
        linear(f"{a}.indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank)
        linear(f"{a}.indexer.wk", c.index_head_dim, D)
        norm(f"{a}.indexer.k_norm", c.index_head_dim)
        specs[f"{a}.indexer.k_norm.bias"] = ((c.index_head_dim,), torch.float32)
        specs[f"{a}.indexer.weights_proj.weight"] = ((c.index_n_heads, D), torch.bfloat16)
        if not c.is_moe_layer(layer):
            swiglu(f"{p}.mlp", c.intermediate_size)
            continue
        specs[f"{p}.mlp.gate.weight"] = ((c.n_routed_experts, D), torch.bfloat16)
        specs[f"{p}.mlp.gate.e_score_correction_bias"] = ((c.n_routed_experts,), torch.float32)
        for e in range(c.n_routed_experts):
            swiglu(f"{p}.mlp.experts.{e}", c.moe_intermediate_size)
        if c.n_shared_experts:
            swiglu(f"{p}.mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts)
    norm("model.norm", D)
    specs["lm_head.weight"] = ((c.vocab_size, D), torch.bfloat16)
    return specs


def quantize_blocks(w: Tensor, block: int = WEIGHT_BLOCK) -> tuple[Tensor, Tensor]:
    """w [N, K] float -> (fp8 [N, K], fp32 scale [ceil(N/b), ceil(K/b)]) with scale = block amax / 448."""
    n, k = w.shape
    nb, kb = scale_blocks(n, block), scale_blocks(k, block)
    padded = w.float().new_zeros(nb * block, kb * block)
    padded[:n, :k] = w.float()
    blocks = padded.view(nb, block, kb, block)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR) / FP8_MAX  # [nb, kb]
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(nb * block, kb * block)[:n, :k].contiguous(), scale


def random_checkpoint(
    config: ModelConfig, seed: int, fp8: bool = False, dtype: torch.dtype = torch.bfloat16
) -> dict[str, Tensor]:
    """Seeded random weights in the HF layout (`hf_tensor_specs`), scaled so activations stay O(1).

    Matrices ~ N(0, 1/fan_in) (the embedding ~ N(0, 1)); norm weights ~ 1; biases small. bf16 entries
    of the layout are produced in `dtype`; with fp8, each linear weight is quantised in 128 x 128 blocks.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for name, (shape, spec_dtype) in hf_tensor_specs(config, fp8).items():
        if name.endswith(".weight_scale_inv"):
            continue  # produced with its weight
        if len(shape) == 1:
            is_bias = name.endswith("bias")
            noise = torch.randn(shape, generator=g) * (BIAS_STD if is_bias else NORM_WEIGHT_STD)
            out[name] = noise if is_bias else 1.0 + noise
            continue
        std = 1.0 if name == "model.embed_tokens.weight" else shape[1] ** -0.5
        w = torch.randn(shape, generator=g) * std
        if spec_dtype == FP8:
            out[name], out[name + "_scale_inv"] = quantize_blocks(w)
        else:
            out[name] = w.to(dtype)
    return out
