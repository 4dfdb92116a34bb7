"""DP-attention across requests (dsa.engine.dp through dsa.engine.serving): gloo ranks on 127.0.0.1 serve
requests routed by rank 0 and give what one process serving the same requests gives (fp32 model, greedy:
exact tokens).

One spawn of 2 ranks runs, in turn: `--dp 2 --ep 2` (a batch spread over both groups, a single request
with the other group idle, rank 0's own group idle while group 1 works, aborts, bad requests, an
AsyncEngine over the router, the stop message), then `--tp 2` (one group of two TP ranks: unseeded sampled
requests must agree across them, which rank 0's seeds ensure). Behind DSA_TEST_4_RANKS=1: `--tp 2 --dp 2
--ep 4` (EP spans the groups, TP duplicates inside each).
"""
from __future__ import annotations

import asyncio
import os
import pickle
import time
from pathlib import Path

import pytest
import rank_exit
import torch
import torch.multiprocessing as mp

from dsa.engine.args import EngineArgs
from dsa.engine.dp import serve_batch
from dsa.engine.sampling import SamplingParams
from dsa.errors import DsaError, InputError
from dsa.io.checkpoint_writer import write_checkpoint

PAGE, MAX_SEQ, NUM_BLOCKS, BATCH_TOKENS = 16, 64, 48, 48
_g = torch.Generator().manual_seed(11)
_LENS = (5, 17, 40, 9, 23, 3, 31, 12, 28, 7)
PROMPTS = [torch.randint(2, 260, (n,), generator=_g).tolist() for n in _LENS]
PROMPTS[6] = PROMPTS[2][:32] + PROMPTS[6][:3]  # a shared prefix: the prefix cache hits within a group
NEW = (8, 3, 12, 6, 10, 2, 5, 9, 4, 11)
LONG = 20  # the abort scenario's requests run this long unless aborted


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=n, **kw)


BATCH = (PROMPTS, [greedy(n) for n in NEW])
SINGLE = ([PROMPTS[4]], [greedy(NEW[4])])
SHORT_LONG = ([PROMPTS[5], PROMPTS[3]], [greedy(2, ignore_eos=True), greedy(14, ignore_eos=True)])
ABORTED = ([PROMPTS[i] for i in (0, 1, 7, 9)], [greedy(LONG, ignore_eos=True)] * 4)
SCENARIOS = {"batch": BATCH, "single": SINGLE, "short_long": SHORT_LONG, "aborted": ABORTED}


def _setup(ckpt: Path, tp: int, dp: int, ep: int):
    return EngineArgs(model=str(ckpt), device="cpu", dtype="fp32", max_seq_len=MAX_SEQ, page_size=PAGE,
                      num_blocks=NUM_BLOCKS, max_num_batched_tokens=BATCH_TOKENS, tp=tp, dp_attention=dp,
                      ep=ep).resolve()


# ---- rank 0's scenarios -----------------------------------------------------------------------------

def _deltas(router, run) -> dict:
    """Run `run()`; how many forwards the router and each group's leader ran meanwhile."""
    before, steps = router.group_stats, router.num_steps
    value = run()
    after = router.group_stats
    return {"value": value, "router_steps": router.num_steps - steps,
            "core_steps": [a.num_steps - b.num_steps for a, b in zip(after, before)],
            "idle": [a.idle_forwards - b.idle_forwards for a, b in zip(after, before)]}


class _Collect:
    """Steps the router, keeping every output's tokens and stop reason."""

    def __init__(self, router):
        self.router, self.tokens, self.reasons = router, {}, {}

    def step(self) -> None:
        for out in self.router.step():
            self.tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                self.reasons[out.request_id] = out.stop_reason

    def drain(self) -> dict:
        while self.router.has_unfinished():
            self.step()
        return {"tokens": self.tokens, "reasons": self.reasons}


