"""The OpenAI-compatible routes through the `openai` client and raw httpx, against one real server (uvicorn in a
thread, the tiny model with random weights, a chat template): completions, chat, streaming, n, logprobs, stop
strings, usage, metrics, concurrency, disconnects and a bounded load test."""
from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import openai
import pytest

from tests.server.conftest import MODEL_NAME

GREEDY = dict(temperature=0, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def complete(server, **body) -> dict:
    resp = httpx.post(server.url + "/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def sse_events(resp) -> list:
    events = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_health_and_models(server, client):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = client.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [(MODEL_NAME, "model", "dsa")]
    assert models[0].model_extra["max_model_len"] == 256


def test_completion(client):
    out = client.completions.create(model=MODEL_NAME, prompt="The sparse attention", max_tokens=8, **GREEDY)
    assert out.id.startswith("cmpl-") and out.object == "text_completion" and out.model == MODEL_NAME
    assert out.created > 0 and len(out.choices) == 1
    assert out.choices[0].finish_reason == "length" and out.choices[0].text
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (21, 8, 29)
    again = client.completions.create(model=MODEL_NAME, prompt="The sparse attention", max_tokens=8, **GREEDY)
    assert again.choices[0].text == out.choices[0].text  # greedy is deterministic


def test_completion_default_max_tokens_is_16(client):
    out = client.completions.create(model=MODEL_NAME, prompt="x", **GREEDY)
    assert out.usage.completion_tokens == 16


def test_prompt_forms_and_n(server, chat_tokenizer):
    text = "same prompt"
    ids = chat_tokenizer.encode(text)
    by_text = complete(server, prompt=text, max_tokens=6, temperature=0, ignore_eos=True)["choices"][0]["text"]
    assert complete(server, prompt=ids, max_tokens=6, temperature=0, ignore_eos=True)["choices"][0]["text"] == by_text
    out = complete(server, prompt=[text, "other"], n=2, max_tokens=6, temperature=0, ignore_eos=True)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert out["choices"][0]["text"] == out["choices"][1]["text"] == by_text
    assert out["usage"]["completion_tokens"] == 24
    assert out["usage"]["prompt_tokens"] == len(ids) + len(chat_tokenizer.encode("other"))
    many = complete(server, prompt=[ids, ids[:3]], max_tokens=2, temperature=0)
    assert len(many["choices"]) == 2


def test_n_choices_are_seeded_requests(client):
    kw = dict(model=MODEL_NAME, prompt="seeded", max_tokens=12, temperature=1.0, extra_body={"ignore_eos": True})
    both = client.completions.create(n=2, seed=5, **kw)
    assert [c.index for c in both.choices] == [0, 1]
    alone = [client.completions.create(seed=s, **kw).choices[0].text for s in (5, 6)]
    assert [c.text for c in both.choices] == alone
    assert alone[0] != alone[1]


def test_chat(client, chat_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    out = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, **GREEDY)
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion"
    msg = out.choices[0].message
    assert msg.role == "assistant" and msg.content and out.choices[0].finish_reason == "length"
    want = chat_tokenizer.encode(chat_tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    assert out.usage.prompt_tokens == len(want) and out.usage.completion_tokens == 6


def test_chat_default_max_tokens_is_the_rest_of_the_context(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                         temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.prompt_tokens + out.usage.completion_tokens == 256
    assert out.choices[0].finish_reason == "length"


def test_streaming_completion_equals_the_whole_response(client):
    kw = dict(model=MODEL_NAME, prompt="Stream me", max_tokens=10, **GREEDY)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "text_completion" and c.id.startswith("cmpl-") for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_chat_role_once_then_content(client):
    kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Stream"}], max_tokens=8, **GREEDY)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    roles = [c.choices[0].delta.role for c in chunks]
    assert roles[0] == "assistant" and not any(roles[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_streaming_n2_with_raw_sse(server):
    body = {"prompt": "two", "n": 2, "max_tokens": 5, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    texts = {0: "", 1: ""}
    finished = []
    for e in events[:-1]:
        (c,) = e["choices"]
        texts[c["index"]] += c["text"]
        if c["finish_reason"]:
            finished.append(c["index"])
    assert sorted(finished) == [0, 1] and texts[0] == texts[1]
    assert events[-1]["usage"]["completion_tokens"] == 10


def test_completion_logprobs(client):
    out = client.completions.create(model=MODEL_NAME, prompt="logprobs", max_tokens=6, logprobs=3, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 3
        assert chosen == pytest.approx(max(top.values()))  # greedy: the chosen token is the most likely
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    none = client.completions.create(model=MODEL_NAME, prompt="logprobs", max_tokens=2, **GREEDY)
    assert none.choices[0].logprobs is None


def test_chat_logprobs(client):
    kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "lp"}], max_tokens=5, **GREEDY)
    out = client.chat.completions.create(logprobs=True, top_logprobs=2, **kw)
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2 and isinstance(item.bytes, list)
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)
    streamed = list(client.chat.completions.create(logprobs=True, stream=True, **kw))
    assert sum(len(c.choices[0].logprobs.content) for c in streamed if c.choices[0].logprobs) == 5


def test_stop_strings_cut_and_abort(server, client):
    kw = dict(model=MODEL_NAME, prompt="Stop strings", max_tokens=40, **GREEDY)
    full = client.completions.create(**kw).choices[0].text
    # a printable ASCII character of the output, not at its start: the text must end right before it
    cut = next(i for i, ch in enumerate(full) if i >= 3 and ch.isascii() and ch.isprintable() and ch != " ")
    stop = full[cut]
    want = full[:full.find(stop)]
    before = server.metric('dsa_request_success_total{finished_reason="stop"}')
    out = client.completions.create(stop=[stop, "never appears \u2603"], **kw)
    assert out.choices[0].text == want and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < 40
    streamed = list(client.completions.create(stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed) == want
    assert streamed[-1].choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "s"}],
                                          max_tokens=40, **GREEDY)
    text = chat.choices[0].message.content
    two = text[3:5]
    stopped = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "s"}],
                                             max_tokens=40, stop=two, **GREEDY)
    assert stopped.choices[0].message.content == text[:text.find(two)]
    server.wait_idle()  # aborted at the stop string: nothing left in the engine
    assert server.metric('dsa_request_success_total{finished_reason="stop"}') == before + 3


