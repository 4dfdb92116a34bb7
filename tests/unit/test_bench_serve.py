"""dsa bench serve (dsa.bench.serve, dsa.bench.serve_command) against a fake OpenAI-compatible streaming server.

The fake (FastAPI + uvicorn on 127.0.0.1, port 0, in a thread) streams one SSE chunk per token, records the
peak of concurrent requests, fails on demand (HTTP 500, or a connection cut mid-stream) and can expose
Prometheus prefix-cache counters. The in-process path runs against a fake async engine.
"""
import argparse
import asyncio
import json
import math
import socket
import statistics
import threading
import time
from dataclasses import dataclass

import pytest

from dsa.bench import serve
from dsa.bench.serve import BenchServeConfig, RequestRecord
from dsa.bench.serve_command import add_arguments, cmd_bench_serve
from dsa.errors import InputError

TOKEN_DELAY = 0.002  # seconds between the fake's streamed tokens


class FakeState:
    """What the fake server does and saw; reset for every test."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.requests = 0
        self.payloads: list[dict] = []
        self.auth = None
        self.fail = lambda n: None  # request number -> None | "500" | "cut"
        self.metrics = False
        self.token_delay = TOKEN_DELAY
        self.queries, self.hits = 100.0, 7.0  # nonzero before the run: the hit rate must use differences
        self.seen: set[tuple[int, ...]] = set()


def _fake_app(state: FakeState):
    """The fake server's app. (No `from __future__ import annotations` in this file: FastAPI reads the
    `request: Request` annotation of the route at run time.)"""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model", "max_model_len": 4096}]}

    @app.get("/metrics")
    async def prom():
        if not state.metrics:
            return PlainTextResponse("not found", status_code=404)
        return PlainTextResponse(
            "# HELP dsa_prefix_cache_queries_total prefix-cache lookups\n"
            "# TYPE dsa_prefix_cache_queries_total counter\n"
            f'dsa_prefix_cache_queries_total{{model="fake-model"}} {state.queries}\n'
            f"dsa_prefix_cache_hits_total {state.hits}\n"
            'dsa_prefix_cache_hits_created{model="fake-model"} 1.7e9\n')

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        state.auth = request.headers.get("authorization")
        state.requests += 1
        state.payloads.append(body)
        mode = state.fail(state.requests)
        if mode == "500":
            return JSONResponse({"error": {"message": "fake overload"}}, status_code=500)
        key = tuple(body["prompt"][:16])
        state.queries += 1
        state.hits += key in state.seen
        state.seen.add(key)

        async def events():
            state.in_flight += 1
            state.peak = max(state.peak, state.in_flight)
            try:
                for i in range(body["max_tokens"]):
                    await asyncio.sleep(state.token_delay)
                    if mode == "cut" and i == 2:
                        raise RuntimeError("fake disconnect")
                    chunk = {"id": "c", "object": "text_completion", "model": body["model"],
                             "choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                done = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
                usage = {"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                                  "completion_tokens": body["max_tokens"]}}
                yield f"data: {json.dumps(done)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n"
            finally:
                state.in_flight -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def server():
    """(base URL, state) of one fake server for the module."""
    import uvicorn

    state = FakeState()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(_fake_app(state), log_level="critical", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started, "the fake server did not start"
    yield f"http://127.0.0.1:{port}", state
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
def fake(server):
    url, state = server
    state.__init__()
    return url, state


def _config(url: str, **kw) -> BenchServeConfig:
    base = dict(base_url=url, num_prompts=8, input_len=20, output_len=5, seed=3)
    return BenchServeConfig(**{**base, **kw})


# ---- datasets ---------------------------------------------------------------------------------------


def test_random_dataset_reproducible_exact_lengths_and_id_range():
    a = serve.random_dataset(20, 33, 7, vocab_size=50, seed=5)
    assert a == serve.random_dataset(20, 33, 7, vocab_size=50, seed=5)
    assert a != serve.random_dataset(20, 33, 7, vocab_size=50, seed=6)
    assert all(len(p) == 33 and n == 7 for p, n in a)
    ids = {t for p, _ in a for t in p}
    assert min(ids) >= 2 and max(ids) < 50


def test_random_dataset_range_ratio_spreads_lengths():
    reqs = serve.random_dataset(200, 100, 10, vocab_size=260, range_ratio=0.5, seed=0)
    ins = [len(p) for p, _ in reqs]
    outs = [n for _, n in reqs]
    assert 50 <= min(ins) < 70 and 130 < max(ins) <= 150 and len(set(ins)) > 20
    assert 5 <= min(outs) and max(outs) <= 15


def test_shared_prefix_dataset_groups_share_their_prefix():
    reqs = serve.shared_prefix_dataset(12, prefix_len=40, num_groups=3, question_len=6, output_len=4,
                                       vocab_size=260, seed=1)
    assert reqs == serve.shared_prefix_dataset(12, 40, 3, 6, 4, 260, seed=1)
    assert all(len(p) == 46 and n == 4 for p, n in reqs)
    prefixes = [tuple(p[:40]) for p, _ in reqs]
    assert len(set(prefixes)) == 3
    assert all(prefixes[i] == prefixes[i % 3] for i in range(12))
    assert len({tuple(p[40:]) for p, _ in reqs}) == 12  # every question distinct


# ---- arrivals ---------------------------------------------------------------------------------------


def test_poisson_arrival_statistics():
    offsets = serve.arrival_offsets(4000, request_rate=20.0, seed=1)
    assert offsets == serve.arrival_offsets(4000, 20.0, seed=1)
    assert offsets != serve.arrival_offsets(4000, 20.0, seed=2)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    mean = statistics.fmean(gaps)
    assert offsets[0] == 0 and all(g >= 0 for g in gaps)
    assert mean == pytest.approx(1 / 20, rel=0.06)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, rel=0.1)  # exponential: coefficient of variation 1
    assert serve.arrival_offsets(5, math.inf) == [0.0] * 5


@dataclass
class _Out:
    new_token_ids: list[int]
    finished: bool


class FakeEngine:
    """AsyncEngine's generate: two tokens per output, a short sleep between; records the peak in flight."""

    def __init__(self) -> None:
        self.in_flight = self.peak = 0
        self.calls: list[tuple[int, object, str]] = []

    async def generate(self, prompt_ids, params, request_id):
        self.calls.append((len(prompt_ids), params, request_id))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            n = params["max_tokens"]
            for start in range(0, n, 2):
                await asyncio.sleep(TOKEN_DELAY)
                ids = list(range(start, min(start + 2, n)))
                yield _Out(ids, start + 2 >= n)
        finally:
            self.in_flight -= 1


