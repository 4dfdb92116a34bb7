"""How a spawned test rank (torch.multiprocessing.spawn over gloo) starts and ends.

CI once saw a rank of tests/model/test_parallel.py die with SIGABRT ("terminate called without an active
exception", a C++ thread torn down while joinable) with no Python frame to show where: a crash inside
torch's C++ teardown, not in our code. So a rank:

- starts `faulthandler`, so an abort anywhere prints every thread's Python stack to the test's stderr;
- ends only after every rank is done with its collectives (a barrier on the world group), then destroys
  the process groups itself;
- and, that done and its results on disk, leaves with os._exit(0): the interpreter's finalisation (the
  last C++ destructors of torch's distributed stack) cannot turn a finished, checked run into a crash.

A rank that raises still propagates the exception (mp.spawn reports it, the test fails), and a crash
before the results are written still fails the test: nothing here hides a wrong result.
"""
from __future__ import annotations

import faulthandler
import os
import sys
from typing import Callable

import torch.distributed as dist


def start() -> None:
    faulthandler.enable(all_threads=True)


def finish(shutdown: Callable[[], None] = dist.destroy_process_group) -> None:
    """Call when this rank's results are written: wait for the other ranks, tear the groups down with
    `shutdown` (the product's own, where the test covers it), exit 0."""
    if dist.is_initialized():
        dist.barrier()
        shutdown()
    leave()


def leave() -> None:
    """Exit 0 now, skipping interpreter finalisation (see the module docstring)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
