"""Launching `dsa run` over several processes: torchrun's env:// contract, local spawning, the process groups.

    torchrun --nproc-per-node 8 -m dsa.cli run --device h200 --model DIR        # one node
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \
             --rdzv-endpoint HOST:29500 -m dsa.cli run --device h200 --model DIR --nodes 2
    dsa run --device cpu --tp 2 --nproc 2                                         # spawns 2 itself

Each process reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (set by torchrun, or by
`spawn_local` in the same way) and joins the default process group with the profile's `collective`
backend (gloo, nccl - also RCCL on ROCm -, hccl). Nothing here is global state: the groups a rank
uses travel in a dsa.model.parallel_groups.ParallelGroups.

DP-attention ranks stay in step through dsa.dist.lockstep.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from dsa.errors import DsaError
from dsa.model.parallel_groups import ParallelGroups, check_layout

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
POLL_SECONDS = 0.2
# the directory holding this dsa package: the ranks import the same one
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def child_pythonpath(environ=None) -> str:
    """PYTHONPATH for a child `python -m dsa...` that must import this same dsa package: the directory holding
    it is added only when it is not already on sys.path (a source checkout used without installing). An
    installed wheel's site-packages is never put ahead of the standard library."""
    current = (os.environ if environ is None else environ).get("PYTHONPATH", "")
    on_path = any(Path(p or ".").resolve() == SOURCE_ROOT for p in sys.path)
    return os.pathsep.join(p for p in ([] if on_path else [str(SOURCE_ROOT)]) + [current] if p)


def launched() -> bool:
    """This process is one rank of a torchrun / spawn_local launch."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: Optional[int] = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise DsaError(f"environment variable {name} is not set; launch with torchrun or `dsa run --nproc N`")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DsaError(f"environment variable {name}={raw!r} is not an integer") from None


def check_launch(plan, nproc: Optional[int], fp8_weights: bool) -> None:
    """DsaError (before any weight is read) when the layout cannot be split over this model or does not
    match the processes launched (torchrun's WORLD_SIZE, or --nproc)."""
    lay = plan.layout
    check_layout(plan.config, lay.tp, lay.dp_attention, lay.ep, fp8_weights=fp8_weights)
    need = plan.world_size
    how = f"tp {lay.tp} x dp {lay.dp_attention}"
    if nproc is not None and (isinstance(nproc, bool) or nproc < 1):
        raise DsaError(f"--nproc must be a positive integer, got {nproc}")
    if launched():
        world = _env_int("WORLD_SIZE")
        if world != need:
            raise DsaError(f"{world} processes were launched but the layout ({how}) needs {need}; launch {need} "
                           f"or pass --tp / --dp so that tp x dp = {world}")
        if nproc is not None and nproc != world:
            raise DsaError(f"--nproc {nproc} does not match the {world} processes torchrun launched; drop --nproc")
        local = os.environ.get("LOCAL_WORLD_SIZE")
        if local is not None and world // _env_int("LOCAL_WORLD_SIZE") != lay.nodes:
            raise DsaError(f"the layout says nodes={lay.nodes} but the launch has {world // int(local)} node(s) of "
                           f"{local} processes; pass --nodes {world // int(local)}")
        return
    if nproc is None:
        if need > 1:
            raise DsaError(f"the layout ({how}, ep {lay.ep}) needs {need} processes: add --nproc {need} (one machine) "
                           f"or launch with torchrun --nproc-per-node {need // lay.nodes} -m dsa.cli run ...")
        return
    if nproc != need:
        raise DsaError(f"--nproc {nproc} does not match the layout ({how} = {need} processes); pass --nproc {need} "
                       f"or --tp / --dp so that tp x dp = {nproc}")
    if lay.nodes != 1:
        raise DsaError(f"--nproc starts processes on this machine only, but the layout says nodes={lay.nodes}; "
                       "launch every node with torchrun (see README, Multi-device and multi-node)")


def must_spawn(plan, nproc: Optional[int]) -> bool:
    return not launched() and nproc is not None and plan.world_size > 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_local(nproc: int, argv: Sequence[str], grace: float = 10.0) -> int:
    """Run `python -m dsa.cli *argv` as ranks 0..nproc-1 on this machine (torchrun's environment,
    rendezvous on 127.0.0.1); rank 0 keeps stdin. If a rank fails, the others are stopped. Returns rank 0's
    status when it failed by itself (it printed its error line), else the first failing rank's (a signal N
    is 128 + N), printing that rank's error line (ranks other than 0 leave it in a file, see dsa.cli); 0
    when every rank succeeded.

    Stopping: rank 0 leads. A SIGTERM to this process is passed on to rank 0 alone (a server drains, then
    tells the other ranks to stop); Ctrl-C in the terminal already reached every rank, so nothing is sent
    again (a second signal would cut a drain short). Then rank 0 gets `grace` seconds to exit before every
    rank left is stopped. Returns 0 when a SIGTERM ended a rank 0 that exited cleanly, else 130."""
    import tempfile

    port = free_port()
    path = child_pythonpath()
    threads = ({} if "OMP_NUM_THREADS" in os.environ
               else {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))})
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="dsa-ranks-") as tmp:
        errors = [Path(tmp) / f"rank{rank}.err" for rank in range(nproc)]
        terminated, restore = _sigterm_as_interrupt()
        try:
            for rank in range(nproc):
                env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                           LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port), PYTHONPATH=path, DSA_RANK_ERROR_FILE=str(errors[rank]),
                           **threads)  # like torchrun: ranks share the cores
                procs.append(subprocess.Popen([sys.executable, "-m", "dsa.cli", *argv], env=env,
                                              stdin=None if rank == 0 else subprocess.DEVNULL))
            while True:
                codes = [p.poll() for p in procs]
                failed = next((r for r, c in enumerate(codes) if c not in (None, 0)), None)
                if failed is not None:
                    _stop(procs)
                    return _failure(procs, failed, errors)
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            if terminated and procs and procs[0].poll() is None:
                procs[0].send_signal(signal.SIGTERM)
            if procs:
                try:
                    procs[0].wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            _stop(procs)
            return 0 if terminated and procs and procs[0].returncode == 0 else 130
        finally:
            restore()