def test_requests_are_sent_on_their_arrival_times():
    engine = FakeEngine()
    reqs = serve.random_dataset(15, 4, 2, vocab_size=260, seed=0)
    send = serve._engine_send(engine, lambda n: {"max_tokens": n})
    records, duration = asyncio.run(serve.drive(send, reqs, request_rate=100.0, max_concurrency=None, seed=4))
    offsets = serve.arrival_offsets(15, 100.0, seed=4)
    for rec, off in zip(records, offsets):
        assert off - 0.001 <= rec.sent <= off + 0.1
    assert duration >= offsets[-1]


# ---- in-process path and concurrency --------------------------------------------------------------


def test_in_process_engine_path_and_max_concurrency():
    engine = FakeEngine()
    config = BenchServeConfig(num_prompts=10, input_len=12, output_len=5, max_concurrency=3, model="tiny")
    result = serve.run_bench_serve(config, engine=engine, make_params=lambda n: {"max_tokens": n})
    assert engine.peak == 3
    assert result["completed"] == 10 and result["failed"] == 0
    assert result["total_output_tokens"] == 50  # counted from the token ids, 2 per output
    assert result["total_input_tokens"] == 120
    assert result["target"] == "in-process"
    assert sorted(c[2] for c in engine.calls) == sorted(f"bench-{i}" for i in range(10))
    assert all(c[1] == {"max_tokens": 5} for c in engine.calls)
    assert result["itl_mean_ms"] > 0 and result["tpot_mean_ms"] > 0


def test_in_process_failures_are_counted():
    class Broken(FakeEngine):
        async def generate(self, prompt_ids, params, request_id):
            if request_id == "bench-1":
                raise RuntimeError("engine fell over")
            async for out in super().generate(prompt_ids, params, request_id):
                yield out

    result = serve.run_bench_serve(BenchServeConfig(num_prompts=4, input_len=4, output_len=2), engine=Broken(),
                                   make_params=lambda n: {"max_tokens": n})
    assert (result["completed"], result["failed"]) == (3, 1)
    assert "engine fell over" in result["first_error"]


# ---- HTTP path --------------------------------------------------------------------------------------


