"""Prompts of a request as token ids: completion prompts (text or ids, one or many) and chat messages through
the tokenizer's chat template; each checked against the vocabulary and the context.

    prompts = request_prompts(req, tokenizer, vocab_size)     # list of id lists (APIError 400 when bad)
    check_context(req, ids, max_model_len)                     # the prompt + max_tokens fit the context
"""
from __future__ import annotations

from typing import Any

from dsa.errors import DsaError
from dsa.io.tokenizer import clean_text
from dsa.model.fields import is_int
from dsa.server.errors import bad_request
from dsa.server.protocol import GenerationRequest

PROMPT_FORMS = "a string, a list of strings, a list of token ids or a list of token id lists"


def request_prompts(req: GenerationRequest, tokenizer, vocab_size: int) -> list[list[int]]:
    if req.chat:
        return [chat_prompt(tokenizer, req.prompt)]
    return completion_prompts(tokenizer, req.prompt, vocab_size)


def completion_prompts(tokenizer, prompt: Any, vocab_size: int) -> list[list[int]]:
    """The token ids of each prompt of /v1/completions (text is encoded as `dsa run --raw` does, bos first)."""
    if isinstance(prompt, str):
        return [tokenizer.encode(clean_text(prompt))]
    if not isinstance(prompt, list) or not prompt:
        raise bad_request(f"prompt must be {PROMPT_FORMS} (non-empty), got {_show(prompt)}", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(clean_text(p)) for p in prompt]
    if all(is_int(t) for t in prompt):
        return [_token_ids(prompt, vocab_size, "prompt")]
    if all(isinstance(p, list) for p in prompt):
        return [_token_ids(p, vocab_size, f"prompt[{i}]") for i, p in enumerate(prompt)]
    raise bad_request(f"prompt must be {PROMPT_FORMS}; a list may not mix them, got {_show(prompt)}", "prompt")


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of a conversation, formatted by the model's chat template with the assistant's turn open."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise bad_request("this model has no chat template (its tokenizer_config.json names none), so "
                          "/v1/chat/completions cannot format messages; use /v1/completions", "messages")
    cleaned = [{**m, "content": clean_text(m["content"])} for m in messages]
    try:
        text = tokenizer.apply_chat_template(cleaned, add_generation_prompt=True)
    except DsaError as err:
        raise bad_request(str(err), "messages") from None
    return tokenizer.encode(text)


def check_context(req: GenerationRequest, ids: list[int], max_model_len: int) -> None:
    """A prompt must leave room for at least one token, and for max_tokens when given."""
    n = len(ids)
    if n >= max_model_len:
        raise bad_request(f"the prompt has {n} tokens but this model's context (max_model_len) is {max_model_len} "
                          "tokens, and a prompt must leave room for at least one generated token; shorten it",
                          req.prompt_param, "context_length_exceeded")
    if req.max_tokens is not None and n + req.max_tokens > max_model_len:
        raise bad_request(f"max_tokens {req.max_tokens} plus the prompt's {n} tokens exceed this model's context "
                          f"of {max_model_len} tokens; ask for at most {max_model_len - n}", "max_tokens",
                          "context_length_exceeded")


def _token_ids(ids: list, vocab_size: int, where: str) -> list[int]:
    if not ids:
        raise bad_request(f"{where} is an empty list of token ids; give at least one", "prompt")
    bad = [t for t in ids if not (is_int(t) and 0 <= t < vocab_size)][:1]
    if bad:
        raise bad_request(f"{where}: token ids must be integers in [0, {vocab_size}), got {_show(bad[0])}", "prompt")
    return list(ids)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["request_prompts", "completion_prompts", "chat_prompt", "check_context"]
