"""ModelConfig: HF config.json parsing, its errors, and the derived softmax scale (docs/model-and-ops.md 1, 2.1).

(Named test_model_config.py, not test_config.py: tests/ directories have no __init__.py, so test
module basenames must be unique across tests/unit, tests/model, tests/conformance.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsa.errors import ConfigError
from dsa.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "dsa/configs/models/tiny/config.json"
BIG = ROOT / "dsa/configs/models/deepseek-v3.2-exp/config.json"


def raw(path: Path = TINY) -> dict:
    return json.loads(path.read_text())


def test_shipped_configs_load():
    tiny = ModelConfig.from_file(TINY.parent)  # a directory works as well as the file
    assert tiny.hidden_size == 128 and tiny.index_topk == 16
    big = ModelConfig.from_file(BIG)
    assert (big.hidden_size, big.num_hidden_layers, big.n_routed_experts, big.index_topk) == (7168, 61, 256, 2048)
    assert big.qk_head_dim == 192 and big.latent_dim == 576
    assert big.rope_scaling.factor == 40 and big.rope_scaling.original_max_position_embeddings == 4096
    assert big.quantization_config.scale_fmt == "ue8m0"
    assert big.fp8_weights and not tiny.fp8_weights


def test_671b_softmax_scale_is_the_checked_number():
    # docs/model-and-ops.md 2.1: 192^-0.5 * (0.1 * ln 40 + 1)^2 = 0.1352338 (a checked fact of the release).
    assert ModelConfig.from_file(BIG).softmax_scale == pytest.approx(0.1352338, abs=1e-6)


def test_softmax_scale_without_yarn_is_plain():
    d = raw(TINY)
    d.pop("rope_scaling")
    c = ModelConfig.from_dict(d)
    assert c.softmax_scale == pytest.approx((c.qk_nope_head_dim + c.qk_rope_head_dim) ** -0.5, rel=1e-12)


def test_other_model_type_is_an_error():
    d = raw()
    d["model_type"] = "deepseek_v3"
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.from_dict(d)
    d.pop("model_type")
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("field", ["hidden_size", "kv_lora_rank", "index_topk", "n_group"])
def test_missing_field_is_an_error_naming_it(field):
    d = raw()
    d.pop(field)
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"n_routed_experts": 10, "n_group": 4}, "divisible"),  # experts do not split into groups
        ({"qk_rope_head_dim": 31}, "even"),  # RoPE needs pairs
        ({"topk_group": 5}, "topk_group"),  # more groups kept than exist (n_group 4)
        ({"num_experts_per_tok": 5}, "num_experts_per_tok"),  # > topk_group * experts per group = 4
        ({"index_head_dim": 48}, "power of two"),  # Hadamard transform size
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": "128"}, "hidden_size"),  # not a number
        ({"scoring_func": "softmax"}, "sigmoid"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"first_k_dense_replace": 9}, "first_k_dense_replace"),
    ],
)
def test_dims_that_do_not_fit_are_errors(change, needle):
    d = raw()
    d.update(change)
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_dict(d)


def test_extra_harmless_keys_are_ignored():
    d = raw()
    extra = {"torch_dtype": "float16", "auto_map": {"AutoConfig": "x.Y"}, "transformers_version": "9.9",
             "use_cache": False, "hidden_act": "silu", "some_future_key": [1, 2, 3]}
    d.update(extra)
    assert ModelConfig.from_dict(d) == ModelConfig.from_dict(raw())


def test_rope_parameters_is_accepted_like_rope_scaling():
    d = raw()
    rope = d.pop("rope_scaling")
    theta = d.pop("rope_theta")
    # newer transformers: `rope_parameters` with `rope_type` and rope_theta inside
    params = {k: v for k, v in rope.items() if k != "type"} | {"rope_type": "yarn", "rope_theta": theta}
    c = ModelConfig.from_dict(d | {"rope_parameters": params})
    ref = ModelConfig.from_dict(raw())
    assert c.rope_scaling == ref.rope_scaling and c.rope_theta == ref.rope_theta
    assert c.softmax_scale == ref.softmax_scale


def test_unsupported_rope_type_is_an_error():
    d = raw()
    d["rope_scaling"] = {"type": "linear", "factor": 2.0}
    with pytest.raises(ConfigError, match="linear"):
        ModelConfig.from_dict(d)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        ModelConfig.from_file(tmp_path)
