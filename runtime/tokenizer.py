"""The built-in byte-level tokenizer used with the built-in (random-weight) model.

Ids 0..3 are special (0 <bos>, 1 <eos>, 2 <pad>, 3 <unk>, matching DeepSeek's bos 0 / eos 1); byte b is
id b + 4, so the vocabulary has 260 entries. Any text round-trips. Real checkpoints bring their own
tokenizer.json (issue 3).
"""
from __future__ import annotations

import codecs

BOS, EOS, PAD, UNK = 0, 1, 2, 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET


class ByteTokenizer:
    bos_token_id = BOS
    eos_token_id = EOS
    vocab_size = VOCAB_SIZE

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [b + OFFSET for b in text.encode("utf-8")]
        return [BOS, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i - OFFSET for i in ids if OFFSET <= i < VOCAB_SIZE).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder()


class StreamDecoder:
    """Turns ids into text one at a time, holding back incomplete UTF-8 sequences."""

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if OFFSET <= token_id < VOCAB_SIZE:
            return self._utf8.decode(bytes([token_id - OFFSET]))
        return ""

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
