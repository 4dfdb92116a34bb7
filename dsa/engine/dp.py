"""DP-attention across requests: each DP group schedules its own requests; every rank of the job runs one
forward per engine iteration while any group is busy, so the MoE collectives that span the groups stay in
lockstep.

    router = DPRouter(core, groups, plane)         # rank 0 (dsa.engine.serving.build_core makes it)
    AsyncEngine(router).start() ... shutdown()     # or serve_batch(router, prompts, params)
    router.close()                                 # the stop message: every follower returns
    run_follower(core, groups, plane)              # every other rank, until the stop message

Who holds what. Rank 0 is tp_rank 0 of DP group 0: it holds group 0's EngineCore, receives every request
and picks its group by load (fewest unfinished requests, then fewest tokens in their sequences, then the
lowest group). Every rank holds the EngineCore of its DP group (`groups.dp_rank`); the TP ranks of a
group add the same requests in the same order to identical cores, so their schedulers make the same plans
and their forwards meet in the TP collectives. For their sampling to agree, rank 0 gives every request
without a seed a random one before it leaves rank 0. Each core's model is a LockstepModel: it counts the
forwards and runs the dummy one.

One engine iteration (`DPRouter.step()` on rank 0, one loop turn of `run_follower` elsewhere) is two object
collectives over the control plane (dsa.dist.control: a gloo group of its own, whatever the data backend):

1. broadcast, rank 0 -> every rank, a `Control`:
   ops    {dp group: [("add", request_id, prompt_ids, params, arrival_time) | ("abort", request_id, reason)]},
          the adds and aborts since the last iteration, in call order (arrival_time: rank 0's clock);
   busy   per DP group, whether it has unfinished requests once its ops are applied (rank 0 tracks each
          group's unfinished set: a request leaves it with its finished output or its abort);
   stop   the job ends: the followers return at once (no ops applied, no forward, no report).
2. every rank applies its group's ops to its core in order; then, when any group is busy, exactly one
   forward: `core.step()` when its own group is busy and the scheduler planned tokens, else a one-token
   dummy forward on a scratch cache. When no group is busy, no rank runs a forward.
3. gather, every rank -> rank 0, a `Report`: the group leader (tp_rank 0) sends its RequestOutputs, every
   rank a digest of its outputs (rank 0 checks that the TP ranks of a group sampled alike), its core's
   counters (running, waiting, cache usage, prefix-cache queries and hits, preemptions, forwards) and any
   op that failed. A disagreement or a failure ends the router with a RuntimeError: the groups can no
   longer be trusted to be in step.

Rank 0 returns every group's outputs, in group order. `DPRouter` has EngineCore's interface
(dsa.engine.async_engine drives it); aborts and adds are queued and take effect at the next iteration.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from dsa.dist.control import ControlPlane
from dsa.dist.lockstep import DummyForward
from dsa.engine.request import Request, RequestOutput, Status
from dsa.engine.sampling import SamplingParams
from dsa.errors import DsaError, InputError
from dsa.model.fields import MAX_SEED


class LockstepModel:
    """The model as a DP group's EngineCore calls it: counts the core's forwards, and `idle()` runs the
    one-token dummy forward of an iteration in which this rank has nothing to compute, on a one-block
    scratch cache (as dsa.dist.lockstep.Lockstep does, without its per-forward vote: the control message
    already says whether an iteration has a forward)."""

    def __init__(self, model: torch.nn.Module, page_size: int):
        self.model, self.page_size = model, page_size
        self.forwards = 0  # the core's forwards
        self.idle_forwards = 0  # the dummy ones
        self._dummy = DummyForward(model, page_size)

    def __call__(self, *args, **kwargs):
        self.forwards += 1
        return self.model(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self.model.parameters(recurse)

    def __getattr__(self, name: str):  # config, dtype, ... of the wrapped model
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def idle(self) -> None:
        self._dummy()
        self.idle_forwards += 1


@dataclass(frozen=True)
class Control:
    """Rank 0's message of one iteration (see the module docstring)."""

    ops: dict  # dp group -> [("add", rid, prompt_ids, params, arrival_time) | ("abort", rid, reason)]
    busy: tuple[bool, ...]  # per dp group
    stop: bool = False

    @property
    def forward(self) -> bool:
        return not self.stop and any(self.busy)


