"""What a serving process runs: the engine core for this rank's requests, started from an EngineSetup.

    core = build_core(setup, model, tokenizer, groups)   # rank 0 (or the only process): requests come here
    engine = AsyncEngine(core, max_waiting=...).start()  # driven by the server's engine thread
    ...
    engine.shutdown(timeout=30)                          # the engine thread is done with the core
    close_core(core)                                     # then: the other ranks' run_follower returns

    run_follower(setup, model, tokenizer, groups)        # every other rank of a --nproc / torchrun job

One process (groups None, or a world of one): the EngineCore itself. Several ranks (any tp x dp, dp 1
included): rank 0 gets a dsa.engine.dp.DPRouter with EngineCore's interface over every DP group (each
group runs its own scheduler; rank 0 routes requests by load; every rank runs one forward per iteration
while any group is busy) and every other rank runs `run_follower` until rank 0's `close_core`. Every
rank calls build_core / run_follower at the same point of its program (they make a gloo group for the
control messages, a collective call), after launch.init and build_model.

`model` is the graph as setup.build_model(groups) returns it; a dsa.dist.lockstep.Lockstep around it is
taken off (its per-forward vote would deadlock against the router's own step protocol).
"""
from __future__ import annotations

from dsa.errors import InputError


def _multi_rank(groups) -> bool:
    return groups is not None and groups.world_size > 1


def _group_core(setup, model, tokenizer):
    """This rank's EngineCore for its DP group, over a LockstepModel (forward counting, dummy forwards)."""
    from dsa.dist.lockstep import Lockstep
    from dsa.engine.dp import LockstepModel

    if isinstance(model, Lockstep):
        model = model.model
    return setup.make_engine(LockstepModel(model, setup.plan.page_size), tokenizer.eos_token_ids).core


def build_core(setup, model, tokenizer, groups=None):
    """The core rank 0 drives: requests in, outputs out, for the whole job (EngineCore's interface)."""
    if not _multi_rank(groups):
        engine = setup.make_engine(model, tokenizer.eos_token_ids)
        return engine.core
    from dsa.dist.control import ControlPlane
    from dsa.engine.dp import DPRouter

    if groups.rank != 0:
        raise InputError(f"build_core is for rank 0; rank {groups.rank} of {groups.world_size} runs run_follower")
    plane = ControlPlane.create()
    return DPRouter(_group_core(setup, model, tokenizer), groups, plane)


def run_follower(setup, model, tokenizer, groups):
    """A rank other than 0: takes its DP group's requests from rank 0 and runs in step until rank 0 closes
    the core (close_core). Returns a dsa.engine.dp.FollowerResult (iterations and forwards it ran)."""
    if not _multi_rank(groups):
        raise InputError("run_follower is for the ranks other than 0 of a job of several ranks (--nproc / "
                         "torchrun); one process serves with build_core alone")
    if groups.rank == 0:
        raise InputError("rank 0 serves through build_core; run_follower is for the other ranks")
    from dsa.dist.control import ControlPlane
    from dsa.engine import dp

    plane = ControlPlane.create()
    return dp.run_follower(_group_core(setup, model, tokenizer), groups, plane)


def close_core(core) -> None:
    """After the last step (AsyncEngine.shutdown() returned, or the last serve_batch): a DPRouter sends the
    stop message to the other ranks; a one-process EngineCore has nothing to close. Safe to call twice."""
    close = getattr(core, "close", None)
    if close is not None:
        close()


__all__ = ["build_core", "run_follower", "close_core"]