def test_http_run_payload_and_metrics(fake):
    url, state = fake
    result = serve.run_bench_serve(_config(url + "/v1/", max_concurrency=2))
    assert result["completed"] == 8 and result["failed"] == 0 and result["first_error"] is None
    assert result["model"] == "fake-model"
    assert state.peak == 2
    body = state.payloads[0]
    assert body["model"] == "fake-model" and body["max_tokens"] == 5 and body["stream"] is True
    assert body["temperature"] == 0 and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert sorted(map(len, (p["prompt"] for p in state.payloads))) == [20] * 8
    assert result["total_output_tokens"] == 40 and result["total_input_tokens"] == 160
    assert result["ttft_mean_ms"] >= TOKEN_DELAY * 1000 * 0.9
    assert result["tpot_median_ms"] > 0 and result["e2el_p99_ms"] >= result["ttft_p99_ms"]
    assert result["output_throughput"] == pytest.approx(40 / result["duration_s"])
    assert result["prefix_cache_hit_rate"] is None  # the fake's /metrics answers 404 here
    text = serve.format_result(result)
    assert "| successful requests | 8 |" in text and "mean TTFT (ms)" in text and "p99 ITL (ms)" in text


def test_http_concurrency_peak_unlimited_and_limited(fake):
    url, state = fake
    state.token_delay = 0.02  # every request lasts long enough for all of them to overlap
    serve.run_bench_serve(_config(url, num_prompts=12, max_concurrency=3, output_len=8))
    assert state.peak == 3
    state.peak = 0
    serve.run_bench_serve(_config(url, num_prompts=12, output_len=8))  # rate inf, no limit: all at once
    assert state.peak == 12


def test_http_failures_are_counted_not_raised(fake):
    url, state = fake
    state.fail = lambda n: {1: "500", 2: "cut"}.get(n % 4)
    result = serve.run_bench_serve(_config(url, num_prompts=8, max_concurrency=1))
    assert (result["completed"], result["failed"]) == (4, 4)
    assert "HTTP 500" in result["first_error"] and "fake overload" in result["first_error"]
    assert "first error (4 failed)" in serve.format_result(result)


def test_prefix_cache_hit_rate_from_metrics(fake):
    url, state = fake
    state.metrics = True
    result = serve.run_bench_serve(_config(url, dataset="shared-prefix", num_prompts=12, prefix_len=32,
                                           num_prefix_groups=4, input_len=4))
    assert result["completed"] == 12
    assert result["prefix_cache_hit_rate"] == pytest.approx(8 / 12)  # each group's first request misses
    assert "66.7 %" in serve.format_result(result)


def test_unreachable_server_is_an_input_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(InputError, match=r"cannot reach the server at http://127.0.0.1:\d+: .*dsa serve --device cpu"):
        serve.run_bench_serve(_config(f"http://127.0.0.1:{port}"))


def test_prompt_longer_than_server_context_is_an_input_error(fake):
    url, _ = fake
    with pytest.raises(InputError, match="max_model_len is 4096"):
        serve.run_bench_serve(_config(url, input_len=4000, output_len=200))


# ---- metrics arithmetic ------------------------------------------------------------------------------


def test_metrics_arithmetic_on_synthetic_records():
    recs = [RequestRecord("a", 10, 5, ok=True, ttft=0.1, e2el=0.5, itl=[0.1] * 4, output_tokens=5),
            RequestRecord("b", 20, 5, ok=True, ttft=0.3, e2el=1.1, itl=[0.2] * 4, output_tokens=5),
            RequestRecord("c", 30, 5, ok=True, ttft=0.2, e2el=0.2, itl=[], output_tokens=1),  # no TPOT
            RequestRecord("d", 40, 5, ok=False, error="HTTP 500: x")]
    m = serve.metrics(recs, duration=2.0)
    assert (m["completed"], m["failed"], m["first_error"]) == (3, 1, "HTTP 500: x")
    assert m["total_input_tokens"] == 60 and m["total_output_tokens"] == 11
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(5.5)
    assert m["total_token_throughput"] == pytest.approx(35.5)
    assert m["tpot_mean_ms"] == pytest.approx((100 + 200) / 2)  # (0.5-0.1)/4, (1.1-0.3)/4
    assert m["ttft_mean_ms"] == pytest.approx(200) and m["ttft_median_ms"] == pytest.approx(200)
    assert m["itl_median_ms"] == pytest.approx(150) and m["e2el_p99_ms"] == pytest.approx(500 + 0.98 * 600)
    assert m["prefix_cache_hit_rate"] is None


def test_percentile_matches_linear_interpolation():
    xs = list(range(1, 101))
    assert serve.percentile(xs, 99) == pytest.approx(99.01)
    assert serve.percentile(xs, 50) == pytest.approx(50.5)
    assert serve.percentile([3.0], 99) == 3.0 and serve.percentile([], 50) is None


