"""Generation: prefill, decode with the paged KV + index caches, sampling, stop conditions.

The engine owns the caches and the block allocator; the model is the shared graph of `dsa/model/`.
One `generate` call serves one sequence and streams its token ids; `GenerationStats` records the
measured prompt (prefill) and decode throughput.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from dsa.engine.sampling import SamplingParams, sample  # noqa: F401  (SamplingParams: re-exported)
from dsa.errors import InputError
from dsa.model.cache import Batch, BlockAllocator, PagedCache


def check_prompt_fits(prompt_tokens: int, max_seq_len: int, max_position_embeddings: Optional[int] = None) -> None:
    """A prompt must leave room for at least one generated token: it must be shorter than the context by at
    least 1. Raising --max-seq-len is suggested only where it can help: below `max_position_embeddings` (the
    model's limit; when not given, the hint says it is the ceiling)."""
    if prompt_tokens < max_seq_len:
        return
    if prompt_tokens == max_seq_len:
        problem = (f"the prompt has {prompt_tokens} tokens and fills the context of {max_seq_len} exactly, leaving no "
                   "room for a generated token (a prompt must be shorter than the context by at least 1)")
    else:
        problem = (f"the prompt has {prompt_tokens} tokens but the context holds {max_seq_len} (a prompt must be "
                   "shorter than the context by at least 1)")
    if max_position_embeddings is None:
        hint = "shorten the prompt (or raise --max-seq-len, if it is below the model's max_position_embeddings)"
    elif prompt_tokens < max_position_embeddings and max_seq_len < max_position_embeddings:
        hint = (f"shorten the prompt, or raise --max-seq-len to at least {prompt_tokens + 1} (the model allows up "
                f"to {max_position_embeddings})")
    elif max_seq_len < max_position_embeddings:
        hint = f"shorten the prompt: even the model's longest context ({max_position_embeddings}) cannot hold it"
    else:
        hint = (f"shorten the prompt (--max-seq-len {max_seq_len} is already at the model's limit, "
                f"max_position_embeddings {max_position_embeddings})")
    raise InputError(f"{problem}; {hint}")


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
    last_stats: GenerationStats = field(default_factory=GenerationStats)

    def __post_init__(self):
        if self.max_seq_len is None:
            self.max_seq_len = self.config.max_position_embeddings
        if self.page_size < 1:
            raise InputError(f"page_size must be >= 1, got {self.page_size}")
        if self.device is None:
            params = getattr(self.model, "parameters", None)
            first = next(params(), None) if params is not None else None
            self.device = first.device if first is not None else torch.device("cpu")
        num_blocks = -(-self.max_seq_len // self.page_size)
        self.cache = PagedCache(
            self.config, num_blocks=num_blocks, page_size=self.page_size,
            kv_cache_dtype=self.kv_cache_dtype, dtype=self.dtype, indexer_fp8=self.indexer_fp8, device=self.device,
        )
        self.allocator = BlockAllocator(num_blocks)

    def _step(self, tokens: list[int], context_len: int, blocks: list[int]) -> torch.Tensor:
        """Run len(tokens) new tokens of the one sequence; return the last token's logits [vocab]."""
        needed = -(-(context_len + len(tokens)) // self.page_size)
        if needed > len(blocks):
            blocks.extend(self.allocator.allocate(needed - len(blocks)))
        batch = Batch.build(new_lens=[len(tokens)], context_lens=[context_len], block_tables=[blocks],
                            page_size=self.page_size, device=self.device)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        return self.model(ids, batch, self.cache, last_only=True)[0].cpu()  # sampling runs on the host

    def check_prompt(self, prompt_tokens: int) -> None:
        """InputError unless a prompt of this many tokens leaves room in this engine's context."""
        check_prompt_fits(prompt_tokens, self.max_seq_len, self.config.max_position_embeddings)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield generated token ids (the eos that stops generation is not yielded)."""
        if not prompt_ids:
            raise InputError("the prompt is empty; give at least one token")
        self.check_prompt(len(prompt_ids))
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids))
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        blocks: list[int] = []
        try:
            t0 = time.perf_counter()
            logits = self._step(list(prompt_ids), 0, blocks)
            stats.prefill_seconds = time.perf_counter() - t0
            length = len(prompt_ids)
            t0 = time.perf_counter()
            while True:
                token = sample(logits, params, generator)
                if token in self.eos_token_ids:
                    stats.stop_reason = "eos"
                    break
                stats.decode_tokens += 1
                yield token
                if stats.decode_tokens >= params.max_new_tokens:
                    stats.stop_reason = "length"
                    break
                if length + 1 >= self.max_seq_len:  # the sequence now fills the context
                    stats.stop_reason = "context"
                    break
                logits = self._step([token], length, blocks)
                stats.decode_steps += 1
                length += 1
            stats.decode_seconds = time.perf_counter() - t0
        finally:
            self.allocator.free(blocks)
