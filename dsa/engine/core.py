"""EngineCore: requests in, one scheduled forward pass per `step()`, tokens out.

    core.add_request("r1", prompt_ids, SamplingParams(...))
    while core.has_unfinished():
        for out in core.step():          # RequestOutput: new tokens of each request, finished or not
            ...

The core owns the paged caches, the block manager (refcounts + prefix cache), the scheduler and the
runner; it holds no global state and knows no tokenizer (stop strings are the text layer's: it calls
`abort_request(id, "stop")` when one appears). Not thread-safe: one thread drives it (dsa.engine.async_engine
does so for the server).
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import torch

from dsa.engine.block_manager import BlockManager
from dsa.engine.cuda_graphs import DecodeGraphs, capture_shapes
from dsa.engine.cuda_graphs import unavailable as cuda_graphs_unavailable
from dsa.engine.request import Request, RequestOutput, Status, check_prompt_fits
from dsa.engine.runner import ModelRunner
from dsa.engine.sampling import SamplingParams
from dsa.engine.scheduler import Scheduler, SchedulerConfig
from dsa.errors import InputError
from dsa.model.cache import PagedCache

log = logging.getLogger("dsa.engine")


class EngineCore:
    def __init__(
        self,
        model,
        config,  # dsa.model.config.ModelConfig
        *,
        page_size: int,
        num_blocks: int,
        max_seq_len: int,
        kv_cache_dtype: str = "bf16",
        dtype: torch.dtype = torch.bfloat16,
        indexer_fp8: bool = True,
        eos_token_ids: Sequence[int] = (1,),
        device: Optional[torch.device] = None,
        scheduler: SchedulerConfig = SchedulerConfig(),
        enable_prefix_caching: bool = True,
        cuda_graphs: bool = True,
    ):
        self.config, self.page_size, self.max_seq_len = config, page_size, max_seq_len
        self.eos_token_ids = tuple(eos_token_ids)
        if device is None:
            first = next(iter(getattr(model, "parameters", lambda: iter(()))()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = device
        per_seq = -(-max_seq_len // page_size)
        if num_blocks < per_seq:
            raise InputError(f"the KV cache has {num_blocks} blocks of {page_size} tokens ({num_blocks * page_size} "
                             f"tokens) but one sequence of the context ({max_seq_len}) needs {per_seq}; give the cache "
                             "more memory (--kv-cache-memory / --num-blocks) or lower --max-seq-len")
        # decode under CUDA graphs (dsa.engine.cuda_graphs) where it can be captured; their padding rows write to
        # one scratch block past the ones the block manager hands out
        self.eager_reason = cuda_graphs_unavailable(model, device) if cuda_graphs else "enforce_eager is set"
        scratch = 1 if self.eager_reason is None else 0
        self.cache = PagedCache(config, num_blocks=num_blocks + scratch, page_size=page_size,
                                kv_cache_dtype=kv_cache_dtype, dtype=dtype, indexer_fp8=indexer_fp8, device=device)
        self.blocks = BlockManager(num_blocks, page_size, enable_prefix_caching)
        self.scheduler = Scheduler(scheduler, self.blocks)
        graphs = self._capture(model, scheduler.max_num_seqs, per_seq, num_blocks) if scratch else None
        if graphs is None and cuda_graphs and device.type == "cuda":
            log.warning("decode runs eagerly: %s", self.eager_reason)
        self.runner = ModelRunner(model, self.cache, device, graphs)
        self.requests: dict[str, Request] = {}
        self.num_steps = 0
        self.num_prompt_tokens_computed = 0  # prompt (prefill) tokens run through the model
        self.num_generated_tokens = 0

    def _capture(self, model, max_num_seqs: int, max_blocks: int, scratch_block: int) -> Optional[DecodeGraphs]:
        key_bytes = self.cache.index_k[0].element_size() * self.config.index_head_dim + 4  # key + its scale
        shapes = capture_shapes(max_num_seqs, max_blocks, self.page_size, key_bytes)
        if not shapes:
            self.eager_reason = (f"one sequence's gathered index keys ({max_blocks * self.page_size} tokens) exceed "
                                 "the capture workspace budget")
            return None
        graphs = DecodeGraphs(model, self.cache, shapes=shapes, scratch_block=scratch_block, device=self.device)
        try:
            graphs.capture()
        except Exception as e:  # a provider that syncs after all, out of memory, a driver without graphs
            cause = e.__cause__ or e.__context__  # a sync inside the capture surfaces as "capture invalidated"
            extra = f" (while handling {type(cause).__name__}: {cause})" if cause is not None else ""
            self.eager_reason = f"capturing the decode step failed: {type(e).__name__}: {e}{extra}"
            return None
        log.info("decode: CUDA graphs captured for batch sizes %s", "; ".join(
            f"{', '.join(map(str, sizes))} at {w * self.page_size} tokens" for w, sizes in shapes.items()))
        return graphs

    @property
    def model(self):
        return self.runner.model

    # ---- requests -----------------------------------------------------------------------------------
    def check_prompt(self, prompt_tokens: int) -> None:
        check_prompt_fits(prompt_tokens, self.max_seq_len, self.config.max_position_embeddings)

    def check_request(self, prompt_ids: Sequence[int]) -> list[int]:
        """InputError for an empty, out-of-vocabulary or too long prompt; reads nothing but the config, so
        any thread may call it (the server checks a request before queueing it)."""
        ids = list(prompt_ids)
        if not ids:
            raise InputError("the prompt is empty; give at least one token")
        vocab = self.config.vocab_size
        bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InputError(f"prompt token ids must be integers in [0, {vocab}), got {bad!r}")
        self.check_prompt(len(ids))
        return ids

    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                    arrival_time: Optional[float] = None) -> Request:
        """Queue a request; InputError (nothing queued) for a bad prompt (check_request) or an id in use."""
        if request_id in self.requests:
            raise InputError(f"request id {request_id!r} is already in use")
        ids = self.check_request(prompt_ids)
        req = Request(request_id, ids, params, **({} if arrival_time is None else {"arrival_time": arrival_time}))
        self.requests[request_id] = req
        self.scheduler.add(req)
        return req

    def abort_request(self, request_id: str, reason: str = "abort") -> bool:
        """End a request now and free its blocks (False: no such unfinished request)."""
        req = self.requests.pop(request_id, None)
        if req is None or req.finished:
            return False
        self.scheduler.finish(req, reason)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- one step -----------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, apply the stop rules; the outputs of the requests that
        got a token or finished. With nothing to do: no forward pass, []."""
        plan = self.scheduler.schedule()
        if not plan:
            return []
        sampled, tokens, logprobs = self.runner.run(plan)
        self.scheduler.finish_step(plan)
        self.num_steps += 1
        self.num_prompt_tokens_computed += sum(n for r, n in zip(plan.requests, plan.num_new)
                                               if r.num_computed - n < len(r.prompt_ids))
        now = time.monotonic()
        outputs = []
        for req, token, lp in zip(sampled, tokens, logprobs):
            new = self._accept(req, token, lp)
            if req.first_token_time is None:
                req.first_token_time = now
            if req.finished:
                self.requests.pop(req.request_id, None)
            outputs.append(RequestOutput.of(req, new, ([lp] if new else []) if lp is not None else None))
        return outputs

    def _accept(self, req: Request, token: int, lp) -> list[int]:
        """Apply the stop rules to a sampled token; returns the tokens that join the output ([] or [token])."""
        p = req.params
        if token in self.eos_token_ids and not p.ignore_eos:
            self.scheduler.finish(req, "eos")
            return []
        if token in p.stop_token_ids:
            self.scheduler.finish(req, "stop_token")
            return []
        req.output_ids.append(token)
        if lp is not None:
            req.output_logprobs.append(lp)
        self.num_generated_tokens += 1
        if len(req.output_ids) >= p.max_new_tokens:
            self.scheduler.finish(req, "length")
        elif req.num_tokens >= self.max_seq_len:  # the sequence fills the context
            self.scheduler.finish(req, "context")
        return [token]

    # ---- state, for metrics -------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def kv_usage(self) -> float:
        return self.blocks.usage

    def status_of(self, request_id: str) -> Optional[Status]:
        req = self.requests.get(request_id)
        return None if req is None else req.status


__all__ = ["EngineCore"]
