"""Scheduler: token budget, max_num_seqs, chunked prefill, preemption by recompute, prefix hits, finishing.

No model: `_run` plays the runner's part (every request whose pending tokens were all computed gets one
more token), so these tests look only at what is scheduled and what the blocks do.
"""
from __future__ import annotations

from dsa.engine.block_manager import BlockManager
from dsa.engine.request import Request, Status
from dsa.engine.sampling import SamplingParams
from dsa.engine.scheduler import Scheduler, SchedulerConfig

PAGE = 4
PARAMS = SamplingParams(temperature=0, max_new_tokens=1000)


def _sched(num_blocks=64, max_seqs=8, budget=32, chunked=True, prefix=True) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                                     enable_chunked_prefill=chunked), BlockManager(num_blocks, PAGE, prefix))


def _req(rid: str, n: int, start: int = 2) -> Request:
    return Request(rid, list(range(start, start + n)), PARAMS)


def _run(s: Scheduler):
    """One step: schedule, 'compute', give each finished-prefill request a token; returns the plan."""
    plan = s.schedule()
    s.finish_step(plan)
    for req in plan.requests:
        if req.num_computed == req.num_tokens and req.status is Status.RUNNING:
            req.output_ids.append(7)
    return plan


def _check_blocks(s: Scheduler) -> None:
    """Every running request holds exactly the blocks its computed + scheduled tokens need; refcounts add up."""
    held = {}
    for req in s.running:
        for b in req.blocks:
            held[b] = held.get(b, 0) + 1
    assert all(s.blocks.ref[b] == n for b, n in held.items())
    assert s.blocks.num_used == len(held)


def test_decodes_first_then_a_chunk_of_the_long_prompt():
    s = _sched(budget=16)
    for i in range(3):
        s.add(_req(f"short{i}", 4, start=10 * i + 2))
    _run(s)  # the three prompts (12 tokens) in one step
    s.add(_req("long", 100, start=200))
    plan = _run(s)
    assert [r.request_id for r in plan.requests] == ["short0", "short1", "short2", "long"]
    assert plan.num_new == [1, 1, 1, 13] and plan.num_tokens == 16  # the prompt gets what the decodes leave
    for _ in range(7):
        plan = _run(s)
        assert plan.num_new[:3] == [1, 1, 1]  # decodes never wait for the long prompt
        assert plan.num_tokens <= 16
    long = s.running[3]
    assert long.num_computed == 100  # 13 tokens a step (the budget less 3 decodes): all 100 after 8 steps
    _check_blocks(s)


def test_chunked_prefill_completes_then_decodes():
    s = _sched(budget=8)
    s.add(_req("a", 20))
    steps = [_run(s).num_new for _ in range(4)]
    assert steps == [[8], [8], [4], [1]]  # 20 prompt tokens in chunks of 8, then decode
    assert s.running[0].output_ids == [7, 7]


def test_without_chunked_prefill_a_prompt_runs_whole_or_waits():
    s = _sched(budget=8, chunked=False)
    s.add(_req("big", 20))
    s.add(_req("small", 4))
    plan = _run(s)
    assert [r.request_id for r in plan.requests] == []  # the oldest does not fit and nobody jumps it
    s2 = _sched(budget=32, chunked=False)
    s2.add(_req("big", 20))
    assert _run(s2).num_new == [20]


def test_max_num_seqs():
    s = _sched(max_seqs=2, budget=100)
    for i in range(4):
        s.add(_req(f"r{i}", 3, start=5 * i + 2))
    plan = _run(s)
    assert len(plan.requests) == 2 and len(s.waiting) == 2


def test_budget_limits_admission():
    s = _sched(budget=10)
    for i in range(4):
        s.add(_req(f"r{i}", 4, start=5 * i + 2))
    plan = _run(s)
    assert plan.num_new == [4, 4, 2]  # the third prompt starts as a chunk


def test_preemption_by_recompute_never_loses_a_request():
    s = _sched(num_blocks=6, budget=64)  # 24 token slots
    for i in range(3):
        s.add(_req(f"r{i}", 7, start=10 * i + 2))  # 2 blocks each: all admitted
    _run(s)
    assert len(s.running) == 3
    preempted = []
    for _ in range(12):
        plan = _run(s)
        preempted += [r.request_id for r in plan.preempted]
        _check_blocks(s)
        assert len(s.running) + len(s.waiting) == 3  # nobody lost
    assert preempted and preempted[0] == "r2"  # the most recently admitted goes first
    victim = next(r for r in list(s.running) + list(s.waiting) if r.request_id == "r2")
    assert victim.num_preemptions >= 1


def test_preempted_request_is_recomputed_with_its_output():
    s = _sched(num_blocks=4, budget=64, prefix=False)
    s.add(_req("a", 7))
    s.add(_req("b", 7, start=50))
    _run(s)
    _run(s)  # 9 tokens each now (2 sampled), 8 computed: the next token of each needs a third block
    plan = _run(s)  # none free: a (scheduled first) preempts b, the most recent
    assert [r.request_id for r in plan.preempted] == ["b"] and plan.requests == [s.running[0]]
    b = next(r for r in s.waiting if r.request_id == "b")
    assert b.num_computed == 0 and b.blocks == [] and b.output_ids == [7, 7]
    s.finish(s.running[0], "length")  # a ends: b comes back and recomputes prompt + output
    plan = _run(s)
    assert plan.requests == [b] and plan.num_new == [9]


def test_prefix_hit_skips_cached_blocks():
    s = _sched(budget=64)
    s.add(_req("a", 10))
    _run(s)
    s.finish(s.running[0], "length")
    s.add(_req("b", 12))  # same first 10 tokens: 2 full blocks cached
    plan = _run(s)
    assert plan.num_new == [4] and plan.requests[0].num_cached_tokens == 8
    assert s.blocks.hits == 8 and s.blocks.queries == 22


def test_two_live_requests_share_blocks():
    s = _sched(budget=64)
    s.add(_req("a", 9))
    _run(s)
    s.add(_req("b", 9))
    _run(s)
    a, b = s.running
    assert a.blocks[:2] == b.blocks[:2] and s.blocks.ref[a.blocks[0]] == 2
    s.finish(a, "length")
    assert s.blocks.ref[b.blocks[0]] == 1
    s.finish(b, "length")
    assert s.blocks.usage == 0


def test_finish_frees_waiting_and_running():
    s = _sched(max_seqs=1)
    s.add(_req("a", 5))
    s.add(_req("b", 5, start=40))
    _run(s)
    a, b = s.running[0], s.waiting[0]
    s.finish(b, "abort")
    s.finish(a, "abort")
    assert not s.has_unfinished() and s.blocks.usage == 0
    assert a.status is Status.FINISHED and a.finish_reason == "abort"
