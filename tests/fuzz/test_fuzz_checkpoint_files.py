"""model.safetensors.index.json and safetensors shard headers from any bytes: a checkpoint / a header, or a
CheckpointError naming the file - never another exception, never a hang."""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsa.errors import CheckpointError, ConfigError
from dsa.io.checkpoint import INDEX_FILE, open_checkpoint
from dsa.io.safetensors_header import read_header
from tests.fuzz.strategies import json_values, near_valid, numbers
from tests.unit.ckpt_fixtures import make_checkpoint, weight_map


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("fuzz-ckpt") / "ckpt", num_shards=2)


@pytest.fixture(scope="module")
def scratch(ckpt, tmp_path_factory) -> Path:
    """config.json and links to the real shards: each example writes its own index here."""
    d = tmp_path_factory.mktemp("fuzz-index")
    for p in ckpt.iterdir():
        if p.name != INDEX_FILE:
            os.symlink(p, d / p.name)
    return d


def check_index(d: Path, content: bytes) -> None:
    (d / INDEX_FILE).write_bytes(content)
    try:
        ckpt = open_checkpoint(d)
        ckpt.validate()
    except CheckpointError as err:
        msg = str(err)
        assert str(d) in msg or INDEX_FILE in msg or ".safetensors" in msg, msg
    except ConfigError as err:  # only config.json, which is not fuzzed here
        pytest.fail(f"ConfigError from a fuzzed index: {err}")


names = st.one_of(st.text(max_size=30), st.sampled_from(["model.layers.0.", "model.layers." + "9" * 5000 + ".x",
                                                          "model.layers.3.mlp.gate.weight", "../x", "/abs",
                                                          "model-00001-of-00002.safetensors"]))


def test_index_fuzz(ckpt, scratch):
    wm = weight_map(ckpt)
    index = {"metadata": {"total_size": 1}, "weight_map": wm}

    @given(st.one_of(
        near_valid(index),
        st.tuples(st.sampled_from(sorted(wm)), st.one_of(names, json_values)).map(
            lambda kv: {"weight_map": wm | {kv[0]: kv[1]}}),
        st.tuples(names, st.sampled_from(sorted(set(wm.values())))).map(
            lambda kv: {"weight_map": wm | {kv[0]: kv[1]}}),
        st.builds(lambda v: {"metadata": {"total_size": v}, "weight_map": wm}, numbers),
        json_values,
    ))
    def run(doc):
        check_index(scratch, json.dumps(doc).encode())

    @given(st.one_of(st.binary(max_size=300), st.just(b"[" * 100_000),
                     st.just(b'{"weight_map": 1' + b"0" * 5000 + b"}")))
    def run_bytes(content):
        check_index(scratch, content)

    run()
    run_bytes()


def check_header(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "shard.safetensors"
        path.write_bytes(content)
        try:
            infos = read_header(path)
        except CheckpointError as err:
            assert str(path) in str(err), err
            return
        for t in infos.values():
            assert 0 <= t.data_offsets[0] <= t.data_offsets[1] <= len(content)
            assert all(isinstance(s, int) and s >= 0 for s in t.shape)


def _file(header, data_len: int = 0, declared=None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    return struct.pack("<Q", n % (1 << 64)) + raw + b"\0" * data_len


dtypes = st.one_of(st.sampled_from(["F32", "BF16", "F8_E4M3", "I64", "BOOL", "F4", ""]), json_values)
offsets = st.one_of(st.lists(st.integers(min_value=0, max_value=1 << 70), min_size=2, max_size=2),
                    st.lists(numbers, max_size=3), json_values)
shapes = st.one_of(st.lists(st.integers(min_value=0, max_value=1 << 40), max_size=20), st.lists(numbers, max_size=3),
                   json_values)
entries = st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets})
headers = st.dictionaries(st.text(max_size=12), st.one_of(entries, json_values), max_size=4)


@given(headers, st.integers(min_value=0, max_value=64))
def test_random_json_headers(header, data_len):
    check_header(_file(header, data_len))


@given(st.binary(max_size=300))
def test_random_bytes(content):
    check_header(content)


@given(st.one_of(headers.map(json.dumps).map(str.encode), st.binary(max_size=64)),
       st.one_of(st.integers(min_value=0, max_value=1 << 64),
                 st.sampled_from([0, 1, 7, 8, 100 << 20, (100 << 20) + 1])))
def test_declared_lengths(raw, declared):
    check_header(_file(raw, 16, declared))


def test_truncated_real_shards(ckpt):
    shard = sorted(ckpt.glob("*.safetensors"))[0].read_bytes()
    header_end = 8 + int.from_bytes(shard[:8], "little")

    @given(st.one_of(st.integers(min_value=0, max_value=header_end + 16),
                     st.integers(min_value=0, max_value=len(shard))))
    def run(cut):
        check_header(shard[:cut])

    run()
    check_header(shard)
