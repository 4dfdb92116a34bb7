"""Numbers in every file we read are checked as numbers: type (an integer is not 128.0 or true), finiteness,
range, and the relations the code relies on - one DsaError naming the file and the field, never a traceback.
One test per defect found (by hand or by tests/fuzz); the inputs are the ones that used to crash."""
from __future__ import annotations

import json
import math
import re
import shutil
import struct
import time
from pathlib import Path

import pytest

from dsa.configs import CONFIG_DIR
from dsa.errors import CheckpointError, ConfigError, ProfileError, TokenizerError
from dsa.io.checkpoint import INDEX_FILE, open_checkpoint
from dsa.io.safetensors_header import read_header
from dsa.io.tokenizer import load_tokenizer, read_generation_config
from dsa.io.tokenizer_writer import write_tokenizer_files
from dsa.model.config import ModelConfig
from dsa.model.fields import float_problem, int_problem, read_json
from dsa.planning.device_profile import DEVICES_DIR, MAX_NODES, check_node_count, load_profile
from dsa.planning.plan import make_plan
from tests.unit.ckpt_fixtures import make_checkpoint, weight_map, write_weight_map

TINY_PATH = CONFIG_DIR / "models" / "tiny" / "config.json"
TINY = json.loads(TINY_PATH.read_text())
CPU_YAML = (DEVICES_DIR / "cpu.yaml").read_text()
HUGE_DIGITS = "1" + "0" * 5000  # over Python's 4300-digit int <-> str limit


# ---- the shared checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1.5, 128.0, True, False, "8", None, [8], -1, 0])
def test_int_problem_rejects_non_integers_and_out_of_range(value):
    assert int_problem(value, lo=1, hi=1024) is not None
    assert int_problem(8, lo=1, hi=1024) is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, True, "1.0", None, 0.0, 2.0])
def test_float_problem_rejects_non_finite_and_out_of_range(value):
    assert float_problem(value, 0.0, 1.0, lo_open=True) is not None
    assert float_problem(0.5, 0.0, 1.0, lo_open=True) is None and float_problem(1, 0.0, 1.0) is None


def test_float_problem_shortens_huge_values():
    assert "bits" in float_problem(1 << 20000, 0.0, 1.0)  # repr() of such an int raises ValueError


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' + HUGE_DIGITS + "}", '{"a": NaN}', '{"a": -Infinity}',
                                  b"\xff\xfe", "{"])
def test_read_json_failures_are_the_callers_error(text):
    with pytest.raises(ConfigError, match="bad: "):
        read_json(text, lambda why: ConfigError(f"bad: {why}"))


# ---- config.json ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, needle", [
    ("hidden_size", 1.5, "hidden_size must be an integer"),  # used to plan, then crash `dsa run`
    ("hidden_size", 128.0, "hidden_size must be an integer"),
    ("num_hidden_layers", True, "num_hidden_layers must be an integer"),
    ("vocab_size", 10**30, "vocab_size must be an integer in"),
    ("num_attention_heads", 10**12, "num_attention_heads"),  # the layout checks walk its divisors
    ("rope_theta", math.nan, "rope_theta must be a finite number"),
    ("rope_theta", 1.0, "rope_theta"),  # YaRN divides by log(theta)
    ("rope_theta", -5, "rope_theta"),
    ("rms_norm_eps", 0.0, "rms_norm_eps"),
    ("rms_norm_eps", 1.0, "rms_norm_eps"),
    ("routed_scaling_factor", math.inf, "routed_scaling_factor must be a finite number"),
    ("routed_scaling_factor", 0, "routed_scaling_factor"),
    ("norm_topk_prob", 1, "norm_topk_prob must be true or false"),
    ("bos_token_id", 260, "bos_token_id .260. must be < vocab_size"),
    ("eos_token_id", -1, "eos_token_id"),
    ("eos_token_id", [], "eos_token_id is an empty list"),  # used to be an IndexError
    ("eos_token_id", [1, "x"], r"eos_token_id\[1\]"),
    ("num_nextn_predict_layers", 1.0, "num_nextn_predict_layers"),
    ("index_topk", 0, "index_topk"),
])
def test_config_numbers(field, value, needle):
    with pytest.raises(ConfigError, match=needle) as exc:
        ModelConfig.from_dict(TINY | {field: value}, "my/config.json")
    assert str(exc.value).startswith("my/config.json: ")