def _sigterm_as_interrupt() -> tuple[list, object]:
    """From now on (main thread only) SIGTERM raises KeyboardInterrupt. Returns the list that holds the
    signal once one came, and a function that restores the previous handler."""
    seen: list = []
    if threading.current_thread() is not threading.main_thread():
        return seen, lambda: None

    def interrupt(sig, frame):
        seen.append(sig)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    return seen, lambda: signal.signal(signal.SIGTERM, old)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def _failure(procs: list[subprocess.Popen], failed: int, errors: list[Path]) -> int:
    first = procs[0].returncode
    if failed == 0 or (first is not None and first > 0):  # rank 0 failed by itself: it spoke
        return _status(first)
    try:
        line = errors[failed].read_text(encoding="utf-8").strip()
    except OSError:
        line = ""
    print(line or f"error: rank {failed} of {len(procs)} exited with status {_status(procs[failed].returncode)}",
          file=sys.stderr, flush=True)
    return _status(procs[failed].returncode)


def _stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def torch_device(platform: str) -> torch.device:
    """Where the model and its caches live on this rank: the profile's platform, local device LOCAL_RANK
    (set by torchrun and `dsa run --nproc`; 0 for one process). ROCm builds of torch call GPUs "cuda"."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if platform in ("cuda", "rocm"):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if platform == "npu":
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def init(plan) -> Optional[ParallelGroups]:
    """Join the launch (env://) with the profile's collective backend and make the layout's groups;
    None when this is a single, non-launched process."""
    if not launched():
        return None
    lay = plan.layout
    backend = plan.profile.collective
    local_rank = _env_int("LOCAL_RANK", 0)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DsaError("the profile's collective is nccl but torch sees no CUDA/ROCm device here")
        torch.cuda.set_device(local_rank)
    elif backend == "hccl":
        try:
            import torch_npu  # noqa: F401  (registers the hccl backend and torch.npu)
        except ImportError:
            raise DsaError("the profile's collective is hccl, which needs torch_npu (with CANN)") from None
        torch.npu.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://")
    return ParallelGroups.create(lay.tp, lay.dp_attention, lay.ep)


def shutdown(groups: Optional[ParallelGroups]) -> None:
    if groups is not None and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj, groups: Optional[ParallelGroups]):
    """Rank 0's `obj` on every rank (a prompt, a seed)."""
    if groups is None or groups.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=groups.world_group)
    return box[0]


def shared_seed(seed: Optional[int], groups: Optional[ParallelGroups]) -> Optional[int]:
    """The ranks of a DP group must sample alike: an unset seed becomes one drawn on rank 0."""
    if groups is None or groups.world_size == 1 or seed is not None:
        return seed
    return broadcast(random.SystemRandom().randrange(2**63), groups)


__all__ = ["launched", "check_launch", "must_spawn", "spawn_local", "init", "shutdown", "broadcast", "shared_seed",
           "free_port", "ENV"]
