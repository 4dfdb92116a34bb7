"""Sampling: the per-request parameters (validated at construction) and one token from the logits."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from dsa.errors import InputError
from dsa.model.fields import seed_problem


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy. top_p 1 = no nucleus cut. seed None = nondeterministic."""

    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 200
    seed: Optional[int] = None

    def __post_init__(self):
        t, p, n = self.temperature, self.top_p, self.max_new_tokens
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {p!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {n!r}")
        problem = None if self.seed is None else seed_problem(self.seed)
        if problem:
            raise InputError(f"seed {problem}")


def sample(logits: torch.Tensor, params: SamplingParams, generator: Optional[torch.Generator]) -> int:
    """logits [vocab] fp32 -> one token id."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.double()
    # Shift first so a tiny temperature gives -inf (not inf - inf = NaN) to all but the best tokens.
    probs = torch.softmax((logits - logits.max()) / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each candidate
        cut = before >= params.top_p
        cut[0] = False  # the top candidate always survives, however small top_p is
        sorted_p[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    # argmax(p / E) with E ~ Exp(1) draws from the categorical distribution p (docs/model-and-ops.md 2.4)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return int(torch.argmax(probs / noise))


__all__ = ["SamplingParams", "sample"]
