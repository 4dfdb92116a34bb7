"""Shared bench plumbing: interleaved timing, peak memory, the machine, Markdown tables.

Timing is side by side: the variants of one case (e.g. sparse and dense at 64K) run alternately, one
repetition each in turn (the order rotating every repetition), and the median of each is reported. On a
machine shared with other work this cancels slow drifts of the load, so the RATIO of two variants is
far steadier than either time.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import time
from typing import Callable, Mapping, Optional, Sequence

import torch

# ---- timing -----------------------------------------------------------------------------------------


def sync(device: torch.device | str = "cpu") -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def interleaved(variants: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Run every variant `warmup` times, then `reps` rounds of one call each, rotating the order per round.

    Returns {name: [seconds per call]} (reps entries each). A variant may return a dict of named
    sub-times in seconds (e.g. {"indexer": ...}); those are collected under "name.sub".
    """
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(warmup):
        for n in names:
            variants[n]()
    sync(device)
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            sub = variants[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
            if isinstance(sub, dict):
                for k, v in sub.items():
                    times.setdefault(f"{n}.{k}", []).append(float(v))
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    """a / b, nan when b is 0 or either is missing."""
    if a is None or b is None or not b or b != b or a != a:
        return float("nan")
    return a / b


# ---- memory -----------------------------------------------------------------------------------------

PROFILER_METHOD = "torch allocator bytes (torch.profiler memory events), peak over the call"
CUDA_METHOD = "torch.cuda.max_memory_allocated, peak over the call"


def peak_from_events(deltas: Sequence[int]) -> int:
    """Largest running sum of allocation deltas (bytes; frees negative), counted from 0 at the start."""
    cur = peak = 0
    for d in deltas:
        cur += d
        peak = max(peak, cur)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[int, str]:
    """Peak bytes the torch allocator holds for `fn` beyond what was held before it, and how measured.

    tracemalloc does not see torch's allocations. On CUDA the allocator's own peak counter is used; on
    the CPU there is no allocator statistic, so every allocation and free is recorded with
    torch.profiler(profile_memory=True) and the running total's maximum is taken (exact for tensors;
    it does not count glibc's or oneDNN's private scratch memory).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        sync(dev)
        return int(torch.cuda.max_memory_allocated(dev) - before), CUDA_METHOD
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())  # stable: simultaneous events keep their recorded order
    return peak_from_events([int(e.nbytes()) for e in events]), PROFILER_METHOD


def rss_bytes() -> int:
    """Current resident set size of this process (Linux), 0 where unknown."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since reset_peak_rss() (Linux)."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


# ---- the machine ------------------------------------------------------------------------------------


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(threads: int) -> dict:
    from dsa.planning.hardware import cpu_memory_gb, cpu_name, detect

    hw = detect()
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": hw.platform,
        "device": hw.name,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "memory_gib": round(cpu_memory_gb(), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "load_start": load_average(),
    }
    return info


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---- formatting -------------------------------------------------------------------------------------


def fmt_time(s: Optional[float]) -> str:
    if s is None or s != s:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None or n != n:
        return "-"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if abs(n) >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{int(n)} B"


def fmt_ratio(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def fmt_tokens(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; numbers right-aligned."""
    def align(i: int) -> str:
        col = [r[i] for r in rows]
        numeric = col and all(isinstance(c, (int, float)) or _looks_numeric(str(c)) for c in col)
        return "---:" if numeric else "---"

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align(i) for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _looks_numeric(s: str) -> bool:
    return bool(re.match(r"^[-+]?[\d.,]+\s*[a-zA-Z%x]*$", s)) or s == "-"