def test_nothing_completed_gives_no_latencies():
    m = serve.metrics([RequestRecord("a", 1, 1, error="x")], duration=1.0)
    assert m["completed"] == 0 and m["ttft_mean_ms"] is None and m["tpot_p99_ms"] is None
    assert "| mean TTFT (ms) | - |" in serve.format_result(m)


def test_prometheus_parsing_and_hit_rate():
    text = ('# TYPE x counter\ndsa_prefix_cache_hits_total{a="1"} 3\ndsa_prefix_cache_hits_total{a="2"} 2 1700\n'
            "dsa_prefix_cache_queries_total 10\n")
    before = serve.parse_prometheus(text)
    assert before == {"dsa_prefix_cache_hits_total": 5.0, "dsa_prefix_cache_queries_total": 10.0}
    after = {"dsa_prefix_cache_hits_total": 8.0, "dsa_prefix_cache_queries_total": 14.0}
    assert serve.prefix_cache_hit_rate(before, after) == pytest.approx(0.75)
    assert serve.prefix_cache_hit_rate(before, before) is None  # no queries during the run
    assert serve.prefix_cache_hit_rate({}, after) is None and serve.prefix_cache_hit_rate(None, after) is None


def test_sse_line_parsing():
    assert serve.parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert serve.parse_sse_line("data: [DONE]") == "[DONE]"
    assert serve.parse_sse_line(": keep-alive") is None and serve.parse_sse_line("") is None


# ---- plot -------------------------------------------------------------------------------------------


def test_plot_throughput_writes_a_png(tmp_path):
    rows = [{"engine": e, "concurrency": c, "prompt_len": p, "output_tok_s": c * (2 if e == "dsa" else 1) + p / 100}
            for e in ("dsa", "vllm") for c in (1, 2, 4, 8) for p in (128, 1024)]
    out = serve.plot_throughput(rows, tmp_path / "tput.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the command ------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("argv, flag", [
    (["--num-prompts", "0"], "--num-prompts"),
    (["--random-input-len", "-3"], "--random-input-len"),
    (["--random-output-len", "0"], "--random-output-len"),
    (["--random-range-ratio", "1"], "--random-range-ratio"),
    (["--request-rate", "0"], "--request-rate"),
    (["--request-rate", "nan"], "--request-rate"),
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--num-prefix-groups", "0"], "--num-prefix-groups"),
    (["--prefix-len", "-1"], "--prefix-len"),
    (["--vocab-size", "2"], "--vocab-size"),
    (["--seed", "-1"], "--seed"),
    (["--timeout", "0"], "--timeout"),
    (["--base-url", "localhost:8000"], "--base-url"),
])
def test_bad_flags_are_input_errors(argv, flag):
    with pytest.raises(InputError, match=f"^{flag} must be"):
        cmd_bench_serve(_args("--base-url", "http://127.0.0.1:9", *argv))


def test_flag_defaults():
    a = _args()
    assert a.base_url == "http://127.0.0.1:8000" and a.num_prompts == 100 and math.isinf(a.request_rate)
    assert (a.random_input_len, a.random_output_len, a.prefix_len, a.num_prefix_groups) == (256, 64, 512, 4)
    assert a.max_concurrency is None and a.vocab_size == 2048
    assert _args("--request-rate", "inf").request_rate == math.inf


def test_command_writes_json_and_prints_the_table(fake, tmp_path, capsys, monkeypatch):
    url, state = fake
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "r.json"
    rc = cmd_bench_serve(_args("--base-url", url, "--num-prompts", "4", "--random-input-len", "8",
                               "--random-output-len", "3", "--json", str(out)))
    assert rc == 0
    assert "| successful requests | 4 |" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["completed"] == 4 and data["request_rate"] == "inf"
    assert state.auth == "Bearer sk-test"


def test_command_with_nothing_completed_exits_1(fake, tmp_path, capsys):
    url, state = fake
    state.fail = lambda n: "500"
    out = tmp_path / "r.json"
    rc = cmd_bench_serve(_args("--base-url", url, "--num-prompts", "3", "--random-input-len", "8",
                               "--random-output-len", "3", "--json", str(out)))
    assert rc == 1
    assert "completed no request" in capsys.readouterr().err and not out.exists()


def test_command_unreachable_server(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(InputError, match="cannot reach the server"):
        cmd_bench_serve(_args("--base-url", f"http://127.0.0.1:{port}", "--num-prompts", "2"))
