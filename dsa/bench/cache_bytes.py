"""KV + index cache bytes per token per layer, measured on the tensors PagedCache actually allocates.

docs/model-and-ops.md 2.1 / 2.2 / 4 for the 671B config: latent 576 bf16 values = 1152 B (or the packed fp8 token,
512 fp8 + 4 fp32 scales + 64 bf16 = 656 B) plus the index key, 128 fp8 + one fp32 scale = 132 B:
1284 B per token per layer with the bf16 cache, 788 B with the fp8 cache.
"""
from __future__ import annotations

from typing import Sequence

THEORY = {"bf16": 576 * 2 + 132, "fp8": 656 + 132}  # docs/model-and-ops.md 2.2 numbers for 671B
TOLERANCE = 0.05


def _tensor_bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def measure(kv_cache_dtype: str, num_blocks: int = 4, page_size: int = 64) -> dict:
    """One small PagedCache of the 671B config (all 61 layers); bytes per token per layer of each part."""
    import torch

    from dsa.configs import CONFIG_DIR
    from dsa.model.cache import PagedCache
    from dsa.model.config import ModelConfig
    from dsa.planning.parameters import cache_bytes_per_token_layer

    config = ModelConfig.from_file(CONFIG_DIR / "models" / "deepseek-v3.2-exp" / "config.json")
    cache = PagedCache(config, num_blocks=num_blocks, page_size=page_size, kv_cache_dtype=kv_cache_dtype,
                       dtype=torch.bfloat16, indexer_fp8=True)
    per = num_blocks * page_size * config.num_hidden_layers  # token-layers held
    latent = _tensor_bytes(cache.latent) / per
    index = (_tensor_bytes(cache.index_k) + _tensor_bytes(cache.index_scale)) / per
    planned = sum(cache_bytes_per_token_layer(config, kv_cache_dtype))
    total = latent + index
    theory = THEORY[kv_cache_dtype]
    return {
        "kv_cache_dtype": kv_cache_dtype,
        "latent_bytes": latent,
        "index_bytes": index,
        "total_bytes": total,
        "theory_bytes": theory,
        "planner_bytes": planned,
        "relative_error": total / theory - 1,
        "within_tolerance": abs(total / theory - 1) <= TOLERANCE,
        "layers": config.num_hidden_layers,
        "tokens": num_blocks * page_size,
    }


def run(kv_cache_dtypes: Sequence[str] = ("bf16", "fp8")) -> dict:
    return {"tolerance": TOLERANCE, "rows": [measure(d) for d in kv_cache_dtypes]}
