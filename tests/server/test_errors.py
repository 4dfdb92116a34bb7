"""Every error answer, with raw httpx: status, the OpenAI error shape, the field named. Servers of their own for
the API key, the full queue (an engine held by a gate), a failing engine and a model still loading."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.server.conftest import MODEL_NAME, start_server


def error_of(resp, status: int, param=None, code=None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert err["message"] and err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def post(server, route: str, **kw):
    return httpx.post(server.url + route, timeout=30, **kw)


def test_malformed_json_and_bodies(server):
    for route in ("/v1/completions", "/v1/chat/completions"):
        assert "not valid JSON" in error_of(post(server, route, content=b"{bad"), 400)["message"]
        error_of(post(server, route, content=b"\xff\xfe"), 400)
        error_of(post(server, route, content=b'{"prompt": "x", "temperature": NaN}'), 400)
        assert "JSON object" in error_of(post(server, route, json=[1, 2]), 400)["message"]
    error_of(post(server, "/v1/completions", json={}), 400, "prompt")
    error_of(post(server, "/v1/chat/completions", json={"messages": "hi"}), 400, "messages")


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "temperature": True}, "temperature"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "n": 1.5}, "n"),
    ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ({"prompt": [1, 2, "x"]}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
])
def test_wrong_types_are_400(server, body, param):
    error_of(post(server, "/v1/completions", json=body), 400, param)


def test_bad_sampling_values_carry_the_sampling_message(server):
    err = error_of(post(server, "/v1/completions", json={"prompt": "x", "temperature": -0.5}), 400, "temperature")
    assert err["message"] == "temperature must be a finite number >= 0 (0 = greedy), got -0.5"
    err = error_of(post(server, "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                               "top_p": 1.5}), 400, "top_p")
    assert err["message"].startswith("top_p must be in (0, 1]")


def test_unsupported_fields_are_refused_not_ignored(server):
    err = error_of(post(server, "/v1/completions", json={"prompt": "x", "frequency_penalty": 1.0}), 400,
                   "frequency_penalty", "unsupported_parameter")
    assert "not supported" in err["message"]
    error_of(post(server, "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                         "min_tokens": 4}), 400, "min_tokens")


def test_unknown_model(server):
    err = error_of(post(server, "/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 400, "model",
                   "model_not_found")
    assert "gpt-9" in err["message"] and MODEL_NAME in err["message"]


def test_prompt_longer_than_the_context(server):
    err = error_of(post(server, "/v1/completions", json={"prompt": "a" * 300}), 400, "prompt",
                   "context_length_exceeded")
    assert "256" in err["message"]
    error_of(post(server, "/v1/completions", json={"prompt": list(range(2, 258))}), 400, "prompt")
    error_of(post(server, "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a" * 300}]}),
             400, "messages", "context_length_exceeded")
    err = error_of(post(server, "/v1/completions", json={"prompt": "a" * 100, "max_tokens": 200}), 400,
                   "max_tokens", "context_length_exceeded")
    assert "at most 155" in err["message"]


def test_unknown_route_and_wrong_method(server):
    error_of(httpx.get(server.url + "/nope"), 404, code="not_found")
    error_of(post(server, "/v1/embeddings", json={}), 404, code="not_found")
    resp = httpx.get(server.url + "/v1/completions")
    assert "POST" in error_of(resp, 405, code="method_not_allowed")["message"]
    assert resp.headers["allow"] == "POST"
    error_of(post(server, "/v1/models"), 405)
    error_of(post(server, "/health"), 405)


def test_validation_errors_of_fastapi_become_400():
    """FastAPI's own 422 (a route with declared parameters) in the OpenAI shape, as 400."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dsa.server.errors import install

    app = FastAPI()
    install(app)

    @app.get("/typed")
    async def typed(count: int):
        return {"count": count}

    resp = TestClient(app).get("/typed", params={"count": "many"})
    err = error_of(resp, 400, "query.count")
    assert "integer" in err["message"]


# ---- the API key ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(setup, model):
    """--api-key, and the built-in byte tokenizer (no chat template)."""
    running = start_server(setup, model, api_key="sekrit")
    yield running
    running.stop()


def test_api_key_is_required_on_every_v1_route(keyed):
    routes = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}),
              ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})]
    for method, route, body in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"},
                        {"Authorization": "Basic sekrit"}):
            resp = httpx.request(method, keyed.url + route, json=body, headers=headers, timeout=30)
            assert error_of(resp, 401, code="invalid_api_key")
            assert resp.headers["www-authenticate"] == "Bearer"
    ok = {"Authorization": "Bearer sekrit"}
    assert httpx.get(keyed.url + "/v1/models", headers=ok).status_code == 200
    resp = httpx.post(keyed.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=ok, timeout=30)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] <= 2
    assert httpx.get(keyed.url + "/health").status_code == 200  # no key needed
    assert httpx.get(keyed.url + "/metrics").status_code == 200


