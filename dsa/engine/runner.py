"""The model runner: one forward pass per step over every scheduled request, then the batch's sampling.

The step's requests become one ragged `Batch` (decode rows and prefill chunks together; the tokens of
request b are positions num_computed .. num_computed + n - 1 of its sequence), the model runs once and
returns the last row's logits of each request. Only requests whose pending tokens are all computed by
this step (a decode row, or the last chunk of a prompt) sample a token. A step of decode rows only
replays a captured CUDA graph when the engine captured them (dsa.engine.cuda_graphs).
"""
from __future__ import annotations

from typing import Optional

import torch

from dsa.engine.cuda_graphs import DecodeGraphs
from dsa.engine.request import Request
from dsa.engine.sampling import TokenLogprob, logprobs_of, sample_batch
from dsa.engine.scheduler import StepPlan
from dsa.model.cache import Batch, PagedCache


class ModelRunner:
    def __init__(self, model, cache: PagedCache, device: torch.device, graphs: Optional[DecodeGraphs] = None):
        self.model, self.cache, self.device = model, cache, device
        self.graphs = graphs  # captured decode steps (dsa.engine.cuda_graphs), or None: every step eager
        self.shared_generator = torch.Generator()  # noise of the requests without a seed
        self.shared_generator.seed()

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> tuple[list[Request], list[int], list[Optional[TokenLogprob]]]:
        """Compute the plan's tokens; returns the requests that sampled, their tokens and logprobs."""
        reqs, num_new = plan.requests, plan.num_new
        if self.graphs is not None and all(
                n == 1 and r.num_computed + 1 == r.num_tokens for r, n in zip(reqs, num_new)):
            logits = self.graphs.run([r.token_ids[r.num_computed] for r in reqs], [r.num_tokens for r in reqs],
                                     [r.blocks for r in reqs])  # [B, vocab]: every row samples
            if logits is not None:  # else no captured shape fits this step: it runs eagerly below
                return self._sample(reqs, logits.float().cpu())
        ids: list[int] = []
        for req, n in zip(reqs, num_new):
            ids += req.token_ids[req.num_computed:req.num_computed + n]
        batch = Batch.build(new_lens=num_new, context_lens=[r.num_computed for r in reqs],
                            block_tables=[r.blocks for r in reqs], page_size=self.cache.page_size, device=self.device)
        logits = self.model(torch.tensor(ids, dtype=torch.long, device=self.device), batch, self.cache,
                            last_only=True)  # [B, vocab]
        rows = [b for b, (r, n) in enumerate(zip(reqs, num_new)) if r.num_computed + n == r.num_tokens]
        if not rows:
            return [], [], []
        logits = logits[torch.tensor(rows, device=logits.device)].float().cpu()  # sampling runs on the host
        return self._sample([reqs[b] for b in rows], logits)

    def _sample(self, sampled: list[Request], logits) -> tuple[list[Request], list[int], list[Optional[TokenLogprob]]]:
        """Tokens (and logprobs where asked) of the requests that sample, from their logits [n, vocab] on the host."""
        tokens = sample_batch(logits, [r.params for r in sampled], [r.generator for r in sampled],
                              self.shared_generator)
        wants = [r.params.logprobs for r in sampled]
        logprobs: list[Optional[TokenLogprob]] = [None] * len(sampled)
        if any(w is not None for w in wants):
            got = logprobs_of(logits, tokens, [w or 0 for w in wants])
            logprobs = [g if w is not None else None for g, w in zip(got, wants)]
        return sampled, tokens, logprobs


__all__ = ["ModelRunner"]
