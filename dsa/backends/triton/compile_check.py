"""Compile every Triton kernel of this package for the GPUs we ship profiles for, with no GPU present.

    python -m dsa.backends.triton.compile_check                  # all kernels x all targets
    python -m dsa.backends.triton.compile_check -k sparse_mla -t sm90

Each module of `dsa.backends.triton.MODULES` lists what to build in `KERNELS`, one entry per
representative (671B-shaped) specialisation:

    (label, jit_function, signature, constexprs, options[, divisible])
        signature   {arg name: "*bf16" | "*fp8e4nv" | "*i32" | "i32" | "fp32" | "constexpr", ...}
        constexprs  {constexpr arg name: value} or a callable(GPUTarget) -> such a dict (tiles per target)
        options     {"num_warps": 8, "num_stages": 2} or a callable(GPUTarget) -> such a dict
        divisible   names of integer args (strides) whose values are multiples of 16 at 671B shapes
    (also accepted: (jit_function, signature, constexprs[, options]) and dicts with those keys)

Pointer arguments, and the integers named in `divisible`, are compiled as multiples of 16, as the
JIT specialises them for torch allocations and such strides (this decides vectorised loads).
For every kernel x target it prints registers (CUDA: from the cubin's resource usage via the
cuobjdump bundled with triton; AMD: VGPRs/SGPRs from the assembly), spills, shared memory (LDS) and
the compile time, then exits 1 if any compile failed. A target whose toolchain is missing (no ptxas
for CUDA) is reported as SKIPPED with the reason, never as passed; triton's wheel bundles ptxas and
links AMD code objects itself (lld inside libtriton), so on x86-64 Linux all four targets build.

Triton decides at kernel definition whether to interpret; when this runs with TRITON_INTERPRET=1
set (e.g. from the test suite), it re-runs itself in a child process without it.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

TARGETS = (("sm90", "cuda", 90, 32), ("sm100", "cuda", 100, 32), ("gfx942", "hip", "gfx942", 64),
           ("gfx950", "hip", "gfx950", 64))
# Built only when asked for with -t (profiles a100 and rtx-pro-6000); not every kernel targets them
# (sm80 has no fp8 e4m3 conversions), so they are not part of the CI check.
EXTRA_TARGETS = (("sm80", "cuda", 80, 32), ("sm120", "cuda", 120, 32))


@dataclass
class Spec:
    label: str
    fn: object
    signature: dict
    constexprs: Callable
    options: Callable
    divisible: tuple = ()


def _normalise(entry, module: str) -> Spec:
    if isinstance(entry, dict):
        fn = entry.get("kernel", entry.get("fn"))
        label = entry.get("label", entry.get("name", getattr(fn, "__name__", "?")))
        sig, const, opts = entry["signature"], entry.get("constexprs", {}), entry.get("options", {})
        divisible = entry.get("divisible", ())
    else:
        entry = tuple(entry)
        if isinstance(entry[0], str):
            label, entry = entry[0], entry[1:]
        else:
            label = None
        fn, sig, const = entry[:3]
        opts = entry[3] if len(entry) > 3 else {}
        divisible = entry[4] if len(entry) > 4 else ()
        label = label or getattr(fn, "__name__", "?")
    options = opts if callable(opts) else (lambda _t, o=dict(opts or {}): o)
    constexprs = const if callable(const) else (lambda _t, c=dict(const or {}): c)
    return Spec(f"{module}:{label}", fn, dict(sig), constexprs, options, tuple(divisible or ()))


def collect() -> list[Spec]:
    import dsa.backends.triton as pkg

    specs = []
    for module in pkg.present_modules():
        kernels = getattr(module, "KERNELS", None)
        if kernels is None:
            print(f"WARNING {module.__name__} exports no KERNELS: nothing of it is compile-checked")
            continue
        if callable(kernels):
            kernels = kernels()
        specs.extend(_normalise(e, module.__name__.rsplit(".", 1)[-1]) for e in kernels)
    return specs


def toolchain_reason(backend: str, arch) -> Optional[str]:
    """Why a target's toolchain is unusable here (None = usable)."""
    if backend == "cuda":
        try:
            from triton.backends.nvidia.compiler import get_ptxas

            path = get_ptxas(arch).path
        except Exception as err:
            return f"no ptxas: {err}"
        if not path or not os.path.exists(path):
            return f"no ptxas at {path!r} (set TRITON_PTXAS_PATH)"
        return None
    try:
        from triton._C.libtriton import amd

        if not hasattr(amd, "link_hsaco"):
            return "this triton build cannot link AMD code objects (no amd.link_hsaco)"
    except Exception as err:
        return f"triton's AMD backend is unavailable: {err}"
    return None


