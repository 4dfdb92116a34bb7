"""dsa.train.passkeys: the passkey pairs mixed into training windows (and the format dsa eval asks for)."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer

from dsa.configs import CONFIG_DIR
from dsa.train.passkeys import KEY_RANGE, PasskeyMixer, word_pool

TOKENIZER = CONFIG_DIR / "models" / "mini" / "tokenizer.json"
TEXT = "".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n" for i in range(40))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(str(TOKENIZER))


def _windows(tok, n=6, length=200):
    ids = torch.tensor(tok.encode(TEXT, add_special_tokens=False).ids)
    assert ids.numel() > length
    return torch.stack([ids[i:i + length] for i in range(n)])


def test_words_are_one_token_lower_case(tok):
    pool = word_pool(tok)
    assert len(pool) > 100
    for t in pool[:50]:
        text = tok.decode([t])
        assert text.isalpha() and text.islower() and len(text) >= 3
        assert tok.encode(text, add_special_tokens=False).ids == [t]


def test_every_row_gets_a_definition_and_a_later_query_of_the_same_word(tok):
    mix = PasskeyMixer(tok, rate=1.0, seed=3)
    ids = _windows(tok)
    out = mix(ids)
    assert out.shape == ids.shape and out.dtype == ids.dtype
    for row in out:
        text = tok.decode(row.tolist())
        lines = [line for line in text.split("\n") if line.startswith("KEY_")]
        assert len(lines) == 2 and lines[0] == lines[1], lines  # definition, then the query with the answer
        name, value = lines[0].split(" = ")
        assert KEY_RANGE[0] <= int(name[4:]) < KEY_RANGE[1] and value.startswith('"') and value.endswith('"')
        assert text.index(lines[0]) < text.rindex(lines[1])
        assert text.index(lines[0]) == 0 or text[text.index(lines[0]) - 1] == "\n"  # at a line start


def test_rate_zero_and_seeds(tok):
    ids = _windows(tok)
    assert torch.equal(PasskeyMixer(tok, rate=0.0, seed=0)(ids), ids)
    a, b = PasskeyMixer(tok, 0.5, seed=1), PasskeyMixer(tok, 0.5, seed=1)
    assert torch.equal(a(ids), b(ids))  # reproducible from the seed
    mixed = sum(not torch.equal(r, o) for r, o in zip(PasskeyMixer(tok, 0.5, seed=2)(_windows(tok, 40)),
                                                      _windows(tok, 40)))
    assert 8 <= mixed <= 32  # about half of 40
    with pytest.raises(ValueError, match="rate"):
        PasskeyMixer(tok, 1.5, seed=0)
