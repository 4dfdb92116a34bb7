"""`dsa bench serve`: a serving benchmark of an OpenAI-compatible server (or an in-process engine).

The methodology is the usual one of serving benchmarks (the numbers compare with `vllm bench serve` and
`sglang.bench_serving`):

- requests arrive as a Poisson process at `request_rate` requests/s (inf: all at once), and at most
  `max_concurrency` are in flight (a semaphore; an arrival waits for a free slot, its clock starts when it
  is sent);
- every request streams (`POST /v1/completions`, `stream: true`); each chunk that carries tokens is
  timestamped. TTFT = sent -> first token, E2EL = sent -> end of the stream, ITL = the gaps between
  consecutive token-carrying chunks, TPOT = (E2EL - TTFT) / (output tokens - 1);
- output tokens are counted from the final usage chunk (`stream_options.include_usage`), else one per chunk;
- prompts are token ids (`prompt: [ids]`), so input lengths are exact whatever the tokenizer; ids are drawn
  from [2, vocab_size), never the bos / eos ids 0 / 1; `ignore_eos` makes every request produce exactly
  `max_tokens` tokens.

Datasets: `random` (seeded random ids, lengths `input_len` / `output_len`, each spread uniformly over
[len * (1 - range_ratio), len * (1 + range_ratio)]) and `shared-prefix` (`num_prefix_groups` random
prefixes of `prefix_len` tokens, a long shared system prompt, each followed by a distinct question of
`input_len` tokens; the prompts of the groups interleave, so a prefix cache can serve every prefix after its
first request). When the server exposes `GET /metrics` (Prometheus text), the prefix-cache hit rate of the run
is read from the counters `dsa_prefix_cache_hits_total` / `dsa_prefix_cache_queries_total` (before and after).

A failed request (HTTP error, disconnect, timeout, a stream without tokens) is counted, and the first error
message reported; it never ends the run. The load generator and the timing are shared by both targets: a
base URL (HTTP) and an in-process object with the AsyncEngine method `generate(prompt_ids, params,
request_id)` (an async iterator of outputs with `.new_token_ids` and `.finished`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Optional, Protocol, Sequence

from dsa.errors import InputError

DATASETS = ("random", "shared-prefix")
FIRST_ID = 2  # token ids 0 / 1 are bos / eos in the built-in models: never part of a random prompt
DEFAULT_VOCAB_SIZE = 2048  # the built-in `mini` model's vocab (a test checks they agree)
HITS_COUNTER = "dsa_prefix_cache_hits_total"
QUERIES_COUNTER = "dsa_prefix_cache_queries_total"
ERROR_CHARS = 300  # an error message (e.g. a server's 500 body) is cut to this length

# The command-line flag of each config field: validation messages name the flag a user can change.
FLAGS = {
    "base_url": "--base-url", "model": "--model", "dataset": "--dataset", "num_prompts": "--num-prompts",
    "input_len": "--random-input-len", "output_len": "--random-output-len", "range_ratio": "--random-range-ratio",
    "prefix_len": "--prefix-len", "num_prefix_groups": "--num-prefix-groups", "request_rate": "--request-rate",
    "max_concurrency": "--max-concurrency", "seed": "--seed", "api_key": "--api-key", "timeout": "--timeout",
    "vocab_size": "--vocab-size",
}

Request = tuple[list[int], int]  # (prompt token ids, expected output length)


@dataclasses.dataclass
class BenchServeConfig:
    """What one serving benchmark run sends, and where. `model` None: the first entry of GET /v1/models."""

    base_url: str = "http://127.0.0.1:8000"
    model: Optional[str] = None
    dataset: str = "random"
    num_prompts: int = 100
    input_len: int = 256  # random: the prompt length; shared-prefix: the question after the prefix
    output_len: int = 64
    range_ratio: float = 0.0  # 0: fixed lengths
    prefix_len: int = 512  # shared-prefix only
    num_prefix_groups: int = 4  # shared-prefix only
    request_rate: float = math.inf  # requests/s of the Poisson arrivals; inf: all at once
    max_concurrency: Optional[int] = None  # None: unlimited
    seed: int = 0
    api_key: Optional[str] = None
    timeout: float = 600.0  # seconds per request
    vocab_size: int = DEFAULT_VOCAB_SIZE  # prompt ids are drawn from [2, vocab_size)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def check_config(c: BenchServeConfig) -> None:
    """Every value in range, before anything is sent; an InputError names the flag and the fix."""
    def need(ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise InputError(f"{FLAGS[field]} must be {rule}, got {getattr(c, field)!r}")

    need(isinstance(c.base_url, str) and c.base_url.startswith(("http://", "https://")), "base_url",
         "an http:// or https:// URL, e.g. http://127.0.0.1:8000")
    need(c.dataset in DATASETS, "dataset", "one of " + ", ".join(DATASETS))
    for field in ("num_prompts", "input_len", "output_len"):
        need(_is_int(getattr(c, field)) and getattr(c, field) >= 1, field, "an integer >= 1")
    need(_is_real(c.range_ratio) and 0 <= c.range_ratio < 1, "range_ratio", "a number in [0, 1) (0 = fixed lengths)")
    need(_is_int(c.prefix_len) and c.prefix_len >= 0, "prefix_len", "an integer >= 0")
    need(_is_int(c.num_prefix_groups) and c.num_prefix_groups >= 1, "num_prefix_groups", "an integer >= 1")
    need(_is_real(c.request_rate) and c.request_rate > 0, "request_rate", "a number > 0 requests/s, or inf")
    need(c.max_concurrency is None or (_is_int(c.max_concurrency) and c.max_concurrency >= 1),
         "max_concurrency", "an integer >= 1 (leave it out for no limit)")
    need(_is_int(c.seed) and c.seed >= 0, "seed", "an integer >= 0")
    need(_is_real(c.timeout) and 0 < c.timeout < math.inf, "timeout", "a finite number of seconds > 0")
    need(_is_int(c.vocab_size) and c.vocab_size > FIRST_ID, "vocab_size", f"an integer > {FIRST_ID}")


# ---- datasets ---------------------------------------------------------------------------------------


def _lengths(rng: random.Random, n: int, mean: int, range_ratio: float) -> list[int]:
    """n lengths uniform over [mean * (1 - r), mean * (1 + r)] (integers, at least 1); r = 0: all `mean`."""
    low, high = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(n)]


def _ids(rng: random.Random, n: int, vocab_size: int) -> list[int]:
    return [rng.randrange(FIRST_ID, vocab_size) for _ in range(n)]


def random_dataset(num_prompts: int, input_len: int, output_len: int, vocab_size: int, range_ratio: float = 0.0,
                   seed: int = 0) -> list[Request]:
    """`num_prompts` prompts of random token ids in [2, vocab_size); the same seed gives the same list."""
    rng = random.Random(seed)
    ins = _lengths(rng, num_prompts, input_len, range_ratio)
    outs = _lengths(rng, num_prompts, output_len, range_ratio)
    return [(_ids(rng, n_in, vocab_size), n_out) for n_in, n_out in zip(ins, outs)]


def shared_prefix_dataset(num_prompts: int, prefix_len: int, num_groups: int, question_len: int, output_len: int,
                          vocab_size: int, range_ratio: float = 0.0, seed: int = 0) -> list[Request]:
    """Prompt i = prefix[i % num_groups] + its own random question: groups that share a long system prompt.

    The groups interleave (0, 1, .., G-1, 0, 1, ..) so every group's prefix is reused while the others are
    also live: a prefix cache that keeps all G prefixes hits on everything but the first request of each.
    """
    rng = random.Random(seed)
    prefixes = [_ids(rng, prefix_len, vocab_size) for _ in range(num_groups)]
    questions = _lengths(rng, num_prompts, question_len, range_ratio)
    outs = _lengths(rng, num_prompts, output_len, range_ratio)
    return [(prefixes[i % num_groups] + _ids(rng, questions[i], vocab_size), outs[i]) for i in range(num_prompts)]


def build_dataset(c: BenchServeConfig) -> list[Request]:
    """The config's dataset: a list of (prompt token ids, expected output length)."""
    if c.dataset == "random":
        return random_dataset(c.num_prompts, c.input_len, c.output_len, c.vocab_size, c.range_ratio, c.seed)
    return shared_prefix_dataset(c.num_prompts, c.prefix_len, c.num_prefix_groups, c.input_len, c.output_len,
                                 c.vocab_size, c.range_ratio, c.seed)


