"""The served model's engine and its life: loading -> ready -> shutting down (or failed).

    host = EngineHost(model_name="tiny", tokenizer=tok, max_model_len=256, vocab_size=260)
    host.load_in_background(lambda: build_core(...))   # the port is already bound; /health says 503 meanwhile
    engine = host.engine_for_request()                  # the AsyncEngine, or APIError 503 (loading / shutting down)
    host.begin_shutdown()                               # from the signal handler: no new requests, drain, abort
    await host.stopped()                                # the app's lifespan end: the drain is over

The core (dsa.engine.serving.build_core) is driven by AsyncEngine's own thread; this module only starts it,
reports its state and stops it. Shutting down lets running requests finish for `shutdown_timeout` seconds
and then aborts the rest (their streams end with finish_reason "abort").
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable, Optional

from dsa.engine.async_engine import AsyncEngine
from dsa.server.errors import APIError, unavailable
from dsa.server.metrics import ServerMetrics

log = logging.getLogger("dsa.server")

LOADING, READY, SHUTTING_DOWN, FAILED = "loading", "ready", "shutting down", "failed"


class EngineHost:
    def __init__(self, *, model_name: str, tokenizer, max_model_len: int, vocab_size: int,
                 max_queue_len: Optional[int] = 1024, shutdown_timeout: float = 30.0,
                 on_ready: Optional[Callable[[], None]] = None,
                 on_failure: Optional[Callable[[BaseException], None]] = None,
                 close_core: Optional[Callable[[object], None]] = None):
        self.model_name, self.tokenizer = model_name, tokenizer
        self.max_model_len, self.vocab_size = max_model_len, vocab_size
        self.max_queue_len, self.shutdown_timeout = max_queue_len, shutdown_timeout
        self.on_ready, self.on_failure, self.close_core = on_ready, on_failure, close_core
        self.engine: Optional[AsyncEngine] = None
        self.state = LOADING
        self.error: Optional[BaseException] = None  # why loading failed
        self.num_aborted = 0  # requests the shutdown aborted
        self._lock = threading.Lock()
        self._drain: Optional[threading.Thread] = None
        self.metrics = ServerMetrics(lambda: self.engine.stats if self.engine is not None else None)

    # ---- starting -----------------------------------------------------------------------------------
    def attach(self, core) -> None:
        """Drive `core` (EngineCore's interface) with an AsyncEngine and turn ready."""
        engine = AsyncEngine(core, max_waiting=self.max_queue_len).start()
        with self._lock:
            self.engine = engine
            late = self.state == SHUTTING_DOWN  # a signal came while loading
            if not late:
                self.state = READY
        if late:
            self._shutdown()
            return
        if self.on_ready is not None:
            self.on_ready()

    def load_in_background(self, build: Callable[[], object]) -> threading.Thread:
        """Run `build()` (weights in, the core out) in a thread, then attach it; a failure is kept in `error`
        and handed to `on_failure` (the server then exits with it)."""
        def load():
            try:
                core = build()
                self.attach(core)
            except BaseException as err:  # noqa: BLE001  reported to the serving command, which raises it
                with self._lock:
                    self.state, self.error = FAILED, err
                if not isinstance(err, Exception):
                    raise
                if self.on_failure is not None:
                    self.on_failure(err)

        thread = threading.Thread(target=load, name="dsa-load", daemon=True)
        thread.start()
        return thread

    # ---- serving ------------------------------------------------------------------------------------
    def engine_for_request(self) -> AsyncEngine:
        state, engine = self.state, self.engine
        if state == READY and engine is not None:
            if engine.error is not None:
                raise APIError(500, f"the engine stopped: {engine.error}", code="engine_failed")
            return engine
        if state == LOADING:
            raise unavailable("the model is still loading; retry when GET /health answers 200", "model_loading")
        if state == SHUTTING_DOWN:
            raise unavailable("the server is shutting down", "shutting_down")
        raise APIError(500, f"the model failed to load: {self.error}", code="load_failed")

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body) of GET /health: 200 only when requests are served."""
        state, engine = self.state, self.engine
        if state == READY and engine is not None and engine.error is not None:
            return 500, {"status": "engine failed", "error": str(engine.error)}
        if state == READY:
            return 200, {"status": "ok"}
        if state == FAILED:
            return 500, {"status": FAILED, "error": str(self.error)}
        return 503, {"status": state}

    # ---- stopping -----------------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Stop taking requests and drain in a thread (idempotent): running requests get `shutdown_timeout`
        seconds, then the rest are aborted."""
        with self._lock:
            if self._drain is not None:
                return
            if self.state != FAILED:
                self.state = SHUTTING_DOWN
            self._drain = threading.Thread(target=self._shutdown, name="dsa-drain", daemon=True)
            self._drain.start()

    def _shutdown(self) -> None:
        engine = self.engine
        if engine is None:
            return
        self.num_aborted = engine.shutdown(self.shutdown_timeout)
        if self.num_aborted:
            log.warning("shutdown: %d request(s) still running after %gs were aborted", self.num_aborted,
                        self.shutdown_timeout)
        if self.close_core is not None:  # the engine thread is done with the core (other ranks may stop now)
            try:
                self.close_core(engine.core)
            except Exception as err:  # noqa: BLE001  another rank is gone already: nothing left to tell
                log.warning("shutdown: could not send the stop message to the other ranks (%s)", err)

    async def stopped(self) -> None:
        """Shut down (if nobody asked yet) and wait, without blocking the event loop, until the drain is over."""
        self.begin_shutdown()
        await asyncio.to_thread(self._drain.join)


__all__ = ["EngineHost", "LOADING", "READY", "SHUTTING_DOWN", "FAILED"]
