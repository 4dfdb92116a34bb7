"""The scheduler: which requests run in the next step, and how many tokens of each.

Every step gets a token budget (`max_num_batched_tokens`) and at most `max_num_seqs` requests:

1. the running requests first, in arrival order: a decode row costs 1 token, a prompt still being
   prefilled gets what is left of the budget (chunked prefill: a long prompt is split over several steps
   and never holds up the decodes). A request whose next tokens need a block when none is free preempts
   the most recently admitted running request (its blocks are freed, it goes back to the front of the
   waiting queue and is recomputed later - vLLM's preemption by recompute), or itself when it is the last.
2. then waiting requests, oldest first, while budget, sequence slots and blocks last; a request takes the
   prefix cache's blocks for its prompt's leading full blocks and computes only the rest.

`schedule()` returns a StepPlan; after the model ran, `finish_step` records the computed tokens.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dsa.engine.block_manager import BlockManager
from dsa.engine.request import Request, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256  # requests in one step (vLLM's name)
    max_num_batched_tokens: int = 2048  # tokens computed in one step (vLLM's name)
    enable_chunked_prefill: bool = True  # False: a prompt is computed in one step or waits


@dataclass
class StepPlan:
    """The requests of one step and the tokens each computes (positions num_computed .. + n)."""

    requests: list[Request] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new)

    def __bool__(self) -> bool:
        return bool(self.requests)


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager):
        self.config, self.blocks = config, blocks
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        # per request: how many of its blocks are keyed in the prefix cache
        self._committed: dict[str, int] = {}

    def add(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step -----------------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.config.max_num_batched_tokens
        scheduled: set[int] = set()
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_pending, budget)
            if n < req.num_pending and not self.config.enable_chunked_prefill:
                i += 1
                continue
            if not self._grow(req, n):  # preempt from the back until it fits, or preempt req itself
                while not self._grow(req, n):
                    victim = self.running[-1]
                    self._preempt(victim)
                    plan.preempted.append(victim)
                    if victim is req:
                        break
                if req.status is not Status.RUNNING:
                    break  # req was the last running one: nothing behind it to schedule
            plan.requests.append(req)
            plan.num_new.append(n)
            scheduled.add(id(req))
            budget -= n
            i += 1
        while (self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs
               and not plan.preempted):  # right after a preemption the cache is short: admit nobody
            req = self.waiting[0]
            cached = self.blocks.match_prefix(req.token_ids)
            num_cached = len(cached) * self.blocks.page_size
            n = min(req.num_tokens - num_cached, budget)
            if n < req.num_tokens - num_cached and not self.config.enable_chunked_prefill:
                break
            need = self.blocks.blocks_for(num_cached + n) - len(cached)
            # evictable cached blocks we are about to take are not free for our own new blocks
            claimed = sum(1 for b in cached if self.blocks.ref[b] == 0)
            if need > self.blocks.num_free - claimed:
                break
            self.waiting.popleft()
            self.blocks.take(cached)
            req.blocks = list(cached) + self.blocks.allocate(need)
            req.num_computed = num_cached
            if req.num_preemptions == 0:
                req.num_cached_tokens = num_cached
                self.blocks.record_query(len(req.prompt_ids), num_cached)
            self._committed[req.request_id] = len(cached)
            req.status = Status.RUNNING
            self.running.append(req)
            plan.requests.append(req)
            plan.num_new.append(n)
            budget -= n
        return plan

    def finish_step(self, plan: StepPlan) -> None:
        """The plan's tokens are in the cache: advance num_computed and key the blocks that became full."""
        for req, n in zip(plan.requests, plan.num_new):
            req.num_computed += n
            rid = req.request_id
            self._committed[rid] = self.blocks.commit(req.token_ids, req.blocks, req.num_computed,
                                                      self._committed.get(rid, 0))

    def finish(self, req: Request, reason: str) -> None:
        """End a request (running or waiting) and give its blocks back."""
        if req.status is Status.RUNNING:
            self.running.remove(req)
        elif req.status is Status.WAITING:
            self.waiting.remove(req)
        self._release(req)
        req.status, req.stop_reason = Status.FINISHED, reason

    # ---- internals ----------------------------------------------------------------------------------
    def _grow(self, req: Request, n: int) -> bool:
        need = self.blocks.blocks_for(req.num_computed + n) - len(req.blocks)
        if need <= 0:
            return True
        if need > self.blocks.num_free:
            return False
        req.blocks += self.blocks.allocate(need)
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_computed = 0
        req.num_preemptions += 1
        req.status = Status.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    def _release(self, req: Request) -> None:
        if req.blocks:
            self.blocks.free(req.blocks)
        req.blocks = []
        self._committed.pop(req.request_id, None)


__all__ = ["Scheduler", "SchedulerConfig", "StepPlan"]