# ---- arrivals and timing (shared by the HTTP and the in-process targets) ----------------------------


def arrival_offsets(n: int, request_rate: float, seed: int = 0) -> list[float]:
    """Seconds after the start at which each of n requests is issued: a Poisson process of `request_rate`/s.

    The first request goes at 0, then exponential gaps of mean 1 / rate; rate inf: every request at 0.
    The seed is the dataset's, so one seed fixes both the prompts and their schedule.
    """
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(f"arrivals-{seed}")
    t, offsets = 0.0, []
    for i in range(n):
        if i:
            t += rng.expovariate(request_rate)
        offsets.append(t)
    return offsets


@dataclasses.dataclass
class RequestRecord:
    """One request as measured: times in seconds (`sent` from the start of the run, the rest from `sent`)."""

    request_id: str
    prompt_len: int
    expected_output_len: int
    ok: bool = False
    error: str = ""
    sent: float = 0.0
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)
    output_tokens: int = 0


class Clock:
    """The timestamps of one request: when it was sent and when each token-carrying chunk arrived."""

    def __init__(self) -> None:
        self.sent = time.perf_counter()
        self.stamps: list[float] = []

    def chunk(self) -> None:
        """A chunk with at least one new token arrived now."""
        self.stamps.append(time.perf_counter())


