"""The server's pure parts, without a server: TextStream (incremental text, stop strings), request parsing,
prompt translation and response shapes."""
from __future__ import annotations

import itertools

import pytest

from dsa.io.tokenizer import ByteTokenizer
from dsa.server.errors import APIError
from dsa.server.generate import ChoiceDelta, ChoiceResult, TokenInfo
from dsa.server.prompts import check_context, completion_prompts
from dsa.server.protocol import COMPLETION_MAX_TOKENS, parse_request
from dsa.server.responses import Responses, usage
from dsa.server.stream import TextStream, token_bytes

BYTES = ByteTokenizer()


def ids(text: str) -> list[int]:
    return BYTES.encode(text, add_bos=False)


def run(text: str, stop=(), tokenizer=BYTES):
    """Push `text` token by token; (pieces released per token, tail, stopped)."""
    s = TextStream(tokenizer, stop)
    pieces = []
    for t in tokenizer.encode(text, add_bos=False):
        pieces.append(s.push(t))
        if s.stopped:
            break
    tail = s.finish()
    assert s.text == "".join(pieces) + tail
    return pieces, tail, s.stopped


# ---- TextStream -------------------------------------------------------------------------------------
def test_multibyte_characters_are_never_split():
    pieces, tail, stopped = run("héllo €")
    assert "".join(pieces) + tail == "héllo €" and not stopped
    assert all("\ufffd" not in p for p in pieces)
    # "€" is three bytes: nothing is released until the last one
    assert pieces[-3:] == ["", "", "€"]


@pytest.mark.parametrize("text, stop, want", [
    ("Hello world. Bye", ["."], "Hello world"),
    ("Hello world. Bye", ["world", "."], "Hello "),      # the earliest stop string wins
    ("abcabd", ["abd"], "abc"),                          # a false start is released once it fails
    ("no stop here", ["zzz"], "no stop here"),
    ("ends with sto", ["stop"], "ends with sto"),        # a held prefix is released at the end
    ("aaab", ["aab"], "a"),                              # overlapping candidates
    ("price: 5€ ok", ["€"], "price: 5"),                 # a multibyte stop string
])
def test_stop_strings_cut_the_text(text, stop, want):
    pieces, tail, stopped = run(text, stop)
    assert "".join(pieces) + tail == want
    assert stopped == (want != text)


def test_text_that_could_start_a_stop_string_is_held_back():
    s = TextStream(BYTES, ["END"])
    released = [s.push(t) for t in ids("xxEN")]
    assert "".join(released) == "xx"  # "EN" could become "END"
    assert s.push(ids("D")[0]) == "" and s.stopped
    assert s.text == "xx"


def test_held_text_is_released_when_it_cannot_become_a_stop_string():
    s = TextStream(BYTES, ["END"])
    out = "".join(s.push(t) for t in ids("xxEN"))
    out += s.push(ids("!")[0])
    assert out == "xxEN!" and not s.stopped


def test_released_text_never_contains_a_stop_string_over_many_splits():
    # every split of a text into tokens: the byte tokenizer gives one token per byte, so vary the stop set
    text = "the cat sat on the mat"
    for a, b in itertools.combinations(range(len(text) + 1), 2):
        stop = text[a:b]
        pieces, tail, stopped = run(text, [stop])
        got = "".join(pieces) + tail
        assert got == text[:text.find(stop)] and stopped
        assert stop not in got


def test_hf_tokenizer_stream_matches_its_decode(chat_tokenizer):
    text = "Grüße, 世界! ok"
    ids_ = chat_tokenizer.encode(text, add_bos=False)
    s = TextStream(chat_tokenizer, [])
    out = "".join(s.push(t) for t in ids_) + s.finish()
    assert out == chat_tokenizer.decode(ids_) == text
    pieces, tail, stopped = run(text, ["世"], tokenizer=chat_tokenizer)
    assert "".join(pieces) + tail == "Grüße, " and stopped


def test_token_bytes_of_the_byte_tokenizer_are_exact():
    assert token_bytes(BYTES, ids("€")[0]) == ["€".encode()[0]]
    assert token_bytes(BYTES, 1) == []  # eos has no bytes


def test_empty_stop_string_is_refused():
    with pytest.raises(ValueError):
        TextStream(BYTES, [""])


# ---- request parsing --------------------------------------------------------------------------------
def bad(body, chat=False) -> APIError:
    with pytest.raises(APIError) as info:
        parse_request(body, chat)
    assert info.value.status == 400
    return info.value


def test_completion_defaults():
    req = parse_request({"prompt": "x"}, chat=False)
    assert (req.n, req.stream, req.stop, req.logprobs, req.max_tokens) == (1, False, (), None, None)
    assert req.params.temperature == 1.0 and req.params.top_p == 1.0  # OpenAI's defaults
    assert req.max_new_tokens(prompt_len=10, max_model_len=256) == COMPLETION_MAX_TOKENS
    assert req.max_new_tokens(prompt_len=250, max_model_len=256) == 6  # capped to what the context holds


