"""bench/gpu_check.sh, the GPU certification script, in its CPU smoke mode (DSA_GPU_CHECK_DEVICE=cpu,
DSA_GPU_CHECK_QUICK=1: indexer conformance cases only, the GPU op bench skipped): every stage runs, the output
folder holds at most 7 small files, and a failing stage does not stop the ones after it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _run(out: Path, device: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSA_GPU_CHECK_DEVICE=device, DSA_GPU_CHECK_QUICK="1", PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=600)


def test_cpu_smoke_run_writes_every_stage(tmp_path):
    r = _run(tmp_path / "out", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["env", "conformance", "model", "gpu_ops"]
    assert all(": exit 0," in line for line in summary), summary
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 7 and all(p.stat().st_size < 1 << 20 for p in files), files
    assert "torch" in (out / "env.log").read_text()
    assert json.loads((out / "conformance" / "report.json").read_text())["result"] == "pass"
    model = (out / "model.log").read_text()
    assert "greedy agreement, graphs vs eager: identical" in model  # on a CPU both runs are eager
    assert "greedy agreement, eager vs cpu: identical" in model
    assert "greedy agreement, torch provider vs cpu: identical" in model
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # the scratch files and profile are gone


def test_a_failing_stage_leaves_the_others_running(tmp_path):
    r = _run(tmp_path / "out", "nosuch-profile")
    assert r.returncode == 1
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["env", "conformance", "model", "gpu_ops"]
    assert ": exit 0," in summary[0] and ": exit 0," not in summary[1] and ": exit 0," not in summary[2]
    assert "nosuch-profile" in (tmp_path / "out" / "conformance.log").read_text()
