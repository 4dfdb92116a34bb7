"""AsyncEngine: an EngineCore driven by its own thread, for asyncio clients (the HTTP server, `dsa bench serve`
in process).

    engine = AsyncEngine(core, max_waiting=1024).start()
    async for out in engine.generate(prompt_ids, params, "req-1"):   # RequestOutput per step with tokens
        ...                                                           # leaving the loop early aborts it
    engine.shutdown(timeout=30)                                       # finish what runs, abort the rest

One thread owns the core (it is not thread-safe): it takes new requests and aborts from an inbox between
steps, runs `core.step()` while anything is unfinished, and hands each output to the asyncio queue of its
request (loop.call_soon_threadsafe). With nothing to do it sleeps on a condition, so an idle server costs
nothing. `core` may be anything with EngineCore's interface (check_request, add_request, abort_request,
step, has_unfinished, requests, num_running, num_waiting, kv_usage, blocks.queries / .hits,
scheduler.num_preemptions, num_steps): the DP-attention router is one.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Optional, Sequence

from dsa.engine.request import RequestOutput
from dsa.engine.sampling import SamplingParams
from dsa.errors import DsaError

log = logging.getLogger("dsa")


class QueueFullError(DsaError):
    """The engine's waiting queue is full: try again later (HTTP 503 + Retry-After)."""


class EngineDeadError(DsaError):
    """The engine loop stopped on an internal error; no request can be served."""


class ShuttingDownError(DsaError):
    """The engine is shutting down and takes no new request."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot taken by the engine thread after each step."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # share of the cache blocks held by requests
    prefix_cache_queries: int = 0  # prompt tokens looked up
    prefix_cache_hits: int = 0  # of those, found in the cache
    num_preemptions: int = 0
    num_steps: int = 0


class AsyncEngine:
    def __init__(self, core, max_waiting: Optional[int] = None):
        self.core, self.max_waiting = core, max_waiting
        self._cond = threading.Condition()
        self._inbox: list[tuple] = []  # ("add", rid, ids, params, arrival) | ("abort", rid, reason)
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._pending = 0  # requests added but not yet taken by the thread
        self._thread: Optional[threading.Thread] = None
        self._stopping = False  # no new requests
        self._stop_now = False  # the thread exits once the inbox is handled
        self.error: Optional[BaseException] = None
        self.stats = EngineStats()

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "AsyncEngine":
        self._thread = threading.Thread(target=self._loop, name="dsa-engine", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def shutdown(self, timeout: float = 30.0) -> int:
        """Stop taking requests; let the running ones finish for up to `timeout` seconds, then abort the rest
        (their streams end with stop_reason "abort"). Returns how many were aborted."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive and (self._streams or self._pending):
            time.sleep(0.01)
        with self._cond:
            left = list(self._streams)
            self._inbox += [("abort", rid, "abort") for rid in left]
            self._stop_now = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, timeout))
        return len(left)

    # ---- requests (any thread / the event loop) ----------------------------------------------------
    def check_request(self, prompt_ids: Sequence[int]) -> list[int]:
        return self.core.check_request(prompt_ids)

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """The outputs of one request as the engine produces them; the last has finished=True. Raises
        InputError (bad prompt), QueueFullError, ShuttingDownError or EngineDeadError before any output."""
        ids = self.core.check_request(prompt_ids)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._cond:
            if self.error is not None:
                raise EngineDeadError(f"the engine stopped: {self.error}")
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            if self.max_waiting is not None and self.stats.num_waiting + self._pending >= self.max_waiting:
                raise QueueFullError(f"the queue is full ({self.max_waiting} requests waiting); retry later")
            if request_id in self._streams:
                raise DsaError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = (loop, queue)
            self._inbox.append(("add", request_id, ids, params, time.monotonic()))
            self._pending += 1
            self._cond.notify_all()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # the client went away (or was cancelled): free its blocks
                self.abort(request_id)

    def abort(self, request_id: str, reason: str = "abort") -> None:
        with self._cond:
            if request_id in self._streams:
                self._inbox.append(("abort", request_id, reason))
                self._cond.notify_all()

    # ---- the engine thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        core = self.core
        try:
            while True:
                with self._cond:
                    while not self._inbox and not core.has_unfinished() and not self._stop_now:
                        self._cond.wait()
                    inbox, self._inbox = self._inbox, []
                    stop_now = self._stop_now
                for item in inbox:
                    self._take(item)
                if stop_now and not core.has_unfinished():
                    return
                if core.has_unfinished():
                    self._deliver(core.step())
                self._snapshot()
        except BaseException as err:  # noqa: BLE001  the model or a backend failed: every client is told
            log.exception("the engine loop stopped")
            self.error = err
            with self._cond:
                streams, self._streams = self._streams, {}
            for loop, queue in streams.values():
                loop.call_soon_threadsafe(queue.put_nowait, EngineDeadError(f"the engine stopped: {err}"))

    def _take(self, item: tuple) -> None:
        core = self.core
        if item[0] == "add":
            _, rid, ids, params, arrival = item
            with self._cond:
                self._pending -= 1
            try:
                core.add_request(rid, ids, params, arrival_time=arrival)
            except DsaError as err:
                self._send(rid, err, last=True)
            return
        _, rid, reason = item
        req = core.requests.get(rid)  # an unfinished request (abort_request is False otherwise)
        if core.abort_request(rid, reason):
            self._send(rid, RequestOutput(rid, [], None, True, reason, len(req.prompt_ids), len(req.output_ids),
                                          req.num_cached_tokens), last=True)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            self._send(out.request_id, out, last=out.finished)

    def _send(self, rid: str, item, last: bool) -> None:
        with self._cond:
            target = self._streams.pop(rid, None) if last else self._streams.get(rid)
        if target is not None:
            loop, queue = target
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the client's event loop is closed
                pass

    def _snapshot(self) -> None:
        core, blocks = self.core, self.core.blocks
        self.stats = EngineStats(core.num_running, core.num_waiting, core.kv_usage, blocks.queries, blocks.hits,
                                 core.scheduler.num_preemptions, core.num_steps)


__all__ = ["AsyncEngine", "EngineStats", "QueueFullError", "EngineDeadError", "ShuttingDownError"]