def _aborts(router) -> dict:
    prompts, params = ABORTED
    rids = [f"ab{i}" for i in range(len(prompts))]
    for rid, ids, p in zip(rids, prompts, params):
        router.add_request(rid, ids, p)
    groups = [router.group_of(rid) for rid in rids]
    steps = _Collect(router)
    for _ in range(3):
        steps.step()
    victim = next(rid for rid, g in zip(rids, groups) if g == 1)  # a request of rank 1's group
    vg = router.group_of(victim)
    running = [router.group_stats[vg].num_running]
    first = router.abort_request(victim)
    again, unknown = router.abort_request(victim), router.abort_request("no-such-request")
    router.add_request("never-sent", PROMPTS[0], greedy(2))  # aborted before it left rank 0
    early = router.abort_request("never-sent")
    steps.step()  # the abort reaches the victim's group
    running.append(router.group_stats[vg].num_running)
    return {**steps.drain(), "groups": groups, "victim": victim, "aborts": (first, again, unknown, early),
            "running": running}


def _bad_requests(router) -> list[str]:
    errors = []
    for call in (lambda: router.add_request("bad", [], greedy(2)),
                 lambda: router.add_request("bad", [10**9], greedy(2)),
                 lambda: router.add_request("bad", [3] * MAX_SEQ, greedy(2)),
                 lambda: router.add_request("bad", [3], {"temperature": 0})):
        try:
            call()
            errors.append("accepted")
        except InputError as err:
            errors.append(str(err))
    router.add_request("dup", [5, 6], greedy(2))
    try:
        router.add_request("dup", [5, 6], greedy(2))
        errors.append("accepted")
    except InputError as err:
        errors.append(str(err))
    router.abort_request("dup")
    return errors


def _async(router) -> dict:
    from dsa.engine.async_engine import AsyncEngine

    engine = AsyncEngine(router, max_waiting=64).start()

    async def one(i: int, params: SamplingParams):
        outs = [o async for o in engine.generate(PROMPTS[i], params, f"async-{i}")]
        return [t for o in outs for t in o.new_token_ids], outs[-1].stop_reason

    async def main():
        sampled = SamplingParams(temperature=0.9, max_new_tokens=5, ignore_eos=True)
        return await asyncio.gather(one(0, greedy(NEW[0])), *(one(i, sampled) for i in (1, 2, 3)))

    try:
        results = asyncio.run(main())
    finally:
        aborted = engine.shutdown(timeout=10)
    return {"results": results, "aborted": aborted, "stats": engine.stats}


def _lead(setup, model, tokenizer, groups, full: bool) -> dict:
    from dsa.engine.serving import build_core, close_core

    router = build_core(setup, model, tokenizer, groups)
    res = {"batch": _deltas(router, lambda: serve_batch(router, *BATCH)),
           "batch_stats": router.group_stats,
           "single": _deltas(router, lambda: serve_batch(router, *SINGLE))}
    if full:
        res["short_long"] = _deltas(router, lambda: serve_batch(router, *SHORT_LONG))
        res["aborted"] = _aborts(router)
        res["bad"] = _bad_requests(router)
        res["async"] = _async(router)
    if groups.tp > 1:  # unseeded sampling: the TP ranks agree only with rank 0's seeds (else the router raises)
        sampled = SamplingParams(temperature=1.0, max_new_tokens=6, ignore_eos=True)
        res["sampled"] = serve_batch(router, PROMPTS[:4], sampled)
    res["forwards"] = (router.num_steps, router.core.model.forwards + router.core.model.idle_forwards)
    close_core(router)
    close_core(router)  # a second close is a no-op
    try:
        router.step()
        res["after_close"] = "stepped"
    except DsaError as err:
        res["after_close"] = str(err)
    return res