@dataclass(frozen=True)
class Report:
    """One rank's answer to an iteration; its counters are totals since the core was built."""

    rank: int
    group: int
    outputs: Optional[list]  # list[RequestOutput] from the group leader; None from the other TP ranks
    digest: str  # of (request_id, new tokens, finished) of every output
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0
    num_preemptions: int = 0
    num_steps: int = 0  # the core's forwards
    idle_forwards: int = 0
    num_prompt_tokens_computed: int = 0
    num_generated_tokens: int = 0
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrefixStats:
    queries: int = 0  # prompt tokens looked up in the prefix caches of all groups
    hits: int = 0


@dataclass(frozen=True)
class SchedulerStats:
    num_preemptions: int = 0


class _Member:
    """What every rank does with a Control message: its group's ops, then its one forward (or none)."""

    def __init__(self, core, groups):
        if not isinstance(core.model, LockstepModel):
            raise DsaError("a DP group's EngineCore must run its model through a LockstepModel "
                           "(dsa.engine.serving.build_core / run_follower build it so)")
        self.core, self.model = core, core.model
        self.rank, self.group, self.leader = groups.rank, groups.dp_rank, groups.tp_rank == 0

    def iterate(self, msg: Control) -> Report:
        core, errors = self.core, []
        for op in msg.ops.get(self.group, ()):
            try:
                if op[0] == "add":
                    _, rid, ids, params, arrival = op
                    core.add_request(rid, ids, params, arrival_time=arrival)
                elif not core.abort_request(op[1], op[2]):
                    errors.append(f"abort of {op[1]!r}: no such unfinished request here")
            except DsaError as err:
                errors.append(f"{op[0]} of {op[1]!r}: {err}")
        if core.has_unfinished() != msg.busy[self.group]:
            errors.append(f"rank 0 thinks DP group {self.group} is {'busy' if msg.busy[self.group] else 'idle'}, "
                          "but its core is not")
        outputs: list[RequestOutput] = []
        if msg.forward:  # exactly one forward on every rank
            before = self.model.forwards
            if core.has_unfinished():
                outputs = core.step()
            if self.model.forwards == before:  # idle group, or nothing the scheduler could plan
                self.model.idle()
        return Report(self.rank, self.group, outputs if self.leader else None, _digest(outputs),
                      core.num_running, core.num_waiting, core.kv_usage, core.blocks.queries, core.blocks.hits,
                      core.scheduler.num_preemptions, core.num_steps, self.model.idle_forwards,
                      core.num_prompt_tokens_computed, core.num_generated_tokens, tuple(errors))