def test_chat_defaults_to_the_rest_of_the_context():
    req = parse_request({"messages": [{"role": "user", "content": "x"}]}, chat=True)
    assert req.max_new_tokens(prompt_len=56, max_model_len=256) == 200


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 3.0}, "max_tokens"),
    ({"prompt": "x", "n": True}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "seed": -5}, "seed"),
    ({"prompt": "x", "stop": ""}, "stop"),
    ({"prompt": "x", "stop": ["a", 3]}, "stop"),
    ({"prompt": "x", "stop_token_ids": [1, -2]}, "stop_token_ids"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "x", "top_k": 5}, "top_k"),
    ({"prompt": "x", "min_tokens": 3}, "min_tokens"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "model": 7}, "model"),
    ({}, "prompt"),
])
def test_bad_completion_fields_name_the_field(body, param):
    assert bad(body).param == param


def test_sampling_value_errors_are_sampling_params_messages():
    assert bad({"prompt": "x", "temperature": -1}).message.startswith("temperature must be a finite number >= 0")
    assert bad({"prompt": "x", "top_p": 2}).message.startswith("top_p must be in (0, 1]")


def test_neutral_values_of_unsupported_fields_are_accepted_and_unknown_fields_ignored():
    req = parse_request({"prompt": "x", "presence_penalty": 0, "frequency_penalty": 0.0, "top_k": -1,
                         "min_tokens": 0, "echo": False, "logit_bias": {}, "user": "u1", "whatever": [1]}, chat=False)
    assert req.prompt == "x"


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": 1}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "max_completion_tokens": 5},
     "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
])
def test_bad_chat_fields_name_the_field(body, param):
    assert bad(body, chat=True).param == param


def test_chat_text_parts_are_joined_and_logprobs_mapped():
    req = parse_request({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                    {"type": "text", "text": "b"}]}],
                         "logprobs": True, "top_logprobs": 3, "max_completion_tokens": 7}, chat=True)
    assert req.prompt == [{"role": "user", "content": "ab"}]
    assert req.logprobs == 3 and req.params.logprobs == 3 and req.max_tokens == 7


def test_choice_seeds_are_seed_plus_index():
    req = parse_request({"prompt": "x", "seed": 10, "n": 3}, chat=False)
    assert [req.sampling_params(i, 1, 256).seed for i in range(3)] == [10, 11, 12]
    assert parse_request({"prompt": "x"}, chat=False).sampling_params(1, 1, 256).seed is None
    top = parse_request({"prompt": "x", "seed": 2**63 - 1, "n": 2}, chat=False)
    with pytest.raises(APIError) as info:
        top.sampling_params(1, 1, 256)
    assert info.value.param == "seed"


# ---- prompts ----------------------------------------------------------------------------------------
def test_prompt_forms():
    assert completion_prompts(BYTES, "ab", 260) == [BYTES.encode("ab")]
    assert completion_prompts(BYTES, ["a", "b"], 260) == [BYTES.encode("a"), BYTES.encode("b")]
    assert completion_prompts(BYTES, [5, 6], 260) == [[5, 6]]
    assert completion_prompts(BYTES, [[5], [6, 7]], 260) == [[5], [6, 7]]


@pytest.mark.parametrize("prompt", [[], [[]], [5, "a"], [5, 260], [[5], [True]], {"a": 1}, 5, [1.5]])
def test_bad_prompts(prompt):
    with pytest.raises(APIError) as info:
        completion_prompts(BYTES, prompt, 260)
    assert info.value.status == 400 and info.value.param == "prompt"


def test_context_checks():
    req = parse_request({"prompt": "x", "max_tokens": 10}, chat=False)
    check_context(req, [1] * 246, 256)
    with pytest.raises(APIError) as info:
        check_context(req, [1] * 247, 256)
    assert info.value.param == "max_tokens" and "at most 9" in info.value.message
    with pytest.raises(APIError) as info:
        check_context(parse_request({"prompt": "x"}, chat=False), [1] * 256, 256)
    assert info.value.param == "prompt" and info.value.code == "context_length_exceeded"


# ---- responses --------------------------------------------------------------------------------------
def test_response_shapes():
    info = TokenInfo("a", [97], -0.5, (("a", -0.5, [97]), ("b", float("-inf"), [98])), 0)
    res = [ChoiceResult(0, "a", [info], "length", 1)]
    comp = Responses(chat=False, request_id="cmpl-1", model="m", logprobs=True).full(res, usage(3, 1))
    assert comp["object"] == "text_completion" and comp["usage"] == {"prompt_tokens": 3, "completion_tokens": 1,
                                                                    "total_tokens": 4}
    assert comp["choices"][0]["logprobs"] == {"tokens": ["a"], "token_logprobs": [-0.5],
                                              "top_logprobs": [{"a": -0.5, "b": -9999.0}], "text_offset": [0]}
    chat = Responses(chat=True, request_id="chatcmpl-1", model="m", logprobs=True).full(res, usage(3, 1))
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"] == {"role": "assistant",
                                                                                    "content": "a"}
    assert chat["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1] == {"token": "b", "logprob": -9999.0,
                                                                               "bytes": [98]}
    out = Responses(chat=True, request_id="chatcmpl-1", model="m", include_usage=True)
    assert out.role_chunk(0)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = out.chunk(ChoiceDelta(0, "", [], "stop"))
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"] is None and out.usage_chunk(usage(1, 2))["choices"] == []
