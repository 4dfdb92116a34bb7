"""ModelConfig from any dict or file: a valid config, or a ConfigError naming the file - never another exception,
never a hang. A config that parses also plans (the planner reads every dimension)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dsa.errors import ConfigError, DsaError
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import load_profile
from dsa.planning.plan import make_plan
from tests.fuzz.strategies import json_values, near_valid

ROOT = Path(__file__).resolve().parents[2]
TINY = json.loads((ROOT / "dsa/configs/models/tiny/config.json").read_text())
BIG = json.loads((ROOT / "dsa/configs/models/deepseek-v3.2-exp/config.json").read_text())
SOURCE = "fuzzed/config.json"
CPU = load_profile("cpu")


def check(raw) -> None:
    try:
        config = ModelConfig.from_dict(raw, SOURCE)
    except ConfigError as err:
        assert SOURCE in str(err), err
        return
    assert isinstance(config.hidden_size, int) and not isinstance(config.hidden_size, bool)
    try:
        make_plan(CPU, config, memory_gb=64)
    except DsaError:
        pass  # e.g. a layout the config does not fit; the point is: no other exception


@given(near_valid(TINY))
def test_tiny_config_with_one_field_replaced(raw):
    check(raw)


@given(near_valid(BIG))
def test_671b_config_with_one_field_replaced(raw):
    check(raw)


@given(st.dictionaries(st.sampled_from(sorted(TINY)), json_values, max_size=12).map(lambda d: TINY | d))
def test_tiny_config_with_many_fields_replaced(raw):
    check(raw)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=8))
def test_random_dicts(raw):
    check(raw)


@given(st.one_of(st.binary(max_size=200), json_values.map(json.dumps), near_valid(TINY).map(json.dumps),
                 st.just("[" * 100_000), st.just('{"vocab_size": 1' + "0" * 5000 + "}")))
def test_random_files(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        try:
            ModelConfig.from_file(path)
        except ConfigError as err:
            assert str(path) in str(err), err


def test_shipped_configs_still_parse():
    for raw in (TINY, BIG):
        check(raw)
        ModelConfig.from_dict(raw)
