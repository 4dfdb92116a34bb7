"""What a serving process runs: the engine core for this rank's requests, started from an EngineSetup.

    core = build_core(setup, model, tokenizer, groups)   # rank 0 (or the only process): requests come here
    AsyncEngine(core, max_waiting=...).start()           # driven by the server's engine thread
    run_follower(setup, model, tokenizer, groups)        # every other rank of a --nproc / torchrun job

One process (groups None): the EngineCore itself. Several ranks: DP-attention groups each run their own
scheduler (dsa.engine.dp); TP ranks of one group mirror their group's leader.
"""
from __future__ import annotations

from dsa.errors import InputError


def build_core(setup, model, tokenizer, groups=None):
    """The core rank 0 drives: requests in, outputs out, for the whole job."""
    if groups is not None and groups.world_size > 1:
        raise InputError("serving over several ranks (--nproc / --tp / --dp > 1) is not available yet; "
                         "serve on one device")
    engine = setup.make_engine(model, tokenizer.eos_token_ids)
    return engine.core


def run_follower(setup, model, tokenizer, groups) -> None:
    """A rank other than 0: takes its share of the requests from rank 0 and runs in step until shutdown."""
    raise InputError("serving over several ranks (--nproc / --tp / --dp > 1) is not available yet; serve on one "
                     "device")


__all__ = ["build_core", "run_follower"]
