"""generation_config.json's bos / eos ids from any file: integers in [0, vocab_size), or a TokenizerError naming
the file and the field - never another exception, never a hang."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dsa.errors import TokenizerError
from dsa.io.tokenizer import read_generation_config
from dsa.io.tokenizer_writer import generation_config
from tests.fuzz.strategies import json_values, near_valid, numbers

VOCAB = 260
SHIPPED = generation_config() | {"bos_token_id": 0, "eos_token_id": 1}


def check(content: bytes, vocab=VOCAB) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "generation_config.json"
        path.write_bytes(content)
        try:
            bos, eos = read_generation_config(path, vocab)
        except TokenizerError as err:
            assert str(path) in str(err), err
            return
        for i in bos + eos:
            assert isinstance(i, int) and not isinstance(i, bool) and 0 <= i < (vocab or 1 << 24)


@given(near_valid(SHIPPED))
def test_shipped_generation_config_with_one_field_replaced(raw):
    check(json.dumps(raw).encode())


@given(st.sampled_from(["bos_token_id", "eos_token_id"]),
       st.one_of(numbers, st.lists(numbers, max_size=4), json_values), st.sampled_from([VOCAB, None]))
def test_token_ids(field, value, vocab):
    check(json.dumps(SHIPPED | {field: value}).encode(), vocab)


@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.just(b"[" * 100_000), st.just(b'{"eos_token_id": 1' + b"0" * 5000 + b"}")))
def test_random_files(content):
    check(content)