def _digest(outputs: Sequence[RequestOutput]) -> str:
    text = repr([(o.request_id, o.new_token_ids, o.finished) for o in outputs])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _handshake(plane: ControlPlane, core, groups) -> None:
    """Every rank's core must match its group leader's (cache, scheduler, stop ids), or the TP ranks of a
    group would plan differently: checked once, before the first iteration; DsaError on every rank."""
    b = core.blocks
    shape = ((groups.tp, groups.dp_attention, groups.ep), groups.dp_rank, b.num_blocks, b.page_size,
             b.enable_prefix_caching, core.max_seq_len, core.scheduler.config, core.eos_token_ids)
    shapes = plane.gather(shape)
    problem = None
    if shapes is not None:  # rank 0
        for rank, s in enumerate(shapes):
            leader = shapes[rank // groups.tp * groups.tp]
            if s[0] != shapes[0][0] or s[1] != rank // groups.tp:
                problem = f"rank {rank} has the layout (tp, dp, ep) {s[0]} but rank 0 has {shapes[0][0]}"
            elif s != leader:
                problem = (f"rank {rank}'s engine (blocks, page size, prefix caching, context, scheduler, eos) "
                           f"{s[2:]} differs from its DP group leader's {leader[2:]}; start every rank with the "
                           "same options")
            if problem:
                break
    problem = plane.broadcast(problem)
    if problem:
        raise DsaError(problem)


class DPRouter:
    """Rank 0's engine for the whole job: EngineCore's interface over every DP group (module docstring)."""

    def __init__(self, core, groups, plane: ControlPlane):
        if groups.rank != 0:
            raise DsaError(f"the DP router runs on rank 0, not on rank {groups.rank} (run_follower is for the others)")
        self.core, self.groups, self.plane = core, groups, plane
        self._member = _Member(core, groups)
        _handshake(plane, core, groups)
        self.num_groups = groups.dp_attention
        self.requests: dict[str, Request] = {}  # the unfinished requests, as rank 0 knows them
        self._group_of: dict[str, int] = {}
        self._unfinished: list[set[str]] = [set() for _ in range(self.num_groups)]
        self._ops: dict[int, list[tuple]] = {}
        self._reports: list[Report] = [Report(0, g, [], "") for g in range(self.num_groups)]  # leaders', latest
        self._seeds = random.SystemRandom()
        self._lock = threading.Lock()  # close() waits for a step in flight
        self._closed = False
        self.num_steps = 0  # iterations that ran a forward
        self.num_iterations = 0

    # ---- EngineCore's interface ---------------------------------------------------------------------
    @property
    def config(self):
        return self.core.config

    @property
    def max_seq_len(self) -> int:
        return self.core.max_seq_len

    def check_prompt(self, prompt_tokens: int) -> None:
        self.core.check_prompt(prompt_tokens)

    def check_request(self, prompt_ids: Sequence[int]) -> list[int]:
        return self.core.check_request(prompt_ids)  # the config only: any thread

    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                    arrival_time: Optional[float] = None) -> Request:
        """Assign the request to the least loaded DP group and queue it for the next iteration; InputError
        (nothing queued) for a bad prompt or an id in use. A request without a seed gets one here."""
        if not isinstance(params, SamplingParams):
            raise InputError(f"params must be a SamplingParams, got {type(params).__name__}")
        with self._lock:
            self._check_open()
            if request_id in self.requests:
                raise InputError(f"request id {request_id!r} is already in use")
            ids = self.core.check_request(prompt_ids)
            if params.seed is None:
                params = dataclasses.replace(params, seed=self._seeds.randrange(MAX_SEED))
            group = min(range(self.num_groups), key=self._load)
            req = Request(request_id, ids, params, **({} if arrival_time is None else {"arrival_time": arrival_time}))
            self.requests[request_id] = req
            self._group_of[request_id] = group
            self._unfinished[group].add(request_id)
            self._ops.setdefault(group, []).append(("add", request_id, ids, params, req.arrival_time))
            return req

    def abort_request(self, request_id: str, reason: str = "abort") -> bool:
        """End a request (False: no such unfinished request); its group frees it at the next iteration (at
        once when it had not left rank 0 yet)."""
        with self._lock:
            if self._closed or request_id not in self._group_of:
                return False
            group = self._group_of.pop(request_id)
            self._unfinished[group].discard(request_id)
            req = self.requests.pop(request_id)
            req.status, req.stop_reason = Status.FINISHED, reason
            ops = self._ops.get(group, [])
            queued = [op for op in ops if op[0] == "add" and op[1] == request_id]
            if queued:
                ops.remove(queued[0])
            else:
                ops.append(("abort", request_id, reason))
                self._ops[group] = ops
            return True

    def has_unfinished(self) -> bool:
        return any(self._unfinished) or any(self._ops.values())

    def step(self) -> list[RequestOutput]:
        """One iteration of the protocol over every rank; the outputs of every group, in group order."""
        with self._lock:
            self._check_open()
            msg = Control(self._ops, tuple(bool(u) for u in self._unfinished))
            self._ops = {}
            self.plane.broadcast(msg)
            reports = self.plane.gather(self._member.iterate(msg))
            self.num_iterations += 1
            self.num_steps += msg.forward
            return self._merge(reports)

    def close(self) -> None:
        """Send the stop message: every follower's run_follower returns. Call it once the engine is done
        (after AsyncEngine.shutdown() returned, or after the last serve_batch); it waits for a step in
        flight, and may be called more than once. Queued adds and aborts are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.plane.broadcast(Control({}, (False,) * self.num_groups, stop=True))

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- state, for metrics -------------------------------------------------------------------------
    def group_of(self, request_id: str) -> Optional[int]:
        """The DP group serving an unfinished request (None: no such request)."""
        return self._group_of.get(request_id)

    def status_of(self, request_id: str) -> Optional[Status]:
        req = self.requests.get(request_id)
        return None if req is None else req.status

    @property
    def group_stats(self) -> list[Report]:
        """Each DP group leader's latest Report (counters as of the last iteration; outputs dropped)."""
        return list(self._reports)

    @property
    def num_running(self) -> int:
        return sum(r.num_running for r in self._reports)

    @property
    def num_waiting(self) -> int:  # requests not yet sent to their group count as waiting
        return sum(r.num_waiting for r in self._reports) + sum(op[0] == "add" for ops in self._ops.values()
                                                                for op in ops)

    @property
    def kv_usage(self) -> float:  # every group's cache has the same number of blocks
        return sum(r.kv_usage for r in self._reports) / self.num_groups

    @property
    def blocks(self) -> PrefixStats:
        return PrefixStats(sum(r.prefix_queries for r in self._reports), sum(r.prefix_hits for r in self._reports))

    @property
    def scheduler(self) -> SchedulerStats:
        return SchedulerStats(sum(r.num_preemptions for r in self._reports))

    @property
    def num_prompt_tokens_computed(self) -> int:
        return sum(r.num_prompt_tokens_computed for r in self._reports)

    @property
    def num_generated_tokens(self) -> int:
        return sum(r.num_generated_tokens for r in self._reports)

    # ---- internals ----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DsaError("the DP router is closed (its followers have stopped); no request can be served")

    def _load(self, group: int) -> tuple[int, int, int]:
        unfinished = self._unfinished[group]
        return len(unfinished), sum(self.requests[rid].num_tokens for rid in unfinished), group

    def _merge(self, reports: list[Report]) -> list[RequestOutput]:
        problems = [f"rank {r.rank}: {e}" for r in reports for e in r.errors]
        leaders = {r.group: r for r in reports if r.outputs is not None}
        for r in reports:
            if r.digest != leaders[r.group].digest:
                problems.append(f"rank {r.rank} computed other tokens than the leader of DP group {r.group}")
        self._reports = [dataclasses.replace(leaders[g], outputs=None) for g in range(self.num_groups)]
        outputs = [o for g in range(self.num_groups) for o in leaders[g].outputs]
        for out in outputs:
            req = self.requests.get(out.request_id)
            if req is None:
                continue
            req.output_ids += out.new_token_ids
            req.output_logprobs += out.new_logprobs or []
            req.num_cached_tokens = out.num_cached_tokens
            if out.finished:
                req.status, req.stop_reason = Status.FINISHED, out.stop_reason
                self.requests.pop(out.request_id)
                self._unfinished[self._group_of.pop(out.request_id)].discard(out.request_id)
            else:
                req.status = Status.RUNNING
        if problems:
            raise RuntimeError("the DP groups are out of step: " + "; ".join(problems))
        return outputs


