"""ModelConfig: the DeepSeek-V3.2 hyper-parameters, field names 1:1 with HF `config.json`.

Required fields missing, another model_type, or dimensions that do not fit together are a
`ConfigError` naming the field and the fix. The many harmless extra keys real configs carry
(torch_dtype, auto_map, transformers_version, ...) are ignored. Both `rope_scaling` (the official
checkpoint) and `rope_parameters` (newer transformers) are understood.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from dsa.errors import ConfigError
from dsa.model.fields import float_problem, int_problem, read_json_object, show

MODEL_TYPES = ("deepseek_v32",)

# Integer fields: name -> [lo, hi]. The upper bounds are far above any real model (the 671B release: vocab
# 129280, hidden 7168, 61 layers, 128 heads, 256 experts, 163840 positions) and keep the planner's loops
# over heads, layers and experts short. Zero is allowed only where it means "none" (dense-only models,
# no shared experts, no MTP layer); relations between fields are checked in ModelConfig.validate.
INT_FIELDS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 1 << 24), "hidden_size": (1, 1 << 20), "intermediate_size": (1, 1 << 22),
    "moe_intermediate_size": (0, 1 << 22), "num_hidden_layers": (1, 1 << 12), "num_attention_heads": (1, 1 << 14),
    "q_lora_rank": (1, 1 << 20), "kv_lora_rank": (1, 1 << 20), "qk_nope_head_dim": (1, 1 << 14),
    "qk_rope_head_dim": (1, 1 << 14), "v_head_dim": (1, 1 << 14), "n_routed_experts": (0, 1 << 16),
    "n_shared_experts": (0, 1 << 10), "num_experts_per_tok": (0, 1 << 16), "n_group": (0, 1 << 16),
    "topk_group": (0, 1 << 16), "first_k_dense_replace": (0, 1 << 12), "index_n_heads": (1, 1 << 14),
    "index_head_dim": (1, 1 << 14), "index_topk": (1, 1 << 24), "max_position_embeddings": (1, 1 << 26),
    "num_nextn_predict_layers": (0, 64), "bos_token_id": (0, 1 << 24), "eos_token_id": (0, 1 << 24),
}
# Float fields: name -> (lo, hi, lo excluded, hi excluded). rope_theta > 1: YaRN divides by log(theta).
FLOAT_FIELDS: dict[str, tuple[float, float, bool, bool]] = {
    "routed_scaling_factor": (0.0, 1e6, True, False), "rope_theta": (1.0, 1e12, True, False),
    "rms_norm_eps": (0.0, 1.0, True, True),
}
# rope_scaling's numbers: factor divides frequencies, the betas go through log(L0 / (2 pi beta)).
ROPE_FLOATS: dict[str, tuple[float, float, bool, bool]] = {
    "factor": (0.0, 1e6, True, False), "beta_fast": (0.0, 1e6, True, False), "beta_slow": (0.0, 1e6, True, False),
    "mscale": (0.0, 1e3, False, False), "mscale_all_dim": (0.0, 1e3, False, False),
}


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
                f"{source}: model_type is {show(model_type)}, but this runtime runs {', '.join(MODEL_TYPES)} "
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
        eos = values.get("eos_token_id")
        if isinstance(eos, list):  # generation-style list of eos ids: the first is the model's
            if not eos:
                raise ConfigError(f"{source}: field eos_token_id is an empty list; give the eos token id")
            for i, v in enumerate(eos):
                problem = int_problem(v, lo=0)
                if problem:
                    raise ConfigError(f"{source}: field eos_token_id[{i}] {problem}")
            values["eos_token_id"] = eos[0]
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
        raw = read_json_object(path, ConfigError, "re-download config.json")
        return cls.from_dict(raw, str(path))

    def validate(self, source: str = "config") -> None:
        def bad(msg: str):
            raise ConfigError(f"{source}: {msg}")

        for name, (lo, hi) in INT_FIELDS.items():
            problem = int_problem(getattr(self, name), lo, hi)
            if problem:
                bad(f"field {name} {problem}")
        for name, (lo, hi, lo_open, hi_open) in FLOAT_FIELDS.items():
            problem = float_problem(getattr(self, name), lo, hi, lo_open=lo_open, hi_open=hi_open)
            if problem:
                bad(f"field {name} {problem}")
        for name in ("norm_topk_prob", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                bad(f"field {name} must be true or false, got {show(getattr(self, name))}")
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) >= self.vocab_size:
                bad(f"field {name} ({getattr(self, name)}) must be < vocab_size ({self.vocab_size})")
        if self.rope_scaling is not None:
            _check_rope(self.rope_scaling, bad)
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
                f"got {show(self.scoring_func)}/{show(self.topk_method)}")
        if self.tie_word_embeddings:
            bad("tie_word_embeddings must be false for DeepSeek-V3.2")


def _rope_scaling(rope: Any, source: str) -> Optional[RopeScaling]:
    if not rope:
        return None
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_scaling must be an object, got {show(rope)}")
    kind = rope.get("type", rope.get("rope_type", "yarn"))
    if kind == "default":
        return None
    if kind != "yarn":
        raise ConfigError(f"{source}: rope_scaling type {show(kind)} is not supported (DeepSeek-V3.2 uses 'yarn')")
    known = {f.name for f in fields(RopeScaling)}
    return RopeScaling(**{k: v for k, v in rope.items() if k in known and k != "type"})


def _check_rope(rs: RopeScaling, bad) -> None:
    for name, (lo, hi, lo_open, hi_open) in ROPE_FLOATS.items():
        problem = float_problem(getattr(rs, name), lo, hi, lo_open=lo_open, hi_open=hi_open)
        if problem:
            bad(f"field rope_scaling.{name} {problem}")
    problem = int_problem(rs.original_max_position_embeddings, 1, 1 << 26)
    if problem:
        bad(f"field rope_scaling.original_max_position_embeddings {problem}")


def _quantization(q: Any, source: str) -> QuantizationConfig:
    if not isinstance(q, dict):
        raise ConfigError(f"{source}: quantization_config must be an object")
    if q.get("quant_method") != "fp8" or q.get("fmt", "e4m3") != "e4m3":
        raise ConfigError(
            f"{source}: quantization {show(q.get('quant_method'))}/{show(q.get('fmt'))} is not supported; "
            "this runtime loads fp8 e4m3 block-scaled checkpoints (or unquantised bf16)"
        )
    block = q.get("weight_block_size", [128, 128])
    if not isinstance(block, (list, tuple)) or len(block) != 2 or any(int_problem(b, 1) for b in block):
        raise ConfigError(f"{source}: quantization_config.weight_block_size must be a list of two integers, "
                          f"got {show(block)}")
    if tuple(block) != (128, 128):
        raise ConfigError(f"{source}: weight_block_size {list(block)} is not supported; expected [128, 128]")
    scheme, scale_fmt = q.get("activation_scheme", "dynamic"), q.get("scale_fmt")
    if not isinstance(scheme, str):
        raise ConfigError(f"{source}: quantization_config.activation_scheme must be a string, got {show(scheme)}")
    if scale_fmt is not None and not isinstance(scale_fmt, str):
        raise ConfigError(f"{source}: quantization_config.scale_fmt must be a string or null, got {show(scale_fmt)}")
    return QuantizationConfig(
        quant_method="fp8", fmt="e4m3", activation_scheme=scheme, scale_fmt=scale_fmt, weight_block_size=(128, 128),
    )