def test_chat_without_a_chat_template_is_400(keyed):
    resp = httpx.post(keyed.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                      headers={"Authorization": "Bearer sekrit"}, timeout=30)
    assert "no chat template" in error_of(resp, 400, "messages")["message"]


# ---- a full queue, a failing engine, a model still loading -----------------------------------------
class Gated:
    """An EngineCore whose steps wait for `gate`: the engine is blocked until the test opens it."""

    def __init__(self, core):
        self._core, self.gate, self.entered = core, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._core, name)

    def step(self):
        self.entered.set()
        self.gate.wait(30)
        return self._core.step()


def test_full_queue_is_503_with_retry_after(setup, model):
    cores = []
    running = start_server(setup, model, max_queue_len=1, wrap=lambda c: cores.append(Gated(c)) or cores[-1])
    try:
        gated = cores[0]

        async def scenario():
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as c:
                body = {"prompt": "queued", "max_tokens": 2, "temperature": 0}
                first = asyncio.ensure_future(c.post("/v1/completions", json=body))
                while not gated.entered.is_set():  # the first request is in the engine, which is now blocked
                    await asyncio.sleep(0.01)
                more = [asyncio.ensure_future(c.post("/v1/completions", json=body)) for _ in range(4)]
                deadline = time.monotonic() + 10
                while sum(t.done() for t in more) < 3 and time.monotonic() < deadline:  # refused ones answer at once
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # nothing else may answer while the engine is blocked
                refused = [t.result() for t in more if t.done()]
                waiting = [t for t in more if not t.done()]
                gated.gate.set()
                return refused, await asyncio.gather(first, *waiting)

        refused, rest = asyncio.run(scenario())
        assert len(refused) == 3
        for resp in refused:
            err = error_of(resp, 503, code="queue_full")
            assert "queue is full" in err["message"] and resp.headers["retry-after"] == "1"
        assert [r.status_code for r in rest] == [200, 200]  # the running one and the one waiting in the queue
    finally:
        cores[0].gate.set()
        running.stop()


class FailsAt:
    """An EngineCore whose step number `at` raises (the device failing)."""

    def __init__(self, core, at: int):
        self._core, self.at, self.calls = core, at, 0

    def __getattr__(self, name):
        return getattr(self._core, name)

    def step(self):
        self.calls += 1
        if self.calls >= self.at:
            raise RuntimeError("boom: the device fell off")
        return self._core.step()


def test_engine_failure_is_500_and_ends_streams_with_an_error(setup, model):
    running = start_server(setup, model, wrap=lambda c: FailsAt(c, 3))
    try:
        body = {"prompt": "fail", "max_tokens": 20, "temperature": 0, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", running.url + "/v1/completions", json=body, timeout=30) as resp:
            assert resp.status_code == 200  # the first token came before the failure
            events = [line for line in resp.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert '"error"' in events[-2] and "boom" in events[-2] and '"server_error"' in events[-2]
        err = error_of(post(running, "/v1/completions", json={"prompt": "x"}), 500, code="engine_failed")
        assert "boom: the device fell off" in err["message"]
        health = httpx.get(running.url + "/health")
        assert health.status_code == 500 and "boom" in health.json()["error"]
    finally:
        running.stop()


def test_health_is_503_while_loading_then_200(setup, model):
    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return setup.make_engine(model, (1,)).core

    running = start_server(setup, model, loader=slow_loader, wait_ready=False)
    try:
        resp = httpx.get(running.url + "/health", timeout=10)  # the port answers before the model is in
        assert resp.status_code == 503 and resp.json() == {"status": "loading"}
        resp = post(running, "/v1/completions", json={"prompt": "x"})
        assert error_of(resp, 503, code="model_loading") and resp.headers["retry-after"] == "1"
        assert httpx.get(running.url + "/v1/models").status_code == 200  # the model's facts are known already
        release.set()
        deadline = time.monotonic() + 10
        while httpx.get(running.url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert post(running, "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
    finally:
        release.set()
        running.stop()


def test_client_gone_before_the_first_token_aborts_its_request(setup, model):
    """A client that leaves while its request waits in a blocked engine: once the engine moves, the request is
    aborted (not run to max_tokens), streamed or not."""
    cores = []
    running = start_server(setup, model, wrap=lambda c: cores.append(Gated(c)) or cores[-1])
    try:
        gated = cores[0]
        aborts = 'dsa_request_success_total{finished_reason="abort"}'
        before = running.metric(aborts)
        for stream in (True, False):
            gated.gate.clear()
            gated.entered.clear()
            body = {"prompt": "gone", "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": stream}
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(running.url + "/v1/completions", json=body, timeout=0.5)
            assert gated.entered.wait(10)
            gated.gate.set()
            running.wait_idle()
        assert running.metric(aborts) == before + 2
        assert running.metric("dsa_generation_tokens_total") < 20  # neither ran to its 200 tokens
    finally:
        cores[0].gate.set()
        running.stop()