@dataclass(frozen=True)
class FollowerResult:
    iterations: int  # control messages handled before the stop message
    forwards: int  # the core's forwards
    idle_forwards: int  # dummy forwards


def run_follower(core, groups, plane: ControlPlane) -> FollowerResult:
    """Every rank but 0: apply rank 0's control messages to this rank's core, one forward per busy
    iteration, reports back, until the stop message."""
    member = _Member(core, groups)
    _handshake(plane, core, groups)
    iterations = 0
    while True:
        msg = plane.broadcast()
        if msg.stop:
            return FollowerResult(iterations, member.model.forwards, member.model.idle_forwards)
        plane.gather(member.iterate(msg))
        iterations += 1


def serve_batch(core, prompts: Sequence[Sequence[int]],
                params: Union[SamplingParams, Sequence[SamplingParams]]) -> list[list[int]]:
    """Serve prompts to the end through `core` (a DPRouter on rank 0 of a launched job, or an EngineCore)
    and return each one's generated tokens, in order. The requests are added all at once; the followers
    keep running afterwards (close the router when done)."""
    prompts = list(prompts)
    many = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(many) != len(prompts):
        raise InputError(f"give one SamplingParams, or one per prompt ({len(prompts)}), not {len(many)}")
    base = f"batch-{next(_batches)}"
    rids = [f"{base}-{i}" for i in range(len(prompts))]
    for ids in prompts:
        core.check_request(ids)  # every prompt before any is queued
    tokens: dict[str, list[int]] = {rid: [] for rid in rids}
    left = set(rids)
    try:
        for rid, ids, p in zip(rids, prompts, many):
            core.add_request(rid, ids, p)
        while left:
            for out in core.step():
                if out.request_id in tokens:
                    tokens[out.request_id] += out.new_token_ids
                    if out.finished:
                        left.discard(out.request_id)
    finally:
        for rid in left:
            core.abort_request(rid)
    return [tokens[rid] for rid in rids]


_batches = itertools.count()

__all__ = ["DPRouter", "run_follower", "serve_batch", "LockstepModel", "Control", "Report", "FollowerResult",
           "PrefixStats", "SchedulerStats"]
