"""Bad inputs through the real `dsa` entry point, table-driven.

For every row: the exit status, exactly one line starting with `error:` on stderr, no traceback anywhere,
and the file system unchanged (the test's tmp directory, which is also the working directory, compared
before and after). Most rows run `dsa.cli.main([...])` in-process; the stdin, signal and multi-rank rows
run `python -m dsa.cli` in a subprocess.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsa.cli import main
from dsa.io.model_source import resolve_model

REPO = Path(__file__).resolve().parents[2]
CTX = resolve_model(None).config.max_position_embeddings  # the built-in model's context (mini: 1024)
LONG_PROMPT = "a" * (4 * CTX + 100)  # more tokens than the context even for a tokenizer that merged 4 "a"s
RUN = ("run", "--device", "cpu", "--raw", "--temperature", "0", "--max-new-tokens", "2")


def _files(tmp: Path) -> dict:
    """A snapshot of everything under tmp: path -> (size, mtime) (None for a directory)."""
    return {str(p.relative_to(tmp)): (None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns))
            for p in tmp.rglob("*")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """tmp_path with a few prepared inputs, as the working directory."""
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "not_utf8.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "long.txt").write_text("a" * 80_000)
    (tmp_path / "bad_config.json").write_text("{not json")
    (tmp_path / "bad_profile.yaml").write_text("name: [unclosed\n")
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "DSA_RANK_ERROR_FILE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _check(code: int, want: int, out: str, err: str, words=()) -> None:
    assert code == want, (code, out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in out + err and "MemoryError" not in out + err, err
    for w in words:
        assert w in errors[0], (w, errors[0])


# (argv, exit status, words of the error line); "{tmp}" is the sandbox
ROWS = [
    # run
    (["run"], 2, ["--device"]),
    (["run", "--device", "nosuch"], 2, ["unknown device profile 'nosuch'"]),
    (["run", "--device", "cpu", "--model", "nosuch"], 2, ["model 'nosuch' not found"]),
    (["run", "--device", "cpu", "--model", "{tmp}/bad_config.json"], 2, []),
    (["run", "--device", "h200"], 2, ["cuda"]),
    (["run", "--device", "cpu", "--dtype", "fp64"], 2, ["--dtype"]),
    (["run", "--device", "cpu", "--temperature", "-1"], 2, ["temperature"]),
    (["run", "--device", "cpu", "--top-p", "0"], 2, ["top_p"]),
    (["run", "--device", "cpu", "--max-new-tokens", "0"], 2, ["max_new_tokens"]),
    (["run", "--device", "cpu", "--tp", "0"], 2, ["--tp"]),
    (["run", "--device", "cpu", "--max-seq-len", "1"], 2, ["--max-seq-len"]),
    (["run", "--device", "cpu", "--max-seq-len", "100000"], 2, [f"at most {CTX}"]),
    (["run", "--device", "cpu", "--page-size", "-3"], 2, ["--page-size"]),
    (["run", "--device", "cpu", "--prompt", "x", "--interactive"], 2, ["not allowed with"]),
    (["run", "--device", "cpu", "--prompt-file", "{tmp}/missing.txt"], 2, ["not found"]),
    (["run", "--device", "cpu", "--prompt-file", "/dev/zero"], 2,
     ["--prompt-file /dev/zero is larger than the context can hold", "bytes read, at most"]),
    (["run", "--device", "cpu", "--prompt-file", "{tmp}/long.txt"], 2, ["larger than the context"]),
    (["run", "--device", "cpu", "--prompt-file", "{tmp}/a_dir"], 2, ["cannot read"]),
    (["run", "--device", "cpu", "--prompt-file", "{tmp}/not_utf8.txt"], 2, ["not UTF-8"]),
    (["run", "--device", "cpu", "--prompt", LONG_PROMPT], 2, [f"the context holds {CTX}"]),
    (["run", "--device", "cpu", "--tp", "2"], 2, ["add --nproc 2"]),
    (["run", "--device", "cpu", "--nproc", "0"], 2, ["--nproc"]),
    (["run", "--device", "cpu", "--tp", "2", "--nproc", "3"], 2, ["does not match the layout"]),
    (["run", "--device", "cpu", "--chat"], 2, ["chat template"]),
    # plan
    (["plan"], 2, ["--device"]),
    (["plan", "--device", "nosuch"], 2, ["nosuch"]),
    (["plan", "--device", "{tmp}/bad_profile.yaml"], 2, []),
    (["plan", "--device", "cpu", "--model", "{tmp}/a_dir"], 2, []),
    (["plan", "--device", "cpu", "--ep", "0"], 2, ["--ep"]),
    (["plan", "--device", "h200", "--nodes", "100000"], 2, ["--nodes", "1024"]),  # a search would take minutes
    (["plan", "--device", "0\x1e\n"], 2, ["\\x1e", "\\n"]),  # control characters shown escaped: still one line
    (["run", "--device", "cpu", "--tp", "10000000"], 2, ["--tp"]),
    (["plan", "--device", "cpu", "--page-size", "100000"], 2, ["--page-size"]),
    # devices and the top level
    (["devices", "--bogus"], 2, ["--bogus"]),
    ([], 2, []),
    (["nosuch-command"], 2, ["nosuch-command"]),
    # conformance
    (["conformance", "--no-model", "-k", "zzz"], 2, ["-k 'zzz' matches no conformance case"]),
    (["conformance", "-k", "a and"], 2, ["-k 'a and' is not a valid expression"]),
    (["conformance", "-k", "(torch"], 2, ["not a valid expression"]),
    (["conformance", "--provider", "nosuch"], 2, ["unknown provider 'nosuch'"]),
    (["conformance", "--device", "nosuch-gpu"], 2, ["nosuch-gpu"]),
    (["conformance", "--provider", "torch", "--report", "{tmp}/file"], 2, ["not a directory"]),
    (["conformance", "--provider", "torch", "--report", "{tmp}/file/sub"], 2, ["not a directory"]),
    # bench
    (["bench", "--providers", "nosuch"], 2, ["unknown provider(s) nosuch"]),
    (["bench", "--providers", "flashmla", "--sections", "ops"], 2, ["none of flashmla can run"]),
    (["bench", "--json", "/no/such/dir/x.json"], 2, ["its directory /no/such/dir does not exist"]),
    (["bench", "--markdown", "{tmp}/a_dir"], 2, ["is a directory"]),
    (["bench", "--json", "{tmp}/same.out", "--markdown", "{tmp}/same.out"], 2, ["same file"]),
    (["bench", "--sections", "nosuch"], 2, ["unknown section(s) nosuch"]),
    (["bench", "--threads", "0"], 2, ["--threads"]),
    (["bench", "--decode-contexts", "1,x"], 2, ["--decode-contexts"]),
    # make-checkpoint (its own checks belong to its module; only the command line here)
    (["make-checkpoint", "--out", "{tmp}/ck"], 2, ["--config"]),
    (["make-checkpoint", "--config", "tiny"], 2, ["--out"]),
]


@pytest.mark.parametrize("argv, code, words", ROWS, ids=[" ".join(r[0])[:60] or "<none>" for r in ROWS])
def test_bad_input(sandbox, capsys, argv, code, words):
    argv = [a.replace("{tmp}", str(sandbox)) for a in argv]
    before = _files(sandbox)
    got = main(argv)
    out, err = capsys.readouterr()
    _check(got, code, out, err, words)
    assert _files(sandbox) == before


def test_interactive_over_long_line_is_refused_and_the_session_goes_on(sandbox, capsys, monkeypatch):
    before = _files(sandbox)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a" * 100_000 + "\nhi\nexit\nnever\n"))
    got = main([*RUN, "--interactive"])
    out, err = capsys.readouterr()
    _check(got, 0, out, err, ["longer than the context can hold", "skipped"])
    assert out.startswith("hi") and out.count("[prompt:") == 1
    assert _files(sandbox) == before


def test_interactive_too_many_tokens_is_one_error_and_the_session_goes_on(sandbox, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(LONG_PROMPT + "\nhi\n"))
    got = main([*RUN, "--interactive"])
    out, err = capsys.readouterr()
    _check(got, 0, out, err, [f"the context holds {CTX}"])
    assert out.count("[prompt:") == 1


# ---- subprocesses: stdin, signals, several ranks ---------------------------------------------------------

def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "DSA_RANK_ERROR_FILE"):
        if var not in extra:
            env.pop(var, None)
    return env


def _cli(argv, cwd: Path, stdin=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsa.cli", *argv], capture_output=True, text=True, cwd=cwd,
                          env=_env(**env), stdin=stdin if stdin is not None else subprocess.DEVNULL, timeout=180)


def test_interactive_from_dev_zero_is_bounded_and_interruptible(sandbox):
    """An endless line: one error line at once, memory stays bounded while it is skipped; Ctrl-C ends it
    with `interrupted` and status 130."""
    before = _files(sandbox)
    log = sandbox.parent / f"{sandbox.name}-stderr.txt"
    with open("/dev/zero", "rb") as zero, open(log, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "dsa.cli", *RUN, "--interactive"], stdin=zero,
                                stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=sandbox, env=_env())
        try:
            deadline = time.monotonic() + 120
            while "error:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # it is now skipping the endless line
            assert proc.poll() is None, log.read_text()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log.read_text()
    log.unlink()
    _check(proc.returncode, 130, out, err, ["longer than the context can hold"])
    assert err.rstrip().endswith("interrupted")
    assert _files(sandbox) == before


def test_prompt_file_dev_zero_in_a_subprocess(sandbox):
    r = _cli(["run", "--device", "cpu", "--prompt-file", "/dev/zero"], sandbox)
    _check(r.returncode, 2, r.stdout, r.stderr, ["--prompt-file /dev/zero is larger than the context can hold"])


def test_nproc_2_prompt_too_long_is_one_error_line_exit_2(sandbox):
    before = _files(sandbox)
    r = _cli([*RUN, "--tp", "2", "--nproc", "2", "--prompt", LONG_PROMPT], sandbox)
    _check(r.returncode, 2, r.stdout, r.stderr, [f"the context holds {CTX}"])
    assert _files(sandbox) == before


def test_nproc_2_interactive_errors_are_printed_once(sandbox):
    """Both ranks refuse the prompt (it is broadcast to them); only rank 0 prints; the session goes on."""
    stdin = sandbox.parent / f"{sandbox.name}-stdin.txt"
    stdin.write_text(LONG_PROMPT + "\n" + "b" * 100_000 + "\nhi\nexit\n")
    with open(stdin) as f:
        r = _cli([*RUN, "--tp", "2", "--nproc", "2", "--interactive"], sandbox, stdin=f)
    stdin.unlink()
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and f"the context holds {CTX}" in errors[0] and "longer than" in errors[1], r.stderr
    assert r.stdout.count("[prompt:") == 1 and r.stdout.startswith("hi")


def test_a_rank_other_than_0_stays_silent_with_the_same_status(sandbox):
    """Under torchrun (RANK set, no error file) rank 1 does not repeat rank 0's error line; status 2."""
    r = _cli([*RUN, "--tp", "2", "--prompt", LONG_PROMPT], sandbox, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1",
             LOCAL_WORLD_SIZE="2")
    assert r.returncode == 2 and "error:" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _cli([*RUN, "--tp", "2", "--prompt", LONG_PROMPT], sandbox, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0",
             LOCAL_WORLD_SIZE="2")
    _check(r.returncode, 2, r.stdout, r.stderr, [f"the context holds {CTX}"])


def test_nproc_parent_prints_a_silent_rank_error_once_with_its_status(tmp_path, capsys):
    """Rank 1 failed alone (its line is in its error file) and rank 0 was stopped: the parent prints that
    line once and exits with rank 1's status; a rank killed by signal N is 128 + N."""
    from types import SimpleNamespace

    from dsa.dist.launch import _failure

    errors = [tmp_path / "rank0.err", tmp_path / "rank1.err"]
    errors[1].write_text("error: shard 2 is truncated\n")
    procs = [SimpleNamespace(returncode=-15), SimpleNamespace(returncode=2)]
    assert _failure(procs, 1, errors) == 2
    assert capsys.readouterr().err == "error: shard 2 is truncated\n"
    procs = [SimpleNamespace(returncode=2), SimpleNamespace(returncode=-15)]  # rank 0 spoke itself
    assert _failure(procs, 0, errors) == 2 and capsys.readouterr().err == ""
    procs = [SimpleNamespace(returncode=-15), SimpleNamespace(returncode=-9)]
    errors[1].unlink()
    assert _failure(procs, 1, errors) == 137
    assert capsys.readouterr().err.startswith("error: rank 1 of 2 exited with status 137")
