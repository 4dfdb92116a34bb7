"""Servers for the tests: the real app on a real uvicorn (127.0.0.1, port 0) in a background thread, over the
tiny model (fp32, context 256, 64 KV blocks). The model is built once per session; each server gets its own
engine core (its own KV cache), optionally wrapped (a gate that blocks the engine, a failing step)."""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import httpx
import pytest

from dsa.engine.args import EngineArgs
from dsa.io.tokenizer import load_tokenizer
from dsa.io.tokenizer_writer import write_tokenizer_files
from dsa.server.app import create_app
from dsa.server.engine import EngineHost
from dsa.server.http import bind_socket, make_server, url_of

ENGINE = dict(model="tiny", device="cpu", dtype="fp32", max_seq_len=256, num_blocks=64)
MODEL_NAME = "tiny"


@pytest.fixture(scope="session")
def setup():
    return EngineArgs(**ENGINE).resolve()


@pytest.fixture(scope="session")
def model(setup):
    return setup.build_model(None)


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
    """A tokenizer.json with a chat template (what make-checkpoint writes); its ids are the byte tokenizer's."""
    d = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(d, vocab_size=260, max_length=256)
    return load_tokenizer(d)


@dataclass
class Running:
    url: str
    host: EngineHost
    server: object
    thread: threading.Thread

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kw)

    def metric(self, name: str) -> float:
        return metric_value(httpx.get(f"{self.url}/metrics", timeout=10).text, name)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the engine holds no request and no KV block (as /metrics reports it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
            if all(metric_value(text, n) == 0 for n in ("dsa_num_requests_running", "dsa_num_requests_waiting",
                                                         "dsa_kv_cache_usage_perc")):
                return
            time.sleep(0.02)
        raise AssertionError(f"the engine is not idle after {timeout}s:\n{text}")

    def stop(self, timeout: float = 20.0) -> None:
        """As SIGTERM would: the server's own signal handler, then wait for it to exit."""
        self.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name} not in /metrics")


def start_server(setup, model, tokenizer=None, *, wrap: Optional[Callable] = None, api_key: Optional[str] = None,
                 max_queue_len: int = 1024, shutdown_timeout: float = 10.0, loader: Optional[Callable] = None,
                 wait_ready: bool = True) -> Running:
    tokenizer = tokenizer if tokenizer is not None else setup.tokenizer()

    def build():
        core = setup.make_engine(model, tokenizer.eos_token_ids).core
        return wrap(core) if wrap is not None else core

    host = EngineHost(model_name=MODEL_NAME, tokenizer=tokenizer, max_model_len=setup.max_seq_len,
                      vocab_size=setup.config.vocab_size, max_queue_len=max_queue_len,
                      shutdown_timeout=shutdown_timeout)
    app = create_app(host, api_key=api_key, loader=loader or build)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app, log_level="warning", shutdown_timeout=shutdown_timeout, on_signal=host.begin_shutdown)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = Running(url_of(sock), host, server, thread)
    if wait_ready:
        deadline = time.monotonic() + 30
        while httpx.get(f"{running.url}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the server did not turn ready"
            time.sleep(0.02)
    return running


@pytest.fixture(scope="module")
def server(setup, model, chat_tokenizer):
    """One server per test module, with a chat template."""
    running = start_server(setup, model, chat_tokenizer)
    yield running
    running.stop()
