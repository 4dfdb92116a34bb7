"""Passkeys: a one-token word bound to a name early in a window and asked for late, in training and in eval.

    KEY_1234 = "word"        <- the definition, at a line start
    ... other code ...
    KEY_1234 = "word"        <- the query: the model must copy the word from the definition

Plain code rarely needs a token from more than top-k tokens back, so a model trained on it alone does not
learn to look that far and the retrieval measurement of `dsa eval` has nothing to compare (dense and sparse
both at chance). `PasskeyMixer` puts one such pair into a share of the training windows (`Recipe.passkey_rate`):
the LM loss on the second word teaches the copy, names and words drawn afresh each time so nothing can be
memorised. `dsa eval` (dsa.train.eval.retrieval_cases) builds its cases from held-out files with the same
format and its own seed.
"""
from __future__ import annotations

import random
import re
from typing import Optional

import torch
from torch import Tensor

WORD = re.compile(r"[a-z]{3,}")  # the passkey values: one-token lower-case words
KEY_RANGE = (1000, 10000)  # KEY_<4 digits>


def word_pool(tok) -> list[int]:
    """Token ids that are a lower-case word of >= 3 letters encoding to themselves (the passkey values);
    every single-letter token too when the vocabulary has too few (a byte-level tokenizer)."""
    pool, letters = [], []
    for tid in range(tok.get_vocab_size()):
        text = tok.decode([tid])
        if re.fullmatch(r"[a-z]+", text) and tok.encode(text, add_special_tokens=False).ids == [tid]:
            (pool if WORD.fullmatch(text) else letters).append(tid)
    return pool if len(pool) >= 16 else sorted(pool + letters)


def newline_table(tok) -> Tensor:
    """bool [vocab]: the token's text ends with a newline (the next token starts a line)."""
    return torch.tensor([tok.decode([t]).endswith("\n") for t in range(tok.get_vocab_size())])


def line_starts(newline: Tensor, code: Tensor, lo: int, hi: int) -> list[int]:
    """Offsets in [lo, hi] of `code` where a line starts (right after a token `newline` marks), ascending; []
    when there are none."""
    first = max(0, lo - 1)
    after = newline[code[first:max(first, min(hi, code.numel()))]].nonzero().flatten() + first + 1
    return [i for i in after.tolist() if lo <= i <= hi]


def _encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def encode_pair(tok, name: str, word: int, close: Optional[list[int]] = None) -> tuple[list[int], list[int], list[int]]:
    """The one passkey format, as ids: (head, definition, query) with head `{name} = "`, definition head + word +
    `"\n`, query `\n{name} = "` (it stops where the word is asked for). `close`: the ids of `"\n` when the caller
    has them already."""
    head = _encode(tok, f'{name} = "')
    return head, head + [word] + (_encode(tok, '"\n') if close is None else close), _encode(tok, f'\n{name} = "')


class PasskeyMixer:
    """Puts one definition / query pair into each window with probability `rate` (windows keep their length:
    the tail of the original text is dropped). Deterministic from `seed`."""

    def __init__(self, tok, rate: float, seed: int):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"passkey rate must lie in [0, 1], got {rate}")
        self.tok, self.rate = tok, rate
        self.pool = word_pool(tok)
        self.newline = newline_table(tok)
        self.rng = random.Random(f"passkeys-{seed}")
        self.close = _encode(tok, '"\n')  # the same ids in every pair

    def pair(self) -> tuple[list[int], list[int]]:
        """(definition ids, query ids) of a fresh name and word; the query ends with the word and its quote."""
        name, word = f"KEY_{self.rng.randrange(*KEY_RANGE)}", self.rng.choice(self.pool)
        _, definition, query = encode_pair(self.tok, name, word, self.close)
        return definition, query + [word] + self.close

    def mix(self, row: Tensor) -> Tensor:
        """row [n] -> [n]: the definition at a line start in the first half, the query somewhere after the
        middle of what follows it."""
        definition, query = self.pair()
        room = row.numel() - len(definition) - len(query)
        if room < 8:
            return row
        body = row[:room]
        starts = line_starts(self.newline, body.clamp(0, self.newline.numel() - 1), 0, room // 2)
        at = self.rng.choice(starts) if starts else self.rng.randrange(room // 2 + 1)
        ask = self.rng.randrange(at + (room - at) // 2, room + 1)
        return torch.cat([body[:at], torch.tensor(definition, dtype=row.dtype), body[at:ask],
                          torch.tensor(query, dtype=row.dtype), body[ask:]])

    def __call__(self, ids: Tensor) -> Tensor:
        """ids [B, n] -> [B, n] with passkeys in about `rate` of the rows."""
        if self.rate == 0.0:
            return ids
        return torch.stack([self.mix(r) if self.rng.random() < self.rate else r for r in ids])


__all__ = ["PasskeyMixer", "word_pool", "newline_table", "line_starts", "encode_pair", "WORD", "KEY_RANGE"]