def _worker(rank: int, world: int, port: int, ckpt: Path, out: Path, layouts: list) -> None:
    from dsa.dist import launch
    from dsa.engine.serving import run_follower
    from dsa.model.parallel_groups import ParallelGroups

    rank_exit.start()
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    results = {}
    groups = None
    try:
        for name, (tp, dp, ep, full) in layouts:
            setup = _setup(ckpt, tp, dp, ep)
            groups = launch.init(setup.plan) if groups is None else ParallelGroups.create(tp, dp, ep)
            model = setup.build_model(groups, progress=False)
            tokenizer = setup.tokenizer()
            if rank == 0:
                results[name] = _lead(setup, model, tokenizer, groups, full)
            else:
                results[name] = {"follower": run_follower(setup, model, tokenizer, groups), "group": groups.dp_rank,
                                 "tp_rank": groups.tp_rank}
        (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    except BaseException:
        launch.shutdown(groups)
        raise
    rank_exit.finish(lambda: launch.shutdown(groups))


def _run(world: int, layouts: list, ckpt: Path, out: Path, timeout: float) -> list[dict]:
    """Spawn the ranks; fail (and kill them) if they do not all end within `timeout` seconds."""
    from dsa.dist.launch import free_port

    ctx = mp.spawn(_worker, args=(world, free_port(), ckpt, out, layouts), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} ranks did not end within {timeout:.0f} s (a hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(world)]


# ---- the one-process reference and the checks ---------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint("tiny", tmp_path_factory.mktemp("dp-serving") / "ckpt", fp8=False, seed=3, num_shards=2)


@pytest.fixture(scope="module")
def reference(ckpt) -> dict:
    """One process (EngineCore) serving each scenario's requests: their tokens."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks
    try:
        setup = _setup(ckpt, 1, 1, 1)
        core = setup.make_engine(setup.build_model(progress=False), setup.tokenizer().eos_token_ids).core
        return {name: serve_batch(core, *reqs) for name, reqs in SCENARIOS.items()}
    finally:
        torch.set_num_threads(threads)


def _check_lead(res: dict, reference: dict, groups: int) -> None:
    for name in ("batch", "single", "short_long"):
        if name not in res:
            continue
        d = res[name]
        assert d["value"] == reference[name], f"{name}: tokens differ from one process"
        assert d["router_steps"] > 0
        for g in range(groups):  # lockstep: every group ran exactly one forward per busy iteration
            assert d["core_steps"][g] + d["idle"][g] == d["router_steps"], (name, g, d)
    assert sum(map(len, reference["batch"])) > len(PROMPTS)  # not all eos at once
    if groups > 1:
        spread = [s.num_generated_tokens for s in res["batch_stats"]]
        assert all(n > 0 for n in spread), f"the batch did not reach every group: {spread}"
        assert res["single"]["core_steps"][1] == 0 and res["single"]["idle"][1] == res["single"]["router_steps"]
    assert res["after_close"].startswith("the DP router is closed")


def _check_full(res: dict, reference: dict) -> None:
    sl = res["short_long"]  # the short one (group 0, rank 0's own) ends first: group 0 idles while 1 works
    assert sl["core_steps"] == [2, 14] and sl["idle"] == [12, 0] and sl["router_steps"] == 14
    ab = res["aborted"]
    assert ab["groups"] == [0, 1, 0, 1]
    assert ab["aborts"] == (True, False, False, True)
    assert ab["running"] == [2, 1]  # the victim left its group's scheduler at the next iteration
    victim = ab["victim"]
    assert ab["groups"][int(victim[2:])] == 1
    for i, rid in enumerate(f"ab{i}" for i in range(4)):
        ref = reference["aborted"][i]
        got = ab["tokens"][rid]
        if rid == victim:
            assert 0 < len(got) < LONG and got == ref[:len(got)] and ab["reasons"].get(rid) is None
        else:
            assert got == ref and ab["reasons"][rid] == "length"
    assert "never-sent" not in ab["tokens"]
    bad = res["bad"]
    assert "prompt is empty" in bad[0] and "[0, " in bad[1] and "prompt has 64 tokens" in bad[2]
    assert "must be a SamplingParams" in bad[3] and "already in use" in bad[4]
    asy = res["async"]
    assert asy["aborted"] == 0 and asy["stats"].num_running == 0 and asy["stats"].num_waiting == 0
    assert asy["results"][0] == (reference["batch"][0], "length" if len(reference["batch"][0]) == NEW[0] else "eos")
    assert all(len(toks) == 5 and reason == "length" for toks, reason in asy["results"][1:])


def _check_followers(results: list[dict], name: str, tp: int) -> None:
    steps, forwards = results[0][name]["forwards"]
    assert forwards == steps > 0
    for rank, res in enumerate(results[1:], start=1):
        f = res[name]["follower"]
        assert f.forwards + f.idle_forwards == steps, f"{name} rank {rank}: out of step ({f}, router {steps})"
        assert res[name]["group"] == rank // tp and f.iterations >= steps


def test_dp2_serves_like_one_process(ckpt, reference, tmp_path):
    layouts = [("dp2-ep2", (1, 2, 2, True)), ("tp2", (2, 1, 1, False))]
    results = _run(2, layouts, ckpt, tmp_path, timeout=120)
    _check_lead(results[0]["dp2-ep2"], reference, groups=2)
    _check_full(results[0]["dp2-ep2"], reference)
    _check_followers(results, "dp2-ep2", tp=1)
    _check_lead(results[0]["tp2"], reference, groups=1)
    assert all(len(t) == 6 for t in results[0]["tp2"]["sampled"])
    _check_followers(results, "tp2", tp=2)


@pytest.mark.skipif(os.environ.get("DSA_TEST_4_RANKS") != "1",
                    reason="4 processes: set DSA_TEST_4_RANKS=1 (~25 s on 2 cores)")
def test_tp2_dp2_ep4_serves_like_one_process(ckpt, reference, tmp_path):
    results = _run(4, [("tp2-dp2-ep4", (2, 2, 4, False))], ckpt, tmp_path, timeout=300)
    _check_lead(results[0]["tp2-dp2-ep4"], reference, groups=2)
    assert all(len(t) == 6 for t in results[0]["tp2-dp2-ep4"]["sampled"])
    _check_followers(results, "tp2-dp2-ep4", tp=2)


# ---- one process: the router's bookkeeping, the seams' errors ---------------------------------------

def test_router_of_one_rank_serves_like_the_core(ckpt, reference):
    """A world of one (a ControlPlane that talks to nobody): the router's routing, seeding, aborts and
    counters, without processes."""
    from dsa.dist.control import ControlPlane
    from dsa.engine.dp import DPRouter, LockstepModel
    from dsa.model.parallel_groups import ParallelGroups

    setup = _setup(ckpt, 1, 1, 1)
    model = setup.build_model(progress=False)
    core = setup.make_engine(LockstepModel(model, PAGE), setup.tokenizer().eos_token_ids).core
    router = DPRouter(core, ParallelGroups.single(), ControlPlane(None, 0, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert serve_batch(router, *SINGLE) == reference["single"]
        req = router.add_request("s", PROMPTS[0], SamplingParams(temperature=0.7, max_new_tokens=3, ignore_eos=True))
        assert req.params.seed is not None and router.group_of("s") == 0 and router.num_waiting == 1
        router.step()
        assert core.requests["s"].params.seed == req.params.seed  # the group got the seeded params
        assert router.abort_request("s") and router.has_unfinished() and router.num_running == 1
        assert router.step() == [] and not router.has_unfinished() and "s" not in core.requests
        assert router.blocks.queries >= len(PROMPTS[4]) and router.num_steps == NEW[4] + 1
        with pytest.raises(InputError, match="one per prompt"):
            serve_batch(router, PROMPTS[:2], [greedy(2)])
    finally:
        torch.set_num_threads(threads)
    router.close()
    assert router.abort_request("x") is False
    with pytest.raises(DsaError, match="router is closed"):
        router.add_request("t", PROMPTS[0], greedy(2))


def test_serving_seams_refuse_the_wrong_rank(ckpt):
    from dsa.engine.dp import DPRouter, LockstepModel
    from dsa.engine.serving import build_core, close_core, run_follower
    from dsa.model.parallel_groups import ParallelGroups

    setup = _setup(ckpt, 1, 1, 1)
    model = setup.build_model(progress=False)
    tokenizer = setup.tokenizer()
    with pytest.raises(InputError, match="run_follower is for the ranks other than 0"):
        run_follower(setup, model, tokenizer, None)
    rank1 = ParallelGroups(tp=1, dp_attention=2, ep=1, rank=1)  # no process group: refused before any collective
    with pytest.raises(InputError, match="build_core is for rank 0; rank 1 of 2 runs run_follower"):
        build_core(setup, model, tokenizer, rank1)
    with pytest.raises(InputError, match="rank 0 serves through build_core"):
        run_follower(setup, model, tokenizer, ParallelGroups(tp=1, dp_attention=2, ep=1, rank=0))
    core = build_core(setup, model, tokenizer, None)  # one process: the EngineCore itself
    assert type(core).__name__ == "EngineCore"
    close_core(core)  # nothing to close
    with pytest.raises(DsaError, match="through a LockstepModel"):
        DPRouter(core, ParallelGroups.single(), None)
    assert LockstepModel(model, PAGE).config is model.config