class RequestFailed(Exception):
    """A request the target answered with an error (HTTP status, an error event, no tokens)."""


# send(prompt ids, max tokens, request id, clock) -> output tokens (None: count the chunks), raising on failure
Send = Callable[[list[int], int, str, Clock], Awaitable[Optional[int]]]


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "..."


async def _timed(send: Send, rec: RequestRecord, prompt: list[int], t0: float) -> None:
    """Send one request and fill `rec` from its clock; any exception becomes a failed record."""
    clock = Clock()
    rec.sent = clock.sent - t0
    try:
        count = await send(prompt, rec.expected_output_len, rec.request_id, clock)
        end = time.perf_counter()
        if not clock.stamps:
            raise RequestFailed("the response carried no tokens")
    except Exception as exc:  # noqa: BLE001 - one failed request must never end the run
        rec.error = _short(f"{type(exc).__name__}: {exc}" if not isinstance(exc, RequestFailed) else exc)
        return
    stamps = clock.stamps
    rec.ok = True
    rec.ttft = stamps[0] - clock.sent
    rec.e2el = end - clock.sent
    rec.itl = [b - a for a, b in zip(stamps, stamps[1:])]
    rec.output_tokens = count if count is not None else len(stamps)


async def drive(send: Send, requests: Sequence[Request], request_rate: float, max_concurrency: Optional[int],
                seed: int = 0) -> tuple[list[RequestRecord], float]:
    """Issue every request on its Poisson arrival time, at most `max_concurrency` at once.

    Returns the records (in dataset order) and the duration: from the start to the end of the last request.
    """
    offsets = arrival_offsets(len(requests), request_rate, seed)
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    records = [RequestRecord(f"bench-{i}", len(p), n) for i, (p, n) in enumerate(requests)]
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        delay = t0 + offsets[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if slots is None:
            await _timed(send, records[i], requests[i][0], t0)
            return
        async with slots:
            await _timed(send, records[i], requests[i][0], t0)

    await asyncio.gather(*(one(i) for i in range(len(requests))))
    return records, time.perf_counter() - t0


# ---- metrics ----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summary(name: str, seconds: Sequence[float]) -> dict[str, Optional[float]]:
    """{name_mean_ms, name_median_ms, name_p99_ms}; None when nothing was measured."""
    ms = [s * 1000 for s in seconds]
    mean = sum(ms) / len(ms) if ms else None
    return {f"{name}_mean_ms": mean, f"{name}_median_ms": percentile(ms, 50), f"{name}_p99_ms": percentile(ms, 99)}


def tpot(rec: RequestRecord) -> Optional[float]:
    """Seconds per output token after the first: (E2EL - TTFT) / (output tokens - 1); None for 0-1 tokens."""
    if not rec.ok or rec.output_tokens < 2:
        return None
    return (rec.e2el - rec.ttft) / (rec.output_tokens - 1)


def prefix_cache_hit_rate(before: Optional[Mapping[str, float]], after: Optional[Mapping[str, float]]
                          ) -> Optional[float]:
    """Hits / queries of the prefix cache during the run (counter differences); None when not measurable."""
    if before is None or after is None:
        return None
    if any(k not in m for m in (before, after) for k in (HITS_COUNTER, QUERIES_COUNTER)):
        return None
    queries = after[QUERIES_COUNTER] - before[QUERIES_COUNTER]
    hits = after[HITS_COUNTER] - before[HITS_COUNTER]
    return hits / queries if queries > 0 else None


def metrics(records: Sequence[RequestRecord], duration: float, cache_before: Optional[Mapping[str, float]] = None,
            cache_after: Optional[Mapping[str, float]] = None) -> dict[str, Any]:
    """The run's result from its records: counts, throughputs (per second of `duration`), latency summaries.

    Tokens and latencies count completed requests only; ITL pools the gaps of every request.
    """
    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    n_in = sum(r.prompt_len for r in done)
    n_out = sum(r.output_tokens for r in done)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: None)
    result: dict[str, Any] = {
        "duration_s": duration, "completed": len(done), "failed": len(failed),
        "first_error": failed[0].error if failed else None,
        "total_input_tokens": n_in, "total_output_tokens": n_out,
        "request_throughput": per_s(len(done)), "output_throughput": per_s(n_out),
        "total_token_throughput": per_s(n_in + n_out),
    }
    result.update(_summary("ttft", [r.ttft for r in done]))
    result.update(_summary("tpot", [t for t in map(tpot, done) if t is not None]))
    result.update(_summary("itl", [g for r in done for g in r.itl]))
    result.update(_summary("e2el", [r.e2el for r in done]))
    result["prefix_cache_hit_rate"] = prefix_cache_hit_rate(cache_before, cache_after)
    return result


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {metric name: value summed over its label sets}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            rest = rest.rpartition("}")[2]
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        values[name.strip()] = values.get(name.strip(), 0.0) + value
    return values


