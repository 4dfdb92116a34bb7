"""The choices of one API request, each an engine request, as text deltas.

    runs = [ChoiceRun(i, engine, ids, params, f"{api_id}-{i}", host, stop=req.stop, logprobs=True), ...]
    await open_all(runs)                   # every request queued and its first output in, or the error raised
    async for delta in merged(runs):       # ChoiceDelta: new text (+ logprobs) of one choice, in arrival order
        ...
    results = await collect_all(runs)      # or: each choice's whole text, logprobs and finish reason

A choice's text goes through a TextStream (incremental decoding, stop strings). When a stop string appears,
the engine request is aborted at once (finish_reason "stop") and its blocks freed. Leaving early (a client
that disconnects, an error) closes every engine stream, which aborts what is still running.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Sequence

from dsa.engine.request import RequestOutput
from dsa.engine.sampling import SamplingParams, TokenLogprob
from dsa.errors import DsaError
from dsa.server.errors import from_dsa_error
from dsa.server.stream import TextStream, token_bytes, token_text


@dataclass(frozen=True)
class TokenInfo:
    """A generated token for the logprobs of a response: its text, bytes, log-probability, alternatives and
    the offset of its text in the choice's text."""

    token: str
    bytes: list[int]
    logprob: float
    top: tuple[tuple[str, float, list[int]], ...]
    offset: int


@dataclass
class ChoiceDelta:
    index: int
    text: str = ""
    logprobs: list[TokenInfo] = field(default_factory=list)
    finish_reason: Optional[str] = None


@dataclass
class ChoiceResult:
    index: int
    text: str
    logprobs: list[TokenInfo]
    finish_reason: str
    num_output_tokens: int


class ChoiceRun:
    def __init__(self, index: int, engine, prompt_ids: Sequence[int], params: SamplingParams, request_id: str,
                 host, *, stop: Sequence[str] = (), logprobs: bool = False, arrival: Optional[float] = None):
        self.index, self.engine, self.request_id = index, engine, request_id
        self.prompt_ids, self.params = list(prompt_ids), params
        self.tokenizer = host.tokenizer
        self.text = TextStream(self.tokenizer, stop)
        self.want_logprobs = logprobs
        self.tracker = host.metrics.tracker(time.monotonic() if arrival is None else arrival, len(self.prompt_ids))
        self.num_output_tokens = 0
        self._gen = None
        self._first: Optional[RequestOutput] = None
        self._pending: list[TokenInfo] = []  # logprobs of tokens whose text is not sent yet

    async def open(self) -> None:
        """Queue the request and wait for its first output: errors (queue full, a bad prompt, the engine gone)
        surface here, before any response is started."""
        self._gen = self.engine.generate(self.prompt_ids, self.params, self.request_id)
        try:
            self._first = await self._gen.__anext__()
        except BaseException:
            await self.close()
            raise

    async def close(self, reason: Optional[str] = None) -> None:
        """Abort the engine request if it still runs (a no-op once it finished). `reason`: count it as a
        finished request with that reason unless it was counted already (a run never read: "abort")."""
        gen, self._gen = self._gen, None
        if reason is not None:
            self.tracker.finish(reason)
        if gen is not None:
            await gen.aclose()

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """This choice's deltas; the last carries finish_reason. Needs `open()` first."""
        out, self._first = self._first, None
        reason = "abort"
        try:
            while out is not None:
                delta = self._take(out)
                if delta is not None:
                    yield delta
                    if delta.finish_reason is not None:
                        reason = delta.finish_reason
                        return
                try:
                    out = await self._gen.__anext__()
                except StopAsyncIteration:  # the engine ended the stream without a last output: never expected
                    out = None
                except DsaError as err:
                    raise from_dsa_error(err) from None
            yield ChoiceDelta(self.index, self.text.finish(), self._flush(), "abort")
        finally:
            self.tracker.finish(reason)
            await self.close()

    def _take(self, out: RequestOutput) -> Optional[ChoiceDelta]:
        """One engine output as a delta (None when it has nothing to send yet)."""
        pieces = []
        lps = out.new_logprobs or [None] * len(out.new_token_ids)
        for token, lp in zip(out.new_token_ids, lps):
            offset = self.text.decoded
            pieces.append(self.text.push(token))
            self.num_output_tokens += 1
            if self.want_logprobs and lp is not None:
                self._pending.append(self._info(lp, offset))
            if self.text.stopped:
                break
        self.tracker.tokens(len(pieces))
        text = "".join(pieces)
        if self.text.stopped:
            self.engine.abort(self.request_id, "stop")
            return ChoiceDelta(self.index, text, self._flush(), "stop")
        if out.finished:
            return ChoiceDelta(self.index, text + self.text.finish(), self._flush(), out.finish_reason or "stop")
        if not text:
            return None
        return ChoiceDelta(self.index, text, self._flush())

    def _flush(self) -> list[TokenInfo]:
        pending, self._pending = self._pending, []
        return pending

    def _info(self, lp: TokenLogprob, offset: int) -> TokenInfo:
        tok = self.tokenizer
        top = tuple((token_text(tok, i), v, token_bytes(tok, i)) for i, v in lp.top)
        return TokenInfo(token_text(tok, lp.token_id), token_bytes(tok, lp.token_id), lp.logprob, top, offset)

    def result(self, deltas: Sequence[ChoiceDelta]) -> ChoiceResult:
        return ChoiceResult(self.index, "".join(d.text for d in deltas), [i for d in deltas for i in d.logprobs],
                            deltas[-1].finish_reason if deltas else "abort", self.num_output_tokens)


async def open_all(runs: Sequence[ChoiceRun]) -> None:
    """Open every run; if one fails, close the others and raise its error (an APIError)."""
    results = await asyncio.gather(*(r.open() for r in runs), return_exceptions=True)
    failed = [e for e in results if isinstance(e, BaseException)]
    if failed:
        await asyncio.gather(*(r.close() for r in runs), return_exceptions=True)
        err = failed[0]
        raise from_dsa_error(err) if isinstance(err, DsaError) else err


async def close_all(runs: Sequence[ChoiceRun]) -> None:
    """However a response ended (a client gone before it started included): no engine request is left running."""
    await asyncio.gather(*(r.close("abort") for r in runs), return_exceptions=True)


async def collect_all(runs: Sequence[ChoiceRun]) -> list[ChoiceResult]:
    async def one(run: ChoiceRun) -> ChoiceResult:
        return run.result([d async for d in run.deltas()])

    tasks = [asyncio.ensure_future(one(r)) for r in runs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # one failed (or we were cancelled): stop the others
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_END = object()


async def merged(runs: Sequence[ChoiceRun]) -> AsyncIterator[ChoiceDelta]:
    """The deltas of all runs as they come; closing this iterator (or an error of one run) stops them all."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(run: ChoiceRun) -> None:
        try:
            async for delta in run.deltas():
                queue.put_nowait(delta)
            queue.put_nowait(_END)
        except Exception as err:  # noqa: BLE001  handed to the consumer
            queue.put_nowait(err)

    tasks = [asyncio.ensure_future(pump(r)) for r in runs]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is _END:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(r.close() for r in runs), return_exceptions=True)


__all__ = ["ChoiceRun", "ChoiceDelta", "ChoiceResult", "TokenInfo", "open_all", "close_all", "collect_all", "merged"]