@pytest.mark.parametrize("field, value", [("factor", math.nan), ("factor", 0), ("beta_fast", 0.0),
                                          ("beta_slow", "1"), ("mscale", math.inf),
                                          ("original_max_position_embeddings", 1024.0)])
def test_rope_scaling_numbers(field, value):
    with pytest.raises(ConfigError, match=f"rope_scaling.{field}"):
        ModelConfig.from_dict(TINY | {"rope_scaling": TINY["rope_scaling"] | {field: value}}, "c.json")


@pytest.mark.parametrize("block", [5, None, [128.0, 128.0], [128], "ab", {"a": 1}])
def test_weight_block_size_must_be_two_integers(block):
    q = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": block}
    with pytest.raises(ConfigError, match="weight_block_size"):  # 5 / None used to be a TypeError
        ModelConfig.from_dict(TINY | {"quantization_config": q}, "c.json")


def test_expert_relations_still_checked():
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        ModelConfig.from_dict(TINY | {"num_experts_per_tok": 9})  # > n_routed_experts 8
    with pytest.raises(ConfigError, match="divisible by n_group"):
        ModelConfig.from_dict(TINY | {"n_group": 3})
    with pytest.raises(ConfigError, match="topk_group"):
        ModelConfig.from_dict(TINY | {"topk_group": 5})


@pytest.mark.parametrize("text", [TINY_PATH.read_text().replace('"vocab_size": 260', '"vocab_size": ' + HUGE_DIGITS),
                                  TINY_PATH.read_text().replace('"rope_theta": 10000', '"rope_theta": NaN'),
                                  "[" * 100_000])
def test_config_file_hostile_json(tmp_path, text):
    (tmp_path / "config.json").write_text(text)  # a ValueError / RecursionError / accepted NaN before
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        ModelConfig.from_file(tmp_path)


# ---- device profiles -----------------------------------------------------------------------------------

def _profile(tmp_path: Path, field: str, value: str) -> Path:
    text = re.sub(rf"^{field}:.*$", lambda m: f"{field}: {value}", CPU_YAML, flags=re.M)
    path = tmp_path / "cpu.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("value", [".nan", ".inf", "1.0e+300", "0x" + "f" * 5000, "-1", "true"])
def test_memory_gb_must_be_finite_and_sane(tmp_path, value):
    path = _profile(tmp_path, "memory_gb", value)  # nan / inf / 1e300 used to crash the planner
    with pytest.raises(ProfileError, match=rf"{path}: memory_gb: must be") as exc:
        load_profile(str(path))
    assert len(str(exc.value)) < 400


@pytest.mark.parametrize("value", ["1.0", "0", "2000", "0x" + "f" * 5000])
def test_devices_per_node(tmp_path, value):
    with pytest.raises(ProfileError, match="devices_per_node: must be"):
        load_profile(str(_profile(tmp_path, "devices_per_node", value)))


def test_nodes_are_bounded(tmp_path):
    path = _profile(tmp_path, "layout", "{tp: 100000, dp_attention: 1, ep: 1, nodes: 100000}")
    with pytest.raises(ProfileError, match=f"layout.nodes: must be at most {MAX_NODES}, got 100000"):
        load_profile(str(path))
    with pytest.raises(ProfileError, match=f"at most {MAX_NODES} nodes"):
        check_node_count(100000, "--nodes")
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ProfileError, match="must be a positive integer"):
            check_node_count(bad)
    assert check_node_count(4) == 4


@pytest.mark.parametrize("field, value", [("memory_gb", HUGE_DIGITS), ("platform", "0x" + "f" * 5000),
                                          ("arch", "0x" + "f" * 5000)])
def test_yaml_integers_python_cannot_print(tmp_path, field, value):
    path = _profile(tmp_path, field, value)  # int() / repr() raised ValueError (4300-digit limit)
    with pytest.raises(ProfileError, match=str(path)) as exc:
        load_profile(str(path))
    assert len(str(exc.value)) < 600


def test_deeply_nested_yaml(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text("[" * 50_000)
    with pytest.raises(ProfileError, match=str(path)):
        load_profile(str(path))


def test_valid_profile_still_plans(tmp_path):
    profile = load_profile(str(_profile(tmp_path, "memory_gb", "1.0e+5")))
    make_plan(profile, ModelConfig.from_dict(TINY))


# ---- generation_config.json ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, needle", [("1", "eos_token_id must be an integer"), (-1, "eos_token_id"),
                                           (10**30, "eos_token_id"), (True, "eos_token_id"), (1.0, "eos_token_id"),
                                           ([1, "x"], r"eos_token_id\[1\]"), (260, "vocabulary has 260 tokens"),
                                           ({"a": 1}, "eos_token_id")])
