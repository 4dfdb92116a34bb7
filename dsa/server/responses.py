"""The JSON the OpenAI API answers with: whole responses, stream chunks, usage and logprobs.

    out = Responses(chat=True, request_id="chatcmpl-...", model="tiny")
    out.full(results, usage(prompt_tokens, completion_tokens))     # "chat.completion" | "text_completion"
    out.role_chunk(0); out.chunk(delta); out.usage_chunk(u)         # "chat.completion.chunk" | "text_completion"

Logprobs: completions get {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}; chat gets
{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}. Log-probabilities are the
model's (before temperature and top_p); -inf is sent as -9999.0 (JSON has no infinity).
"""
from __future__ import annotations

import math
import time
import uuid
from typing import Optional, Sequence

from dsa.server.generate import ChoiceDelta, ChoiceResult, TokenInfo

NO_LOGPROB = -9999.0


def new_request_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _lp(value: float) -> float:
    return value if math.isfinite(value) else NO_LOGPROB


def _top_dict(top) -> dict:
    """{token text: logprob}, best first; tokens with the same text (say, two partial characters, both U+FFFD)
    keep the better logprob."""
    out: dict = {}
    for text, value, _ in top:
        out.setdefault(text, _lp(value))
    return out


def completion_logprobs(infos: Sequence[TokenInfo]) -> dict:
    return {"tokens": [i.token for i in infos], "token_logprobs": [_lp(i.logprob) for i in infos],
            "top_logprobs": [_top_dict(i.top) for i in infos], "text_offset": [i.offset for i in infos]}


def chat_logprobs(infos: Sequence[TokenInfo]) -> dict:
    return {"content": [{"token": i.token, "logprob": _lp(i.logprob), "bytes": i.bytes,
                         "top_logprobs": [{"token": t, "logprob": _lp(v), "bytes": b} for t, v, b in i.top]}
                        for i in infos]}


class Responses:
    def __init__(self, *, chat: bool, request_id: str, model: str, logprobs: bool = False,
                 include_usage: bool = False, created: Optional[int] = None):
        self.chat, self.id, self.model, self.logprobs = chat, request_id, model, logprobs
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _logprobs(self, infos: Sequence[TokenInfo]) -> Optional[dict]:
        if not self.logprobs:
            return None
        return chat_logprobs(infos) if self.chat else completion_logprobs(infos)

    # ---- whole responses ----------------------------------------------------------------------------
    def full(self, results: Sequence[ChoiceResult], use: dict) -> dict:
        if self.chat:
            choices = [{"index": r.index, "message": {"role": "assistant", "content": r.text},
                        "logprobs": self._logprobs(r.logprobs), "finish_reason": r.finish_reason} for r in results]
            return {**self._head("chat.completion"), "choices": choices, "usage": use}
        choices = [{"index": r.index, "text": r.text, "logprobs": self._logprobs(r.logprobs),
                    "finish_reason": r.finish_reason} for r in results]
        return {**self._head("text_completion"), "choices": choices, "usage": use}

    # ---- stream chunks ------------------------------------------------------------------------------
    def _chunk(self, choice: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        out = {**self._head(obj), "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    def role_chunk(self, index: int) -> dict:
        """A chat choice's first chunk: the role, once."""
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})

    def chunk(self, delta: ChoiceDelta) -> dict:
        logprobs = self._logprobs(delta.logprobs) if delta.logprobs else None
        if self.chat:
            body = {"content": delta.text} if delta.text else {}
            return self._chunk({"index": delta.index, "delta": body, "logprobs": logprobs,
                                "finish_reason": delta.finish_reason})
        return self._chunk({"index": delta.index, "text": delta.text, "logprobs": logprobs,
                            "finish_reason": delta.finish_reason})

    def usage_chunk(self, use: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": use}


__all__ = ["Responses", "usage", "new_request_id", "completion_logprobs", "chat_logprobs", "NO_LOGPROB"]
