"""The request bodies of POST /v1/completions and /v1/chat/completions, checked field by field.

    req = parse_request(body, chat=False)        # APIError 400 naming the field, or a GenerationRequest
    params = req.sampling_params(i, prompt_len, max_model_len)   # choice i's SamplingParams

Every known field is type-checked (a bool is not a number, 3.0 is not an integer); the values SamplingParams
refuses are refused with its message. Fields that would change the output but are not implemented here
(penalties, min_tokens, top_k, logit_bias, echo, tools, guided decoding, ...) are refused with a 400 saying
so, unless they hold their neutral value (presence_penalty 0, top_k -1, ...). Any other field is ignored, as
vLLM does (the OpenAI service refuses unknown fields; clients and SDKs send extras such as `user`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from dsa.engine.sampling import MAX_LOGPROBS, SamplingParams
from dsa.errors import InputError
from dsa.model.fields import is_int
from dsa.server.errors import bad_request

COMPLETION_MAX_TOKENS = 16  # the OpenAI default of /v1/completions (chat: the rest of the context)
MAX_N = 128  # choices per request (the OpenAI limit)

_NEUTRAL_NUMBER = lambda neutral: (lambda v: v is None or (_is_number(v) and v == neutral))  # noqa: E731
_FALSY = lambda v: v is None or v is False or v == [] or v == {} or v == ""  # noqa: E731
# field -> (holds its neutral value?, what to say). A request may carry these only at that value.
UNSUPPORTED = {
    "presence_penalty": (_NEUTRAL_NUMBER(0), "presence_penalty is not supported (only 0)"),
    "frequency_penalty": (_NEUTRAL_NUMBER(0), "frequency_penalty is not supported (only 0)"),
    "repetition_penalty": (_NEUTRAL_NUMBER(1), "repetition_penalty is not supported (only 1)"),
    "min_tokens": (_NEUTRAL_NUMBER(0), "min_tokens is not supported (only 0)"),
    "top_k": (lambda v: v is None or (is_int(v) and v in (0, -1)), "top_k is not supported (only -1 or 0: off)"),
    "min_p": (_NEUTRAL_NUMBER(0), "min_p is not supported (only 0)"),
    "logit_bias": (_FALSY, "logit_bias is not supported"),
    "echo": (_FALSY, "echo is not supported"),
    "suffix": (_FALSY, "suffix is not supported"),
    "best_of": (lambda v: v is None or v == 1, "best_of is not supported (only 1)"),
    "use_beam_search": (_FALSY, "beam search is not supported"),
    "prompt_logprobs": (lambda v: v is None, "prompt_logprobs is not supported"),
    "include_stop_str_in_output": (_FALSY, "include_stop_str_in_output is not supported"),
    "skip_special_tokens": (lambda v: v is None or v is True, "skip_special_tokens false is not supported"),
    "bad_words": (_FALSY, "bad_words is not supported"),
    "allowed_token_ids": (_FALSY, "allowed_token_ids is not supported"),
    "truncate_prompt_tokens": (lambda v: v is None, "truncate_prompt_tokens is not supported"),
    "response_format": (lambda v: v is None or v == {"type": "text"}, "response_format other than text is not "
                        "supported"),
    "guided_json": (_FALSY, "guided decoding is not supported"),
    "guided_regex": (_FALSY, "guided decoding is not supported"),
    "guided_choice": (_FALSY, "guided decoding is not supported"),
    "guided_grammar": (_FALSY, "guided decoding is not supported"),
    "structured_outputs": (_FALSY, "structured outputs are not supported"),
    "tools": (_FALSY, "tools are not supported"),
    "tool_choice": (lambda v: v is None or v == "none", "tool_choice is not supported (only \"none\")"),
    "functions": (_FALSY, "functions are not supported"),
    "function_call": (lambda v: v is None or v == "none", "function_call is not supported"),
    "continue_final_message": (_FALSY, "continue_final_message is not supported"),
    "add_generation_prompt": (lambda v: v is None or v is True, "add_generation_prompt false is not supported"),
    "chat_template": (_FALSY, "a per-request chat_template is not supported"),
    "audio": (_FALSY, "audio output is not supported"),
    "modalities": (lambda v: v is None or v == ["text"], "only the text modality is supported"),
    "prediction": (_FALSY, "predicted outputs are not supported"),
}
# the SamplingParams field an InputError message starts with -> the request field it came from
_PARAM_OF = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop_token_ids": "stop_token_ids",
             "ignore_eos": "ignore_eos", "logprobs": "logprobs", "max_new_tokens": "max_tokens"}


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request of either route. `prompt` stays as given (completions: a string, a list of strings,
    a list of token ids or a list of those; chat: the messages with text content); dsa.server.prompts turns it
    into token ids. `logprobs`: top-N alternatives per token (None: no logprobs at all)."""

    chat: bool
    model: Optional[str]
    prompt: Any
    max_tokens: Optional[int]  # None: the route's default
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    logprobs: Optional[int]
    params: SamplingParams  # the checked sampling fields (max_new_tokens and seed are set per choice)

    @property
    def prompt_param(self) -> str:
        return "messages" if self.chat else "prompt"

    def max_new_tokens(self, prompt_len: int, max_model_len: int) -> int:
        room = max_model_len - prompt_len
        if self.max_tokens is not None:
            return self.max_tokens
        return room if self.chat else min(COMPLETION_MAX_TOKENS, room)

    def sampling_params(self, index: int, prompt_len: int, max_model_len: int) -> SamplingParams:
        """Choice `index`'s parameters: its own seed (seed + index) when a seed is given."""
        seed = None if self.params.seed is None else self.params.seed + index
        try:
            return dataclasses.replace(self.params, max_new_tokens=self.max_new_tokens(prompt_len, max_model_len),
                                       seed=seed)
        except InputError as err:
            raise bad_request(f"{err} (choice {index} uses seed + {index})" if seed is not None else str(err),
                              _param_of(str(err))) from None


