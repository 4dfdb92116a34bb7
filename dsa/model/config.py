"""ModelConfig: the DeepSeek-V3.2 hyper-parameters, field names 1:1 with HF `config.json`.

Required fields missing, another model_type, or dimensions that do not fit together are a
`ConfigError` naming the field and the fix. The many harmless extra keys real configs carry
(torch_dtype, auto_map, transformers_version, ...) are ignored. Both `rope_scaling` (the official
checkpoint) and `rope_parameters` (newer transformers) are understood.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from dsa.errors import ConfigError

MODEL_TYPES = ("deepseek_v32",)


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters (docs/model-and-ops.md 2.1). `factor` 1 and no original length = plain RoPE."""

    type: str = "yarn"
    factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0
    original_max_position_embeddings: int = 4096


@dataclass(frozen=True)
class QuantizationConfig:
    quant_method: str = "fp8"
    fmt: str = "e4m3"
    activation_scheme: str = "dynamic"
    scale_fmt: Optional[str] = None  # "ue8m0" = power-of-two activation scales
    weight_block_size: tuple[int, int] = (128, 128)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    first_k_dense_replace: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    max_position_embeddings: int
    model_type: str = "deepseek_v32"
    routed_scaling_factor: float = 1.0
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    norm_topk_prob: bool = True
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    rms_norm_eps: float = 1e-6
    num_nextn_predict_layers: int = 0
    bos_token_id: int = 0
    eos_token_id: int = 1
    tie_word_embeddings: bool = False
    quantization_config: Optional[QuantizationConfig] = None

    # ---- derived ---------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:  # 192 for 671B
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:  # the absorbed key width: 576 for 671B
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def yarn(self) -> Optional[RopeScaling]:
        """The YaRN parameters when YaRN is in force: a factor > 1 that extends the context beyond the
        original length (always, for the 671B config). Rope frequencies and softmax scale both follow it."""
        rs = self.rope_scaling
        if rs is not None and rs.factor > 1 and self.max_position_embeddings > rs.original_max_position_embeddings:
            return rs
        return None

    @property
    def softmax_scale(self) -> float:
        """qk_head_dim^-0.5, times mscale^2 when YaRN extends the context (docs/model-and-ops.md 2.1)."""
        scale = self.qk_head_dim**-0.5
        rs = self.yarn
        if rs is not None:
            m = 0.1 * rs.mscale_all_dim * math.log(rs.factor) + 1.0
            scale *= m * m
        return scale

    @property
    def fp8_weights(self) -> bool:
        return self.quantization_config is not None and self.quantization_config.quant_method == "fp8"

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace

    def is_mtp_layer(self, layer: int) -> bool:
        """A multi-token-prediction layer: the num_nextn_predict_layers layers a checkpoint stores after the
        decoder layers (layer 61 of the 671B release, which has one). With 0 there is none: a layer
        num_hidden_layers is then no part of the model (a checkpoint holding one is rejected as unexpected)."""
        return self.num_hidden_layers <= layer < self.num_hidden_layers + self.num_nextn_predict_layers

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type is {model_type!r}, but this runtime runs {', '.join(MODEL_TYPES)} "
                "(DeepSeek-V3.2). Point --model at a DeepSeek-V3.2 checkpoint."
            )
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in raw]
        if missing:
            raise ConfigError(f"{source}: required field(s) missing: {', '.join(missing)}")
        values = {k: v for k, v in raw.items() if k in names}
        rope = raw.get("rope_scaling") or raw.get("rope_parameters")
        values["rope_scaling"] = _rope_scaling(rope, source)
        if "rope_theta" not in raw and isinstance(rope, dict) and "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
        q = raw.get("quantization_config")
        values["quantization_config"] = _quantization(q, source) if q else None
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = values["eos_token_id"][0]
        for name, value in values.items():
            if name in ("rope_scaling", "quantization_config", "model_type", "scoring_func", "topk_method"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if name in ("norm_topk_prob", "tie_word_embeddings") and isinstance(value, bool):
                    continue
                raise ConfigError(f"{source}: field {name} must be a number, got {value!r}")
        config = cls(**values)
        config.validate(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"model config {path} not found; pass a checkpoint directory or a config.json")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err}); re-download config.json") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, str(path))

    def validate(self, source: str = "config") -> None:
        def bad(msg: str):
            raise ConfigError(f"{source}: {msg}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                     "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "index_n_heads",
                     "index_head_dim", "index_topk", "max_position_embeddings", "intermediate_size"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.qk_rope_head_dim % 2:
            bad(f"qk_rope_head_dim must be even for RoPE, got {self.qk_rope_head_dim}")
        if self.index_head_dim & (self.index_head_dim - 1):
            bad(f"index_head_dim must be a power of two (Hadamard transform), got {self.index_head_dim}")
        if self.index_head_dim < self.qk_rope_head_dim:
            bad(f"index_head_dim ({self.index_head_dim}) must be >= qk_rope_head_dim ({self.qk_rope_head_dim})")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            bad(f"first_k_dense_replace={self.first_k_dense_replace} must lie in [0, num_hidden_layers]")
        if self.first_k_dense_replace < self.num_hidden_layers:  # there are MoE layers
            if self.n_routed_experts <= 0 or self.moe_intermediate_size <= 0:
                bad("MoE layers need n_routed_experts > 0 and moe_intermediate_size > 0")
            if self.n_group <= 0 or self.n_routed_experts % self.n_group:
                bad(f"n_routed_experts ({self.n_routed_experts}) must be divisible by n_group ({self.n_group})")
            if not 0 < self.topk_group <= self.n_group:
                bad(f"topk_group ({self.topk_group}) must lie in [1, n_group={self.n_group}]")
            per_group = self.n_routed_experts // self.n_group
            if per_group < 2:
                bad("each expert group needs at least 2 experts (group score = sum of the top-2)")
            if not 0 < self.num_experts_per_tok <= self.topk_group * per_group:
                bad(f"num_experts_per_tok ({self.num_experts_per_tok}) must be in [1, topk_group * experts per group]")
        if self.scoring_func != "sigmoid" or self.topk_method != "noaux_tc":
            bad("only scoring_func=sigmoid with topk_method=noaux_tc is supported, "
                f"got {self.scoring_func}/{self.topk_method}")
        if self.tie_word_embeddings:
            bad("tie_word_embeddings must be false for DeepSeek-V3.2")


def _rope_scaling(rope: Any, source: str) -> Optional[RopeScaling]:
    if not rope:
        return None
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_scaling must be an object, got {rope!r}")
    kind = rope.get("type", rope.get("rope_type", "yarn"))
    if kind == "default":
        return None
    if kind != "yarn":
        raise ConfigError(f"{source}: rope_scaling type {kind!r} is not supported (DeepSeek-V3.2 uses 'yarn')")
    known = {f.name for f in fields(RopeScaling)}
    return RopeScaling(**{k: v for k, v in rope.items() if k in known and k != "type"})


def _quantization(q: Any, source: str) -> QuantizationConfig:
    if not isinstance(q, dict):
        raise ConfigError(f"{source}: quantization_config must be an object")
    if q.get("quant_method") != "fp8" or q.get("fmt", "e4m3") != "e4m3":
        raise ConfigError(
            f"{source}: quantization {q.get('quant_method')!r}/{q.get('fmt')!r} is not supported; "
            "this runtime loads fp8 e4m3 block-scaled checkpoints (or unquantised bf16)"
        )
    block = tuple(q.get("weight_block_size", (128, 128)))
    if block != (128, 128):
        raise ConfigError(f"{source}: weight_block_size {list(block)} is not supported; expected [128, 128]")
    return QuantizationConfig(
        quant_method="fp8", fmt="e4m3", activation_scheme=q.get("activation_scheme", "dynamic"),
        scale_fmt=q.get("scale_fmt"), weight_block_size=block,
    )