def test_stop_token_ids(client, chat_tokenizer):
    kw = dict(model=MODEL_NAME, prompt="stop ids", max_tokens=20, **GREEDY)
    full = client.completions.create(logprobs=0, **kw).choices[0]
    stop_id = chat_tokenizer.encode(full.logprobs.tokens[4], add_bos=False)[0]
    out = client.completions.create(extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]},
                                    **{k: v for k, v in kw.items() if k != "extra_body"})
    assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens <= 4


def test_metrics_count_tokens_and_prefix_hits(server, client):
    names = ["dsa_num_requests_running", "dsa_num_requests_waiting", "dsa_kv_cache_usage_perc",
             "dsa_prefix_cache_queries_total", "dsa_prefix_cache_hits_total", "dsa_prompt_tokens_total",
             "dsa_generation_tokens_total", "dsa_request_success_total", "dsa_time_to_first_token_seconds_count",
             "dsa_inter_token_latency_seconds_count", "dsa_e2e_request_latency_seconds_count",
             "dsa_num_preemptions_total"]
    before = {n: server.metric(n) for n in names[3:]}
    prompt = list(range(10, 60))  # 50 tokens: three full blocks of 16, the same both times
    for _ in range(2):
        out = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=4, **GREEDY)
        assert out.usage.prompt_tokens == 50
    after = {n: server.metric(n) for n in names[3:]}
    assert after["dsa_prompt_tokens_total"] - before["dsa_prompt_tokens_total"] == 100
    assert after["dsa_generation_tokens_total"] - before["dsa_generation_tokens_total"] == 8
    assert after["dsa_prefix_cache_queries_total"] - before["dsa_prefix_cache_queries_total"] == 100
    assert after["dsa_prefix_cache_hits_total"] - before["dsa_prefix_cache_hits_total"] >= 48
    assert after["dsa_time_to_first_token_seconds_count"] - before["dsa_time_to_first_token_seconds_count"] == 2
    assert after["dsa_inter_token_latency_seconds_count"] - before["dsa_inter_token_latency_seconds_count"] == 6
    assert after["dsa_e2e_request_latency_seconds_count"] - before["dsa_e2e_request_latency_seconds_count"] == 2
    text = httpx.get(server.url + "/metrics").text
    assert 'dsa_request_success_total{finished_reason="length"}' in text
    server.wait_idle()
    assert server.metric("dsa_kv_cache_usage_perc") == 0


def test_concurrent_clients_get_what_they_get_alone(server):
    prompts = [f"prompt number {i} " + "x" * (i % 5) for i in range(16)]
    body = dict(max_tokens=8, temperature=0, ignore_eos=True)
    alone = [complete(server, prompt=p, **body)["choices"][0]["text"] for p in prompts]

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            resps = await asyncio.gather(*(c.post("/v1/completions", json={"prompt": p, **body}) for p in prompts))
        assert all(r.status_code == 200 for r in resps)
        return [r.json()["choices"][0]["text"] for r in resps]

    assert asyncio.run(together()) == alone


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    before = server.metric('dsa_request_success_total{finished_reason="abort"}')
    body = {"prompt": "long stream", "max_tokens": 240, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        got = [line for line, _ in zip(lines, range(6)) if line.startswith("data: ")]
        assert got and server.metric("dsa_kv_cache_usage_perc") > 0
    server.wait_idle()
    assert server.metric('dsa_request_success_total{finished_reason="abort"}') == before + 1


def test_disconnect_while_waiting_for_a_whole_response_aborts(server):
    before = server.metric('dsa_request_success_total{finished_reason="abort"}')
    body = {"prompt": "long", "max_tokens": 240, "temperature": 0, "ignore_eos": True}
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.3)
    server.wait_idle()
    assert server.metric('dsa_request_success_total{finished_reason="abort"}') == before + 1
    assert time.monotonic() - t0 < 5


def test_load_200_requests_at_concurrency_32(server):
    rng = random.Random(0)
    jobs = [(rng.randrange(4, 9), [rng.randrange(2, 260) for _ in range(rng.randrange(3, 24))], i % 2 == 0)
            for i in range(200)]
    before = sum(server.metric(f'dsa_request_success_total{{finished_reason="{r}"}}') for r in ("stop", "length"))

    async def one(c, sem, max_tokens, prompt, stream) -> int:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": max_tokens,
                "ignore_eos": True, "stream": stream, "stream_options": {"include_usage": True} if stream else None}
        async with sem:
            if not stream:
                r = await c.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                return r.json()["usage"]["completion_tokens"]
            async with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            return json.loads(events[-2][len("data: "):])["usage"]["completion_tokens"]

    async def main():
        sem = asyncio.Semaphore(32)
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
            return await asyncio.gather(*(one(c, sem, *job) for job in jobs))

    counts = asyncio.run(main())
    assert counts == [job[0] for job in jobs]  # every request answered in full
    server.wait_idle()  # no block leaked
    after = sum(server.metric(f'dsa_request_success_total{{finished_reason="{r}"}}') for r in ("stop", "length"))
    assert after - before == 200
