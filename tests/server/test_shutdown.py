"""Graceful shutdown: the server's SIGTERM handler lets running requests finish within --shutdown-timeout and
aborts the rest (their streams end with finish_reason "abort" and [DONE]); a real `dsa serve` process exits 0."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import httpx
import pytest

from tests.server.conftest import start_server

REPO = Path(__file__).resolve().parents[2]


def stream_after_signal(running, max_tokens: int, signal_it) -> tuple[list[dict], bool]:
    """Start a stream, call `signal_it()` after its first token, read it to the end: (events, [DONE] seen)."""
    body = {"prompt": "drain", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    events, done = [], False
    with httpx.stream("POST", running.url + "/v1/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            events.append(json.loads(line[len("data: "):]))
            if len(events) == 1:
                signal_it()
    return events, done


def finish_reasons(events) -> list:
    return [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]


def test_sigterm_lets_running_requests_finish(setup, model):
    running = start_server(setup, model, shutdown_timeout=20)
    stopper = threading.Thread(target=running.stop)
    events, done = stream_after_signal(running, 40, stopper.start)
    assert done and finish_reasons(events) == ["length"]  # finished in full within the grace period
    assert sum(len(e["choices"][0]["text"]) > 0 for e in events) >= 1
    stopper.join(20)
    assert not running.thread.is_alive()
    assert running.host.num_aborted == 0


def test_past_the_grace_period_streams_end_with_abort(setup, model):
    running = start_server(setup, model, shutdown_timeout=0)
    t0 = time.monotonic()
    stopper = threading.Thread(target=running.stop)
    events, done = stream_after_signal(running, 240, stopper.start)
    assert done and finish_reasons(events) == ["abort"]
    stopper.join(20)
    assert not running.thread.is_alive() and time.monotonic() - t0 < 10
    assert running.host.num_aborted == 1


SERVE = [sys.executable, "-m", "dsa.cli", "serve", "--model", "tiny", "--device", "cpu", "--dtype", "fp32",
         "--max-seq-len", "256", "--num-blocks", "64", "--uvicorn-log-level", "warning"]


class Serve:
    """A real `dsa serve` process; its stderr is collected, `url` is known once it says ready."""

    def __init__(self, *flags: str, env: Optional[dict] = None):
        env = env or {}
        environ = dict(os.environ, PYTHONPATH=str(REPO), **env)
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "DSA_API_KEY"):
            if var not in env:
                environ.pop(var, None)
        self.proc = subprocess.Popen([*SERVE, *flags], cwd=REPO, env=environ, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if "ready:" in line:
                self._ready.set()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 60) -> str:
        assert self._ready.wait(timeout), self.text
        return re.search(r"listening on (http://\S+);", self.text).group(1)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)


def test_sigterm_on_dsa_serve_exits_0_and_ends_the_stream():
    serve = Serve("--port", "0", "--shutdown-timeout", "0", env={"DSA_API_KEY": "from-env"})
    proc = serve.proc
    try:
        url = serve.wait_ready()
        assert httpx.get(url + "/v1/models").status_code == 401  # the key came from DSA_API_KEY
        headers = {"Authorization": "Bearer from-env"}
        body = {"prompt": "term", "max_tokens": 240, "temperature": 0, "ignore_eos": True, "stream": True}
        got, done = [], False
        with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=30) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    got.append(json.loads(line[len("data: "):]))
                    if len(got) == 1:
                        t0 = time.monotonic()
                        proc.send_signal(signal.SIGTERM)
        assert done and finish_reasons(got) == ["abort"]
        assert proc.wait(timeout=15) == 0, serve.text
        assert time.monotonic() - t0 < 10
    finally:
        serve.close()
    assert "Traceback" not in serve.text and "error:" not in serve.text, serve.text


def test_dsa_serve_dp2_answers_like_one_process_and_stops_on_sigterm(setup, model):
    """DP-attention across requests: `--dp 2 --ep 2 --nproc 2` spreads concurrent requests over two DP groups
    (each with its own scheduler, the MoE in lockstep) and answers each one as one process does."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"prompt": f"two ranks {i} " * (1 + i), "max_tokens": 6 + i, "temperature": 0, "ignore_eos": True}
              for i in range(6)]

    def answers(url):
        with ThreadPoolExecutor(len(bodies)) as pool:
            resps = list(pool.map(lambda b: httpx.post(url + "/v1/completions", json=b, timeout=60), bodies))
        assert all(r.status_code == 200 for r in resps), [r.text for r in resps]
        return [r.json()["choices"][0]["text"] for r in resps]

    one = start_server(setup, model)
    try:
        want = answers(one.url)
    finally:
        one.stop()
    serve = Serve("--port", "0", "--nproc", "2", "--dp", "2", "--ep", "2")
    try:
        url = serve.wait_ready(90)
        assert answers(url) == want
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=30) == 0, serve.text
        with pytest.raises(httpx.ConnectError):  # rank 0 is gone too, not left serving
            httpx.get(url + "/health", timeout=5)
    finally:
        serve.close()
    assert "Traceback" not in serve.text and "error:" not in serve.text, serve.text
