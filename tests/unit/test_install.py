"""The installed package, away from the checkout: what a user gets from `pip install dsa-runtime`.

- the wheel (built by `python -m build --wheel` from a copy of the checkout) holds the package data
  (device profiles, model configs, the conformance cases' pytest.ini) and no top-level package but `dsa`;
- the cpu image's install steps (tests/unit/test_docker.py replays them once per session: build a wheel of
  the checkout, install it non-editable with the `cpu` and `conformance` extras in a fresh venv under a
  temporary root) give a `dsa` that, run from another directory with no PYTHONPATH, imports the package from
  the venv's site-packages and runs `dsa devices`, `run`, `plan`, `conformance -k indexer` and
  `bench --quick --sections cache`; the old generic top-level names (`runtime`, `model`, ...) are not importable.

Slow (a fresh venv with torch): runs when DSA_SLOW_TESTS=1.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.unit.test_docker import SLOW, Image, cpu_image, drop_cpu_image

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = SLOW
# Local state that is not part of the source (a wheel built with it could pick up stale files from build/).
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
              ".ruff_cache", ".import_linter_cache", "conformance-report")
# Top-level names the code used before it became one package `dsa`; a wheel must not install them.
OLD_TOP_LEVEL = ("runtime", "model", "backends", "bench", "hal", "engine", "planning", "configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src") / "dsa-runtime", tmp_path_factory.mktemp("dist")
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)], check=True,
                   capture_output=True, timeout=600)
    (built,) = out.glob("dsa_runtime-*.whl")
    return built


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    yield cpu_image(tmp_path_factory)
    drop_cpu_image(tmp_path_factory)


def run(image: Image, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A program of the image's venv, from `cwd`, with the checkout neither on PYTHONPATH nor on PATH."""
    assert not cwd.resolve().is_relative_to(REPO_ROOT)
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, env=image.env(), timeout=timeout)


def dsa(image: Image, cwd: Path, *args: str, timeout: int = 300) -> str:
    result = run(image, cwd, str(image.dsa), *args, timeout=timeout)
    assert result.returncode == 0, f"dsa {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


# ---------------------------------------------------------------- the wheel

def test_wheel_holds_the_package_data_and_only_dsa(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    for data in ("dsa/configs/devices/cpu.yaml", "dsa/configs/devices/h200.yaml",
                 "dsa/configs/models/tiny/config.json", "dsa/configs/models/deepseek-v3.2-exp/config.json",
                 "dsa/conformance/cases/pytest.ini", "dsa/conformance/cases/test_indexer_topk.py"):
        assert data in names, f"{wheel.name} lacks {data}"
    assert {n.split("/")[0] for n in names} - {info} == {"dsa"}, sorted({n.split("/")[0] for n in names})
    assert "dsa = dsa.cli:main" in entry_points, entry_points


# ---------------------------------------------------------------- the installed package, from elsewhere

def test_dsa_is_imported_from_the_venv_not_the_checkout(image, tmp_path):
    result = run(image, tmp_path, str(image.python), "-c", "import dsa, sys; print(dsa.__file__)")
    assert result.returncode == 0, result.stderr
    location = Path(result.stdout.strip())
    assert location.is_relative_to(image.site_packages) and not location.is_relative_to(REPO_ROOT), location


@pytest.mark.parametrize("name", OLD_TOP_LEVEL)
def test_no_generic_top_level_name_is_installed(image, tmp_path, name):
    result = run(image, tmp_path, str(image.python), "-c", f"import {name}")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, \
        f"`import {name}` works in the venv: {result.stdout}{result.stderr}"


def test_devices(image, tmp_path):
    names = {line.split()[0] for line in dsa(image, tmp_path, "devices").splitlines() if line.strip()}
    assert {"cpu", "h200", "mi300x", "ascend-a2"} <= names, names


def test_run_on_cpu(image, tmp_path):
    out = dsa(image, tmp_path, "run", "--device", "cpu", "--max-new-tokens", "4")
    # random weights, sampled: the continuation may end early on the end-of-sequence token
    stats = re.search(r"\[prompt: [1-9]\d* tokens, .* \| decode: (\d+) tokens, .* \| stop: (\w+)\]", out)
    assert stats and 1 <= int(stats[1]) <= 4 and stats[2] in ("length", "eos"), out


def test_plan_h200(image, tmp_path):
    out = dsa(image, tmp_path, "plan", "--device", "h200", "--model", "deepseek-v3.2-exp")
    assert "providers" in out and "h200" in out and "verdict" in out, out


def test_conformance_indexer_on_cpu(image, tmp_path):
    report_dir = tmp_path / "r"
    dsa(image, tmp_path, "conformance", "--device", "cpu", "-k", "indexer", "--report", str(report_dir))
    report = json.loads((report_dir / "report.json").read_text())
    assert report["result"] == "pass", report
    assert sum(row["cases"] for row in report["rows"]) > 0, report["rows"]
    assert "indexer_topk" in {row["op"] for row in report["rows"]}, report["rows"]


def test_bench_quick_cache(image, tmp_path):
    out = dsa(image, tmp_path, "bench", "--quick", "--sections", "cache")
    assert "Cache bytes per token per layer" in out and "| fp8 |" in out, out
