"""GET /metrics: Prometheus text from the server's own registry, every name prefixed `dsa_`.

Engine state (read from AsyncEngine.stats, the snapshot its thread takes after each step):
  dsa_num_requests_running, dsa_num_requests_waiting           gauges
  dsa_kv_cache_usage_perc                                      gauge, share of KV blocks held by requests (0..1)
  dsa_prefix_cache_queries_total, dsa_prefix_cache_hits_total  counters, prompt tokens looked up / found
  dsa_num_preemptions_total                                    counter
Per request (an engine request: one choice of an API request), recorded by the server:
  dsa_prompt_tokens_total, dsa_generation_tokens_total         counters
  dsa_request_success_total{finished_reason="stop|length|abort"}
  dsa_time_to_first_token_seconds, dsa_inter_token_latency_seconds, dsa_e2e_request_latency_seconds
                                                               histograms (from the request's arrival)
"""
from __future__ import annotations

import time
from typing import Callable, Optional

FINISH_REASONS = ("stop", "length", "abort")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
               1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)


class _EngineCollector:
    """The engine's snapshot as metrics, read at each scrape (zeros while the model loads)."""

    def __init__(self, stats: Callable[[], Optional[object]]):
        self._stats = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self._stats()
        get = (lambda name: getattr(s, name)) if s is not None else (lambda name: 0)
        yield GaugeMetricFamily("dsa_num_requests_running", "Requests in the running batch.", get("num_running"))
        yield GaugeMetricFamily("dsa_num_requests_waiting", "Requests waiting to be scheduled.", get("num_waiting"))
        yield GaugeMetricFamily("dsa_kv_cache_usage_perc", "Share of the KV-cache blocks held by requests (0..1).",
                                get("kv_usage"))
        yield CounterMetricFamily("dsa_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                  get("prefix_cache_queries"))
        yield CounterMetricFamily("dsa_prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                  get("prefix_cache_hits"))
        yield CounterMetricFamily("dsa_num_preemptions", "Requests preempted (recomputed later) for lack of blocks.",
                                  get("num_preemptions"))


class ServerMetrics:
    def __init__(self, stats: Callable[[], Optional[object]]):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = r = CollectorRegistry()
        self.prompt_tokens = Counter("dsa_prompt_tokens", "Prompt tokens of the requests served.", registry=r)
        self.generation_tokens = Counter("dsa_generation_tokens", "Tokens generated.", registry=r)
        self.request_success = Counter("dsa_request_success", "Requests finished, by finish reason.",
                                       ["finished_reason"], registry=r)
        for reason in FINISH_REASONS:
            self.request_success.labels(reason)
        self.ttft = Histogram("dsa_time_to_first_token_seconds", "From a request's arrival to its first token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("dsa_inter_token_latency_seconds", "Between consecutive tokens of a request.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("dsa_e2e_request_latency_seconds", "From a request's arrival to its last token.",
                             buckets=E2E_BUCKETS, registry=r)
        r.register(_EngineCollector(stats))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def tracker(self, arrival: float, num_prompt_tokens: int) -> "RequestTracker":
        return RequestTracker(self, arrival, num_prompt_tokens)


class RequestTracker:
    """The timing of one engine request: `tokens(n)` as outputs arrive, `finish(reason)` once."""

    def __init__(self, metrics: ServerMetrics, arrival: float, num_prompt_tokens: int):
        self._m, self._arrival, self._prompt = metrics, arrival, num_prompt_tokens
        self._last: Optional[float] = None
        self._done = False

    def tokens(self, n: int, now: Optional[float] = None) -> None:
        if n <= 0:
            return
        now = time.monotonic() if now is None else now
        if self._last is None:
            self._m.ttft.observe(now - self._arrival)
            self._m.prompt_tokens.inc(self._prompt)
        else:
            for _ in range(n):
                self._m.itl.observe((now - self._last) / n)
        self._last = now
        self._m.generation_tokens.inc(n)

    def finish(self, reason: str, now: Optional[float] = None) -> None:
        if self._done:
            return
        self._done = True
        now = time.monotonic() if now is None else now
        if self._last is None:  # ended before its first token (aborted, or stopped at once)
            self._m.prompt_tokens.inc(self._prompt)
        self._m.e2e.observe(now - self._arrival)
        self._m.request_success.labels(reason if reason in FINISH_REASONS else "abort").inc()


__all__ = ["ServerMetrics", "RequestTracker", "FINISH_REASONS"]
