"""`dsa make-checkpoint` leaves nothing behind when it is stopped: SIGTERM removes the `.partial` directory
(like Ctrl-C) and keeps a checkpoint being replaced; the partial of a SIGKILLed writer is reclaimed by the next
write to the same --out, while a partial whose writer is alive (or that holds anything else) is left alone."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dsa.model.weights as weights
from dsa.errors import OutputDirError
from dsa.io.checkpoint_writer import write_checkpoint

REPO = Path(__file__).resolve().parents[2]
# `dsa make-checkpoint`, with the weight generation held until the test has signalled the process.
SLOW_CLI = """
import sys, time
from pathlib import Path
import dsa.model.weights as weights

def slow(*args, **kwargs):
    Path(sys.argv[1]).write_text("writing")
    time.sleep(30)

weights.random_checkpoint = slow
from dsa.cli import main
sys.exit(main(sys.argv[2:]))
"""


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def start_slow_writer(tmp_path, out, *flags):
    marker = tmp_path / "writing.marker"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(marker), "make-checkpoint", "--config", "tiny",
                             "--out", str(out), *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.02)
    marker.unlink()
    partials = [p.name for p in out.parent.iterdir() if ".partial-" in p.name]
    assert len(partials) == 1 and partials[0].startswith(f".{out.name}.partial-{proc.pid}-"), partials
    return proc


def stop(proc, sig):
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return err


def test_sigterm_leaves_nothing(tmp_path):
    out = tmp_path / "ck"
    proc = start_slow_writer(tmp_path, out)
    err = stop(proc, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM, err  # still dies by the signal, after cleaning up
    assert "Traceback" not in err and "nothing was written" in err, err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_overwrite_keeps_the_old_checkpoint(tmp_path):
    out = write_checkpoint("tiny", tmp_path / "ck", fp8=False, num_shards=1)
    before = snapshot(tmp_path)
    proc = start_slow_writer(tmp_path, out, "--overwrite", "--fp8")
    stop(proc, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM
    assert snapshot(tmp_path) == before


def test_sigkill_partial_is_reclaimed_by_the_next_write(tmp_path):
    out = tmp_path / "ck"
    proc = start_slow_writer(tmp_path, out)
    stop(proc, signal.SIGKILL)
    left = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(left) == 1  # a SIGKILL cannot be caught: the partial stays ...
    write_checkpoint("tiny", out, fp8=False, num_shards=1)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # ... until the next write to the same --out


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_partial(parent: Path, name: str, files=("config.json", "model-00001-of-00003.safetensors")) -> Path:
    d = parent / name
    d.mkdir()
    for f in files:
        (d / f).write_text("x")
    return d


def test_only_stale_partials_of_ours_are_reclaimed(tmp_path):
    write_checkpoint("tiny", tmp_path / "ck", fp8=False, num_shards=1)
    dead = dead_pid()
    stale = make_partial(tmp_path, f".ck.partial-{dead}-abc_12")
    old = tmp_path / f".ck.old-{dead}-xyz"  # killed after the new checkpoint went in place
    old.mkdir()
    make_partial(old, "replaced")
    alive = make_partial(tmp_path, f".ck.partial-{os.getppid()}-abc")  # its writer is still running
    foreign = make_partial(tmp_path, f".ck.partial-{dead}-def", files=("config.json", "notes.txt"))
    other_out = make_partial(tmp_path, f".other.partial-{dead}-abc")
    no_pid = make_partial(tmp_path, ".ck.partial-abc")
    link = tmp_path / f".ck.partial-{dead}-lnk"
    link.symlink_to(other_out, target_is_directory=True)
    write_checkpoint("tiny", tmp_path / "ck", fp8=False, num_shards=1, overwrite=True)
    assert not stale.exists() and not old.exists()
    for kept in (alive, foreign, other_out, no_pid):
        assert kept.is_dir() and any(kept.iterdir()), kept
    assert link.is_symlink() and (other_out / "config.json").exists()


def test_sigterm_in_process_runs_the_previous_handler_after_cleanup(tmp_path, monkeypatch):
    calls = []

    def previous(signum, frame):
        calls.append(sorted(p.name for p in tmp_path.iterdir()))

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    old = signal.signal(signal.SIGTERM, previous)
    try:
        monkeypatch.setattr(weights, "random_checkpoint", terminated)
        with pytest.raises(OutputDirError, match="interrupted by SIGTERM; nothing was written"):
            write_checkpoint("tiny", tmp_path / "ck", fp8=False)
        assert calls == [[]]  # called once, after the partial was removed
        assert signal.getsignal(signal.SIGTERM) is previous  # restored
    finally:
        signal.signal(signal.SIGTERM, old)
    assert list(tmp_path.iterdir()) == []
