"""Engine: the synchronous client of EngineCore that `dsa run` and `LLM` use.

`generate(prompt_ids, params)` streams one request's token ids; `generate_all(...)` submits many requests
at once and steps the core until all are done (continuous batching: each step runs every running
request's next tokens in one forward pass). `GenerationStats` records each request's measured prompt
(time to first token) and decode throughput.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from dsa.engine.core import EngineCore
from dsa.engine.request import RequestOutput, check_prompt_fits  # noqa: F401  (check_prompt_fits: re-exported)
from dsa.engine.sampling import SamplingParams, sample  # noqa: F401  (SamplingParams: re-exported)
from dsa.engine.scheduler import SchedulerConfig
from dsa.errors import InputError


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    decode_tokens: int = 0  # tokens generated (the first comes from the prefill's logits)
    decode_steps: int = 0  # single-token forward passes
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""  # "eos" | "length" | "context"

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")

    @property
    def decode_tps(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def summary(self) -> str:
        return (
            f"prompt: {self.prompt_tokens} tokens, {self.prefill_tps:.1f} tok/s | "
            f"decode: {self.decode_tokens} tokens, {self.decode_tps:.1f} tok/s | stop: {self.stop_reason}"
        )


DEFAULT_SEQUENCES = 4  # cache sized for this many full-context sequences when num_blocks is not given


@dataclass
class Engine:
    model: torch.nn.Module
    config: object  # model.config.ModelConfig
    page_size: int
    kv_cache_dtype: str = "bf16"
    dtype: torch.dtype = torch.bfloat16
    indexer_fp8: bool = True
    max_seq_len: Optional[int] = None
    eos_token_ids: tuple[int, ...] = (1,)
    device: Optional[torch.device] = None  # None: the model's parameters' device
    num_blocks: Optional[int] = None  # None: DEFAULT_SEQUENCES full contexts
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    enable_prefix_caching: bool = True
    cuda_graphs: bool = True  # capture decode steps where possible (dsa.engine.cuda_graphs)
    last_stats: GenerationStats = field(default_factory=GenerationStats)

    def __post_init__(self):
        if self.max_seq_len is None:
            self.max_seq_len = self.config.max_position_embeddings
        if self.page_size < 1:
            raise InputError(f"page_size must be >= 1, got {self.page_size}")
        if self.num_blocks is None:
            self.num_blocks = DEFAULT_SEQUENCES * -(-self.max_seq_len // self.page_size)
        self.core = EngineCore(
            self.model, self.config, page_size=self.page_size, num_blocks=self.num_blocks,
            max_seq_len=self.max_seq_len, kv_cache_dtype=self.kv_cache_dtype, dtype=self.dtype,
            indexer_fp8=self.indexer_fp8, eos_token_ids=self.eos_token_ids, device=self.device,
            scheduler=self.scheduler, enable_prefix_caching=self.enable_prefix_caching, cuda_graphs=self.cuda_graphs,
        )
        self.device = self.core.device
        self.cache, self.blocks = self.core.cache, self.core.blocks
        self._ids = itertools.count()

    def check_prompt(self, prompt_tokens: int) -> None:
        """InputError unless a prompt of this many tokens leaves room in this engine's context."""
        self.core.check_prompt(prompt_tokens)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield generated token ids (the eos that stops generation is not yielded). Stopping early (closing
        the generator) aborts the request and frees its blocks."""
        rid = f"gen-{next(self._ids)}"
        req = self.core.add_request(rid, prompt_ids, params)
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids))
        t0 = time.perf_counter()
        t_first = None
        try:
            while not req.finished:
                for out in self.core.step():
                    if out.request_id != rid:
                        continue
                    if t_first is None:
                        t_first = time.perf_counter()
                        stats.prefill_seconds = t_first - t0
                    else:
                        stats.decode_steps += 1
                    for token in out.new_token_ids:
                        stats.decode_tokens += 1
                        yield token
            stats.stop_reason = req.stop_reason
            stats.decode_seconds = time.perf_counter() - (t_first if t_first is not None else t0)
        finally:
            self.core.abort_request(rid)  # a no-op once finished

    def generate_all(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams]) -> list[RequestOutput]:
        """Every prompt submitted at once; steps until all are done. One final RequestOutput per prompt, in
        order, with all its tokens (new_token_ids) and logprobs; `stats[i]` holds prompt i's timing."""
        if len(prompts) != len(params):
            raise ValueError("one SamplingParams per prompt")
        for ids in prompts:  # every prompt checked before any is queued
            self.core.check_request(ids)
        base = next(self._ids)
        rids = [f"batch-{base}-{i}" for i in range(len(prompts))]
        reqs = []
        t0 = time.perf_counter()
        try:
            for rid, ids, p in zip(rids, prompts, params):
                reqs.append(self.core.add_request(rid, ids, p))
            stats = {rid: GenerationStats(prompt_tokens=len(ids)) for rid, ids in zip(rids, prompts)}
            first: dict[str, float] = {}
            while any(not r.finished for r in reqs):
                for out in self.core.step():
                    st = stats.get(out.request_id)
                    if st is None:
                        continue
                    now = time.perf_counter()
                    if out.request_id not in first:
                        first[out.request_id] = now
                        st.prefill_seconds = now - t0
                    else:
                        st.decode_steps += 1
                    st.decode_tokens += len(out.new_token_ids)
                    if out.finished:
                        st.decode_seconds = now - first[out.request_id]
                        st.stop_reason = out.stop_reason
        finally:
            for rid in rids:
                self.core.abort_request(rid)
        self.stats = [stats[rid] for rid in rids]
        return [RequestOutput(r.request_id, list(r.output_ids), list(r.output_logprobs) if r.params.logprobs
                              is not None else None, True, r.stop_reason, len(r.prompt_ids), len(r.output_ids),
                              r.num_cached_tokens) for r in reqs]
