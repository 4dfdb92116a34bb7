"""The text of one generated sequence as its tokens arrive, cut at stop strings.

    text = TextStream(tokenizer, stop=("\\n\\n", "END"))
    for token in tokens:
        piece = text.push(token)       # text safe to send now ("" while a character or a stop string is unsure)
        if text.stopped:               # a stop string appeared: piece ends right before it; stop generating
            break
    tail = text.finish()               # at the end: whatever was held back (still cut at a stop string)

Decoding goes through the tokenizer's incremental decoder, so a character split over several tokens is sent
whole, never as broken UTF-8. With stop strings, the longest tail of the text that could be the start of one
is held back until the next tokens decide. Released text never contains a stop string, and `text` is exactly
what a client has been sent. The logic depends only on the tokenizer's `stream_decoder()`, `decode(ids)`, and
(for exact token bytes) the built-in byte tokenizer's id layout.
"""
from __future__ import annotations

from typing import Sequence

from dsa.io.tokenizer import OFFSET, VOCAB_SIZE, ByteTokenizer


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self._decoder = tokenizer.stream_decoder()
        self._stop = tuple(stop)
        self._held = ""  # decoded, not yet released
        self.text = ""  # released so far
        self.decoded = 0  # characters decoded so far (released + held + cut), the offset of the next token's text
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; the text that can be released now."""
        if self.stopped:
            return ""
        piece = self._decoder.push(token_id)
        self.decoded += len(piece)
        return self._release(self._held + piece, final=False)

    def finish(self) -> str:
        """The end of the sequence: release what was held back (up to a stop string, if one completes)."""
        if self.stopped:
            return ""
        piece = self._decoder.flush()
        self.decoded += len(piece)
        return self._release(self._held + piece, final=True)

    def _release(self, buf: str, final: bool) -> str:
        cut = min((i for i in (buf.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held, out = True, "", buf[:cut]
        elif final:
            self._held, out = "", buf
        else:
            keep = self._unsure_tail(buf)
            self._held, out = buf[len(buf) - keep:], buf[:len(buf) - keep]
        self.text += out
        return out

    def _unsure_tail(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of a stop string."""
        longest = max((len(s) for s in self._stop), default=1) - 1
        for n in range(min(longest, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0


def token_text(tokenizer, token_id: int) -> str:
    """One token on its own as text (logprobs' `token`); a token holding part of a character shows U+FFFD."""
    return tokenizer.decode([token_id])


def token_bytes(tokenizer, token_id: int) -> list[int]:
    """The UTF-8 bytes of one token (chat logprobs' `bytes`): exact for the built-in byte tokenizer, else the
    bytes of its decoded text."""
    if isinstance(tokenizer, ByteTokenizer):
        return [token_id - OFFSET] if OFFSET <= token_id < VOCAB_SIZE else []
    return list(token_text(tokenizer, token_id).encode("utf-8"))


__all__ = ["TextStream", "token_text", "token_bytes"]