def test_generation_config_ids(tmp_path, value, needle):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"bos_token_id": 0, "eos_token_id": value}))  # silently dropped / accepted before
    with pytest.raises(TokenizerError, match=needle) as exc:
        read_generation_config(path, 260)
    assert str(path) in str(exc.value)


def test_generation_config_ok_and_absent(tmp_path):
    path = tmp_path / "generation_config.json"
    assert read_generation_config(path) == ([], [])
    path.write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 2], "temperature": 0.6}))
    assert read_generation_config(path, 260) == ([0], [1, 2])
    path.write_text(json.dumps({"bos_token_id": None, "eos_token_id": 1}))
    assert read_generation_config(path, 260) == ([], [1])
    path.write_text('{"eos_token_id": ' + HUGE_DIGITS + "}")
    with pytest.raises(TokenizerError, match="generation_config.json: not valid JSON"):
        read_generation_config(path)


def test_load_tokenizer_checks_config_ids(tmp_path):
    shutil.copy(TINY_PATH, tmp_path / "config.json")
    write_tokenizer_files(tmp_path, vocab_size=260, max_length=4096)
    (tmp_path / "generation_config.json").unlink()
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"eos_token_id": 1.5}))
    with pytest.raises(TokenizerError, match=r"config.json: eos_token_id must be an integer"):
        load_tokenizer(tmp_path)


# ---- the index and safetensors headers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("numeric") / "ckpt", num_shards=2)


@pytest.fixture()
def copy(ckpt, tmp_path) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / "ckpt"))


def test_index_shard_name_too_long_for_the_os(copy):
    wm = weight_map(copy)  # found by tests/fuzz: ENAMETOOLONG escaped as an OSError
    write_weight_map(copy, wm | {"lm_head.weight": "x" * 300 + ".safetensors"})
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint(copy)


def test_index_layer_number_too_long_for_int(copy):
    wm = weight_map(copy)
    write_weight_map(copy, wm | {"model.layers." + "9" * 5000 + ".x": sorted(set(wm.values()))[0]})
    with pytest.raises(CheckpointError, match="does not hold it"):  # int() raised ValueError before
        open_checkpoint(copy)


@pytest.mark.parametrize("total", [-1, 1.5, "12", True])
def test_index_total_size(copy, total):
    index = json.loads((copy / INDEX_FILE).read_text())
    index["metadata"] = {"total_size": total}
    (copy / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"{INDEX_FILE}: metadata.total_size must be an integer >= 0"):
        open_checkpoint(copy)


@pytest.mark.parametrize("text", ['{"weight_map": ' + HUGE_DIGITS + "}", "[" * 100_000])
def test_index_hostile_json(copy, text):
    (copy / INDEX_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=f"{INDEX_FILE}: cannot read the index"):
        open_checkpoint(copy)


def _shard(path: Path, header: bytes, data: int = 0) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * data)
    return path


@pytest.mark.parametrize("header", [b"[" * 100_000, b'{"x": {"dtype": "U8", "shape": [' + HUGE_DIGITS.encode() + b"]}}",
                                    b'{"x": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 1]}}'])
def test_header_hostile_json(tmp_path, header):
    path = _shard(tmp_path / "s.safetensors", header)  # RecursionError / ValueError escaped before
    with pytest.raises(CheckpointError, match=f"shard {path}: corrupt safetensors header"):
        read_header(path)


def test_header_rank_is_bounded(tmp_path):
    shape = [1 << 40] * 200_000  # math.prod of these took minutes
    entry = {"x": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}
    path = _shard(tmp_path / "s.safetensors", json.dumps(entry).encode())
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="expected dtype, shape and data_offsets"):
        read_header(path)
    assert time.monotonic() - start < 5


def test_header_huge_offsets(tmp_path):
    entry = {"x": {"dtype": "U8", "shape": [1 << 70], "data_offsets": [0, 1 << 70]}}
    path = _shard(tmp_path / "s.safetensors", json.dumps(entry).encode(), 8)
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(path)