def parse_request(body: Any, chat: bool) -> GenerationRequest:
    """The request of /v1/chat/completions (chat) or /v1/completions; APIError 400 for any bad field."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    for name, (ok, why) in UNSUPPORTED.items():
        if name in body and not ok(body[name]):
            raise bad_request(f"{why}; got {name}={body[name]!r}", name, "unsupported_parameter")
    model = _optional(body, "model", _is_str, "a string")
    if chat:
        prompt = parse_messages(body.get("messages"))
        max_tokens = _max_tokens(body, "max_completion_tokens", "max_tokens")
        logprobs = _chat_logprobs(body)
    else:
        if "prompt" not in body:
            raise bad_request("prompt is required: a string, a list of strings, a list of token ids or a list of "
                              "token id lists", "prompt")
        prompt = body["prompt"]
        max_tokens = _max_tokens(body, "max_tokens")
        logprobs = _optional(body, "logprobs", lambda v: is_int(v) and 0 <= v <= MAX_LOGPROBS,
                             f"an integer in [0, {MAX_LOGPROBS}] (the number of alternatives per token)")
    n = _optional(body, "n", lambda v: is_int(v) and 1 <= v <= MAX_N, f"an integer in [1, {MAX_N}]")
    stream = _optional(body, "stream", _is_bool, "true or false") or False
    options = _optional(body, "stream_options", lambda v: isinstance(v, dict), "an object")
    if options is not None and not stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    include_usage = _optional(options or {}, "include_usage", _is_bool, "true or false",
                              param="stream_options.include_usage") or False
    stop = _stop(body.get("stop"))
    stop_ids = _optional(body, "stop_token_ids", lambda v: isinstance(v, list), "a list of token ids") or []
    sampling = dict(
        temperature=_optional(body, "temperature", _is_number, "a number", default=1.0),
        top_p=_optional(body, "top_p", _is_number, "a number", default=1.0),
        seed=_optional(body, "seed", is_int, "an integer"),
        ignore_eos=_optional(body, "ignore_eos", _is_bool, "true or false") or False,
        stop_token_ids=tuple(stop_ids), logprobs=logprobs, max_new_tokens=max_tokens or 1,
    )
    try:
        params = SamplingParams(**sampling)
    except InputError as err:
        raise bad_request(str(err), _param_of(str(err))) from None
    return GenerationRequest(chat, model, prompt, max_tokens, n or 1, stop, stream, include_usage, logprobs, params)


def parse_messages(messages: Any) -> list[dict]:
    """Chat messages as the chat template takes them: {"role": str, "content": str} (text parts joined)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages is required: a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"{where} must be an object with a string role", where)
        if m.get("tool_calls"):
            raise bad_request(f"{where}: tool calls are not supported", f"{where}.tool_calls")
        out.append({**{k: v for k, v in m.items() if k != "content"}, "content": _content(m.get("content"), where)})
    return out


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"{where}.content[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                  f"are supported, got {kind!r}", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{where}.content must be a string or a list of text parts, got "
                      f"{'null' if content is None else type(content).__name__}", f"{where}.content")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request(f"stop must be a non-empty string or a list of them, got {value!r}", "stop")
    return tuple(dict.fromkeys(stops))


def _max_tokens(body: dict, *names: str) -> Optional[int]:
    """max_tokens (chat: max_completion_tokens, its newer name, or max_tokens; both given must agree)."""
    values = {n: _optional(body, n, lambda v: is_int(v) and v >= 1, "an integer >= 1") for n in names}
    given = {n: v for n, v in values.items() if v is not None}
    if len(set(given.values())) > 1:
        raise bad_request(f"{' and '.join(given)} disagree ({', '.join(map(str, given.values()))}); give one",
                          names[0])
    return next(iter(given.values()), None)


def _chat_logprobs(body: dict) -> Optional[int]:
    want = _optional(body, "logprobs", _is_bool, "true or false")
    top = _optional(body, "top_logprobs", lambda v: is_int(v) and 0 <= v <= MAX_LOGPROBS,
                    f"an integer in [0, {MAX_LOGPROBS}]")
    if top is not None and not want:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    return (top or 0) if want else None


def _optional(body: dict, name: str, ok: Callable[[Any], bool], expected: str, default: Any = None,
              param: Optional[str] = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not ok(value):
        raise bad_request(f"{param or name} must be {expected}, got {value!r}", param or name)
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (is_int(v) or math.isfinite(v))


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _param_of(message: str) -> Optional[str]:
    return _PARAM_OF.get(message.split(" ", 1)[0])


__all__ = ["GenerationRequest", "parse_request", "parse_messages", "UNSUPPORTED", "COMPLETION_MAX_TOKENS", "MAX_N"]