# ---- report -----------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_result(result: Mapping[str, Any]) -> str:
    """The result as a Markdown table (the rows of vLLM's serving summary), then the first error if any."""
    rate = result.get("prefix_cache_hit_rate")
    rows = [
        ("target", result.get("target")), ("model", result.get("model")), ("dataset", result.get("dataset")),
        ("request rate (req/s)", result.get("request_rate")), ("max concurrency", result.get("max_concurrency")),
        ("successful requests", result["completed"]), ("failed requests", result["failed"]),
        ("benchmark duration (s)", result["duration_s"]),
        ("total input tokens", result["total_input_tokens"]), ("total generated tokens", result["total_output_tokens"]),
        ("request throughput (req/s)", result["request_throughput"]),
        ("output token throughput (tok/s)", result["output_throughput"]),
        ("total token throughput (tok/s)", result["total_token_throughput"]),
    ]
    for key, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL")):
        for stat in ("mean", "median", "p99"):
            rows.append((f"{stat} {label} (ms)", result[f"{key}_{stat}_ms"]))
    rows.append(("prefix-cache hit rate", None if rate is None else f"{100 * rate:.1f} %"))
    lines = ["| metric | value |", "|---|---:|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows]
    if result.get("first_error"):
        lines.append("")
        lines.append(f"first error ({result['failed']} failed): {result['first_error']}")
    return "\n".join(lines) + "\n"


# ---- targets ----------------------------------------------------------------------------------------


class AsyncEngineLike(Protocol):
    """The AsyncEngine interface the in-process target needs."""

    def generate(self, prompt_ids: list[int], params: Any, request_id: str) -> AsyncIterator[Any]: ...


def root_url(base_url: str) -> str:
    """The server root: a trailing '/' or '/v1' (an OpenAI client's base URL) is dropped."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def parse_sse_line(line: str) -> Optional[Any]:
    """One server-sent-events line -> its JSON data, the string "[DONE]", or None (not a data line)."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:"):].strip()
    if data == "[DONE]":
        return data
    return json.loads(data) if data else None


def _carries_tokens(event: Mapping[str, Any]) -> bool:
    """A completion chunk with new text (or token ids); the usage chunk and a bare finish_reason carry none."""
    choices = event.get("choices") or []
    return any(c.get("text") or c.get("token_ids") for c in choices if isinstance(c, Mapping))


