"""Sampling: the per-request parameters (validated at construction) and the next token of every row of a step.

`sample_batch` draws the tokens of a whole step at once: greedy rows by one argmax, the others by one
temperature softmax and one nucleus cut over the batch, then argmax(p / E), E ~ Exp(1) (docs/model-and-ops.md
2.4). Each seeded request draws its noise from its own generator, so its tokens do not depend on the other
requests of the batch; the noise of one row is exactly what `sample` draws for that request alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from dsa.errors import InputError
from dsa.model.fields import is_int, seed_problem

MAX_LOGPROBS = 20  # the OpenAI API's limit on top_logprobs


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy. top_p 1 = no nucleus cut. seed None = nondeterministic.

    max_new_tokens: tokens to generate at most (the OpenAI API's max_tokens). stop_token_ids: ids that end
    the generation like eos (not part of the output). ignore_eos: keep generating through eos (benchmarks).
    logprobs: None = none; N >= 0 = the chosen token's log-probability plus the N most likely tokens'.
    """

    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 200
    seed: Optional[int] = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: Optional[int] = None

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
        ids = self.stop_token_ids
        if not isinstance(ids, (tuple, list)) or not all(is_int(i) and i >= 0 for i in ids):
            raise InputError(f"stop_token_ids must be a list of token ids (integers >= 0), got {ids!r}")
        object.__setattr__(self, "stop_token_ids", tuple(ids))
        if not isinstance(self.ignore_eos, bool):
            raise InputError(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        lp = self.logprobs
        if lp is not None and not (is_int(lp) and 0 <= lp <= MAX_LOGPROBS):
            raise InputError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {lp!r}")

    def make_generator(self) -> Optional[torch.Generator]:
        """The request's own noise source (None without a seed: the batch's shared one is used)."""
        return None if self.seed is None else torch.Generator().manual_seed(self.seed)


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability under the model (before temperature / top_p, as vLLM reports it),
    with the `top` most likely tokens as (id, logprob), best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """probs [B, V] float64 with each row's mass outside its top_p nucleus zeroed (the best token always stays)."""
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each candidate
    cut = before >= top_p[:, None]
    cut[:, 0] = False
    sorted_p = sorted_p.masked_fill(cut, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def sample_batch(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[Optional[torch.Generator]],
    shared: Optional[torch.Generator] = None,
) -> list[int]:
    """logits [B, V] fp32 (one row per request) -> B token ids."""
    tokens = torch.argmax(logits, dim=-1)  # [B]; the greedy rows' answer
    rows = [b for b, p in enumerate(params) if p.temperature > 0]
    if rows:
        idx = torch.tensor(rows)
        x = logits[idx].double()  # [R, V]
        temp = torch.tensor([params[b].temperature for b in rows], dtype=torch.float64)
        # shift first so a tiny temperature gives -inf (not inf - inf = NaN) to all but the best tokens
        probs = torch.softmax((x - x.max(dim=-1, keepdim=True).values) / temp[:, None], dim=-1)
        top_p = torch.tensor([float(params[b].top_p) for b in rows], dtype=torch.float64)
        if bool((top_p < 1.0).any()):
            cut = _nucleus(probs, top_p)
            probs = torch.where((top_p < 1.0)[:, None], cut, probs)
        noise = torch.empty_like(probs)
        for r, b in enumerate(rows):
            noise[r].exponential_(1.0, generator=generators[b] if generators[b] is not None else shared)
        tokens[idx] = torch.argmax(probs / noise, dim=-1)
    return tokens.tolist()


def sample(logits: torch.Tensor, params: SamplingParams, generator: Optional[torch.Generator]) -> int:
    """logits [vocab] fp32 -> one token id (one row of sample_batch)."""
    return sample_batch(logits[None], [params], [generator])[0]


def logprobs_of(logits: torch.Tensor, tokens: Sequence[int], counts: Sequence[int]) -> list[TokenLogprob]:
    """logits [B, V] fp32, the chosen tokens [B], the top-N count per row -> one TokenLogprob per row."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, torch.tensor(list(tokens))[:, None]).squeeze(-1).tolist()
    most = max(counts, default=0)
    top_v, top_i = (logp.topk(most, dim=-1) if most else (None, None))
    out = []
    for b, (tok, n) in enumerate(zip(tokens, counts)):
        top = tuple(zip(top_i[b, :n].tolist(), top_v[b, :n].tolist())) if n else ()
        out.append(TokenLogprob(int(tok), float(chosen[b]), top))
    return out


__all__ = ["SamplingParams", "TokenLogprob", "sample", "sample_batch", "logprobs_of", "MAX_LOGPROBS"]
