"""A request's state in the engine, and what one engine step reports about it.

    WAITING --schedule--> RUNNING --eos / stop id / max_new_tokens / context full--> FINISHED
       ^                     |
       +----- preempted -----+   (blocks taken back; its tokens are recomputed when it runs again)

`num_computed` counts the tokens whose cache rows are written; the next step computes (some of) the other
`num_tokens - num_computed`: the whole prompt, a chunk of it, or the one token sampled last.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from dsa.engine.sampling import SamplingParams, TokenLogprob
from dsa.errors import InputError


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# why a request ended -> the OpenAI finish_reason
FINISH_REASONS = {"eos": "stop", "stop_token": "stop", "stop": "stop", "length": "length", "context": "length",
                  "abort": "abort"}


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[TokenLogprob] = field(default_factory=list)
    status: Status = Status.WAITING
    stop_reason: Optional[str] = None  # eos | stop_token | length | context | stop (a stop string) | abort
    num_computed: int = 0  # tokens (prompt + output) whose KV / index rows are in the cache
    blocks: list[int] = field(default_factory=list)  # cache blocks, in position order
    num_cached_tokens: int = 0  # prompt tokens the prefix cache supplied at the first admission
    num_preemptions: int = 0
    first_token_time: Optional[float] = None
    generator: Optional[torch.Generator] = None

    def __post_init__(self):
        if self.generator is None:
            self.generator = self.params.make_generator()

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_pending(self) -> int:
        """Tokens the next step must compute for this request (>= 1 while it is not finished)."""
        return self.num_tokens - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def finish_reason(self) -> Optional[str]:
        return FINISH_REASONS.get(self.stop_reason) if self.stop_reason else None


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one request: its new tokens (zero while a prompt is still being
    prefilled in chunks, one after a decode row), and whether it is done."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: Optional[list[TokenLogprob]]  # None unless the request asked for logprobs
    finished: bool
    stop_reason: Optional[str]  # see Request.stop_reason
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int

    @property
    def finish_reason(self) -> Optional[str]:
        """The OpenAI name: "stop" | "length" | "abort" (None while running)."""
        return FINISH_REASONS.get(self.stop_reason) if self.stop_reason else None

    @classmethod
    def of(cls, req: Request, new_ids: list[int], new_logprobs: Optional[list[TokenLogprob]]) -> "RequestOutput":
        return cls(req.request_id, new_ids, new_logprobs, req.finished, req.stop_reason, len(req.prompt_ids),
                   len(req.output_ids), req.num_cached_tokens)


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


__all__ = ["Request", "RequestOutput", "Status", "FINISH_REASONS", "check_prompt_fits"]