def _http_send(client: Any, model: str) -> Send:
    """POST /v1/completions, streamed; stamps each token chunk, returns usage.completion_tokens if given."""
    async def send(prompt: list[int], max_tokens: int, request_id: str, clock: Clock) -> Optional[int]:
        payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                   "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        usage, done = None, False
        async with client.stream("POST", "/v1/completions", json=payload) as resp:
            if resp.status_code >= 400:
                body = (await resp.aread()).decode("utf-8", "replace")
                raise RequestFailed(f"HTTP {resp.status_code}: {body}")
            async for line in resp.aiter_lines():
                event = parse_sse_line(line)
                if event == "[DONE]":
                    done = True
                    break
                if not isinstance(event, Mapping):
                    continue
                if event.get("error"):
                    raise RequestFailed(f"error event: {event['error']}")
                if _carries_tokens(event):
                    clock.chunk()
                if isinstance(event.get("usage"), Mapping) and event["usage"].get("completion_tokens") is not None:
                    usage = int(event["usage"]["completion_tokens"])
        if not done:
            raise RequestFailed("the stream ended before `data: [DONE]`")
        return usage
    return send


def _engine_send(engine: AsyncEngineLike, make_params: Callable[[int], Any]) -> Send:
    """engine.generate(...) in process; each output with new tokens is one chunk, and its ids are counted."""
    async def send(prompt: list[int], max_tokens: int, request_id: str, clock: Clock) -> Optional[int]:
        stream = engine.generate(list(prompt), make_params(max_tokens), request_id)
        if asyncio.iscoroutine(stream):  # an `async def` returning the iterator
            stream = await stream
        count = 0
        try:
            async for out in stream:
                new = list(getattr(out, "new_token_ids", None) or [])
                if new:
                    clock.chunk()
                    count += len(new)
                if getattr(out, "finished", False):
                    break
        finally:  # a generator left after `finished` would hold the request until garbage collection
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return count
    return send


def _httpx():
    """httpx, the HTTP client of the benchmark (an InputError with the install line when it is missing)."""
    try:
        import httpx
    except ImportError:
        raise InputError("dsa bench serve needs httpx: pip install 'httpx>=0.27'") from None
    return httpx


def _unreachable(url: str, exc: Exception) -> InputError:
    return InputError(f"cannot reach the server at {url}: {type(exc).__name__}: {_short(exc)}; "
                      "start it with `dsa serve --device cpu`")


async def _discover_model(client: Any, c: BenchServeConfig, url: str) -> tuple[str, Mapping[str, Any]]:
    """GET /v1/models: checks the server is up, and names the model when the config does not.

    Returns (model, its /v1/models entry or {}).
    """
    httpx = _httpx()
    try:
        resp = await client.get("/v1/models")
    except httpx.TransportError as exc:
        raise _unreachable(url, exc) from None
    entries: list = []
    if resp.status_code == 200:
        try:
            entries = [e for e in resp.json().get("data", []) if isinstance(e, Mapping)]
        except (ValueError, AttributeError):
            entries = []
    if c.model is not None:
        return c.model, next((e for e in entries if e.get("id") == c.model), {})
    if not entries or not entries[0].get("id"):
        raise InputError(f"GET {url}/v1/models (HTTP {resp.status_code}) named no model; pass --model NAME")
    return str(entries[0]["id"]), entries[0]


def _check_fits(requests: Sequence[Request], entry: Mapping[str, Any]) -> None:
    """The longest request must fit the server's context (its /v1/models `max_model_len`, when given)."""
    limit = entry.get("max_model_len")
    if not _is_int(limit) or not requests:
        return
    need = max(len(p) + n for p, n in requests)
    if need > limit:
        raise InputError(f"the longest request needs {need} tokens (prompt + output) but the server's max_model_len "
                         f"is {limit}; lower --random-input-len / --random-output-len / --prefix-len")


async def _scrape(client: Any) -> Optional[dict[str, float]]:
    """GET /metrics as Prometheus counters; None when the server has none (any failure)."""
    try:
        resp = await client.get("/metrics", timeout=10.0)
        return parse_prometheus(resp.text) if resp.status_code == 200 else None
    except Exception:  # noqa: BLE001 - metrics are optional
        return None


