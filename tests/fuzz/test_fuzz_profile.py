"""Device profiles from any YAML document or text: a valid profile, or a ProfileError naming the file - never
another exception, never a hang. A profile that parses also plans (the planner reads every number)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from dsa.errors import DsaError, ProfileError
from dsa.model.config import ModelConfig
from dsa.planning.device_profile import DEVICES_DIR, MAX_NODES, load_profile, parse_profile
from dsa.planning.plan import make_plan
from tests.fuzz.strategies import json_values, near_valid, numbers

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig.from_file(ROOT / "dsa/configs/models/tiny")
CPU = yaml.safe_load((DEVICES_DIR / "cpu.yaml").read_text())
H200 = yaml.safe_load((DEVICES_DIR / "h200.yaml").read_text())


def check(raw, name: str) -> None:
    path = f"fuzzed/{name}.yaml"
    try:
        profile = parse_profile(raw, path)
    except ProfileError as err:
        assert path in str(err), err
        return
    assert 0 < profile.memory_gb <= 1e6 and 1 <= profile.layout.nodes <= MAX_NODES
    try:
        make_plan(profile, TINY)
    except DsaError:
        pass


@given(near_valid(CPU))
def test_cpu_profile_with_one_field_replaced(raw):
    check(raw, raw.get("name") if isinstance(raw.get("name"), str) and raw["name"].isidentifier() else "cpu")


@given(near_valid(H200))
def test_h200_profile_with_one_field_replaced(raw):
    check(raw, "h200")


@given(st.sampled_from(["memory_gb", "devices_per_node"]), numbers)
def test_cpu_profile_numbers(field, value):
    check(CPU | {field: value}, "cpu")


@given(st.sampled_from(["tp", "dp_attention", "ep", "nodes"]), numbers)
def test_cpu_profile_layout_numbers(field, value):
    check(CPU | {"layout": CPU["layout"] | {field: value}}, "cpu")


@given(json_values)
def test_random_documents(raw):
    check(raw, "cpu")


YAML_NUMBERS = [".nan", ".inf", "-.inf", "1.0e+300", "0x" + "f" * 5000, "1" * 5000, "0o777", "1_000", "128.0", "true",
                "null", "~", "[1]", "{a: 1}", "2001-12-14", "!!binary aGVsbG8=", "'8'"]


@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.tuples(st.sampled_from(["memory_gb", "devices_per_node", "  page_size", "  nodes", "  tp"]),
              st.one_of(st.sampled_from(YAML_NUMBERS), st.text(max_size=20))).map(
        lambda fv: _replace_line(fv[0], fv[1])),
    st.just("[" * 50_000),
    st.just("a: &a [1]\n" + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")))))
def test_random_yaml_files(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cpu.yaml"
        path.write_text(text, errors="surrogateescape")
        try:
            profile = load_profile(str(path))
        except ProfileError as err:
            assert str(path) in str(err), err
            return
        make_plan(profile, TINY)


def _replace_line(field: str, value: str) -> str:
    text = (DEVICES_DIR / "cpu.yaml").read_text()
    if field.startswith("  "):  # a nested key, written inline in cpu.yaml
        key = field.strip()
        return re.sub(rf"\b{key}: \d+", lambda m: f"{key}: {value}", text, count=1)
    return "\n".join(f"{field}: {value}" if line.startswith(f"{field}:") else line for line in text.splitlines())