def _cuda_resources(cubin: bytes) -> dict:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if not m:
        return {}
    return {"regs": int(m.group(1)), "spill_bytes": int(m.group(2)) + int(m.group(4))}


def _amd_resources(asm: str) -> dict:
    def num(key: str) -> int:
        m = re.search(rf"^\s*\.{key}:\s*(\d+)", asm, re.M)
        return int(m.group(1)) if m else 0

    return {"regs": num("vgpr_count"), "sgprs": num("sgpr_count"),
            "spills": num("vgpr_spill_count") + num("sgpr_spill_count"),
            "spill_bytes": num("private_segment_fixed_size")}


def compile_one(spec: Spec, target) -> dict:
    import triton
    from triton.compiler import ASTSource

    attrs = {(i,): [["tt.divisibility", 16]] for i, (name, t) in enumerate(spec.signature.items())
             if t.startswith("*") or name in spec.divisible}
    t0 = time.time()
    kernel = triton.compile(ASTSource(spec.fn, spec.signature, spec.constexprs(target), attrs), target=target,
                            options=spec.options(target))
    info = {"seconds": time.time() - t0, "shared": kernel.metadata.shared}
    info.update(_cuda_resources(kernel.asm["cubin"]) if target.backend == "cuda"
                else _amd_resources(kernel.asm["amdgcn"]))
    return info


_SPECS: list[Spec] = []


def _job(i: int, target_tuple) -> tuple:
    from triton.backends.compiler import GPUTarget

    try:
        return i, target_tuple, compile_one(_SPECS[i], GPUTarget(*target_tuple)), None
    except Exception as err:  # reported, then the run fails
        msg = str(err).strip().splitlines()
        return i, target_tuple, None, (msg[-1] if msg else type(err).__name__)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="kernel", default="", help="only kernels whose label contains this")
    parser.add_argument("-t", dest="target", action="append", default=[],
                        help="only these targets: sm90, sm100, gfx942, gfx950 (default: all four), or sm80, sm120")
    parser.add_argument("-j", dest="jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    args = parser.parse_args(argv)

    from dsa.backends.triton.common import INTERPRETING

    if INTERPRETING:  # kernels were defined as interpreted functions: compile in a clean child process
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "dsa.backends.triton.compile_check", *(argv if argv is not None else sys.argv[1:])]
        return subprocess.call(cmd, env=env)

    _SPECS[:] = [s for s in collect() if args.kernel in s.label]
    known = {t[0]: t for t in TARGETS + EXTRA_TARGETS}
    unknown = [t for t in args.target if t not in known]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(known)}")
    targets = [known[t] for t in args.target] if args.target else list(TARGETS)
    if not _SPECS:
        print("no kernels to compile")
        return 1
    skipped, jobs = [], []
    for name, backend, arch, warp in targets:
        reason = toolchain_reason(backend, arch)
        if reason:
            print(f"SKIPPED {name}: {reason}")
            skipped.append(name)
        else:
            jobs += [(i, (backend, arch, warp)) for i in range(len(_SPECS))]
    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_job, *zip(*jobs)))
    else:
        results = [_job(i, t) for i, t in jobs]

    failures = 0
    names = {(b, a): n for n, b, a, _ in targets}
    print(f"{'kernel':58} {'target':7} {'regs':>5} {'spill B':>7} {'smem B':>7} {'sec':>5}")
    for i, (backend, arch, _w), r, err in results:
        label, name = _SPECS[i].label, names[(backend, arch)]
        if err is not None:
            failures += 1
            print(f"{label:58} {name:7} FAILED: {err}")
        else:
            print(f"{label:58} {name:7} {r.get('regs', '?'):>5} {r.get('spill_bytes', '?'):>7} "
                  f"{r['shared']:>7} {r['seconds']:5.1f}")
    built = f"{len(_SPECS)} kernel(s) x {len(targets) - len(skipped)} target(s)"
    if skipped:
        built += f"; SKIPPED (toolchain missing, NOT checked): {', '.join(skipped)}"
    print(f"{failures} FAILURE(S); {built}" if failures else f"compiled {built}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