def _describe(c: BenchServeConfig, target: str, model: Optional[str]) -> dict[str, Any]:
    """The settings echoed into the result (request_rate "inf" keeps the JSON standard)."""
    rate = "inf" if math.isinf(c.request_rate) else c.request_rate
    return {"target": target, "model": model, "dataset": c.dataset, "num_prompts": c.num_prompts,
            "request_rate": rate, "max_concurrency": c.max_concurrency, "seed": c.seed}


async def _bench_http(c: BenchServeConfig, requests: list[Request], transport: Any = None) -> dict[str, Any]:
    """The HTTP target: check the server and the model, scrape /metrics around the timed run."""
    httpx = _httpx()

    url = root_url(c.base_url)
    headers = {"Authorization": f"Bearer {c.api_key}"} if c.api_key else {}
    limits = httpx.Limits(max_connections=c.max_concurrency, max_keepalive_connections=c.max_concurrency)
    # trust_env=False: measure the server itself, never through an HTTP proxy from the environment
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(c.timeout, connect=10.0),
                                 limits=limits, transport=transport, trust_env=False) as client:
        model, entry = await _discover_model(client, c, url)
        _check_fits(requests, entry)
        before = await _scrape(client)
        records, duration = await drive(_http_send(client, model), requests, c.request_rate, c.max_concurrency,
                                        c.seed)
        after = await _scrape(client) if before is not None else None
    return {**_describe(c, url, model), **metrics(records, duration, before, after)}


async def bench_serve(config: BenchServeConfig, engine: Optional[AsyncEngineLike] = None,
                      make_params: Optional[Callable[[int], Any]] = None, transport: Any = None) -> dict[str, Any]:
    """The benchmark in the running event loop: the server at config.base_url, or `engine` in process.

    engine: an object with AsyncEngine's `generate(prompt_ids, params, request_id)`; make_params(max_tokens)
    builds its sampling params (greedy, ignoring eos, so each request makes exactly max_tokens tokens).
    transport: an httpx transport for the HTTP target (tests). Raises InputError for bad settings or a
    server that cannot be reached; failed requests are counted in the result.
    """
    check_config(config)
    requests = build_dataset(config)
    if engine is None:
        return await _bench_http(config, requests, transport)
    if make_params is None:
        raise InputError("an in-process engine needs make_params(max_tokens) -> its sampling params")
    records, duration = await drive(_engine_send(engine, make_params), requests, config.request_rate,
                                    config.max_concurrency, config.seed)
    return {**_describe(config, "in-process", config.model), **metrics(records, duration)}


def run_bench_serve(config: BenchServeConfig, engine: Optional[AsyncEngineLike] = None,
                    make_params: Optional[Callable[[int], Any]] = None, transport: Any = None) -> dict[str, Any]:
    """`bench_serve` in a fresh event loop: the entry of `dsa bench serve` and of scripts."""
    return asyncio.run(bench_serve(config, engine, make_params, transport))


# ---- plot -------------------------------------------------------------------------------------------


def plot_throughput(rows: Sequence[Mapping[str, Any]], path: str | Path,
                    title: str = "dsa bench serve: output throughput vs concurrency") -> Path:
    """Output tok/s against concurrency (log2 axis), one line per engine, one subplot per prompt length; a PNG.

    rows: dicts {engine, concurrency, prompt_len, output_tok_s}. matplotlib (the `bench` extra) is imported
    here, with the Agg canvas directly, so no display and no pyplot state are involved.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise InputError("plot_throughput: no rows to plot")
    lens = sorted({int(r["prompt_len"]) for r in rows})
    fig = Figure(figsize=(5 * len(lens), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(lens), squeeze=False)[0]
    for ax, plen in zip(axes, lens):
        here = [r for r in rows if int(r["prompt_len"]) == plen]
        for engine in sorted({str(r["engine"]) for r in here}):
            pts = sorted((r["concurrency"], r["output_tok_s"]) for r in here if str(r["engine"]) == engine)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=engine)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("output throughput (tok/s)")
        ax.set_title(f"prompt {plen} tokens")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    out = Path(path)
    fig.savefig(out, format="png", dpi=100)
    return out
