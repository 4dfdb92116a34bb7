"""`dsa serve` bad flags and inputs through the real entry point: exit status 2, one `error:` line, no
traceback, before any weight is read."""
from __future__ import annotations

import socket

import pytest

from dsa.cli import main

SERVE = ["serve", "--device", "cpu", "--dtype", "fp32", "--max-seq-len", "256", "--num-blocks", "64"]


@pytest.fixture(autouse=True)
def no_launch_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "DSA_RANK_ERROR_FILE", "DSA_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def weights_never_load(monkeypatch):
    """Any attempt to build the model fails the test: the error must come first."""
    from dsa.engine.args import EngineSetup

    def refuse(self, *a, **k):
        raise AssertionError("the model was built before the error")

    monkeypatch.setattr(EngineSetup, "build_model", refuse)


def check(capsys, argv, words):
    code = main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, out, err)
    assert len(errors) == 1, err
    assert "Traceback" not in out + err
    for w in words:
        assert w in errors[0], (w, errors[0])


@pytest.mark.parametrize("extra, words", [
    (["--port", "70000"], ["--port", "70000"]),
    (["--port", "eight"], ["--port"]),
    (["--max-queue-len", "0"], ["--max-queue-len"]),
    (["--shutdown-timeout", "-1"], ["--shutdown-timeout"]),
    (["--shutdown-timeout", "nan"], ["--shutdown-timeout"]),
    (["--api-key", ""], ["--api-key"]),
    (["--served-model-name", " "], ["--served-model-name"]),
    (["--uvicorn-log-level", "loud"], ["--uvicorn-log-level"]),
    (["--num-blocks", "2"], ["--num-blocks"]),
    (["--max-num-seqs", "0"], ["--max-num-seqs"]),
    (["--model", "no-such-model"], ["no-such-model"]),
    (["--tp", "3"], ["tp"]),
    (["--nproc", "0", "--tp", "2"], ["--nproc"]),
])
def test_bad_flags_are_one_error_line(capsys, weights_never_load, extra, words):
    check(capsys, SERVE + extra, words)


def test_missing_device(capsys):
    check(capsys, ["serve"], ["--device"])


def test_port_in_use_names_the_port(capsys, weights_never_load):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        check(capsys, SERVE + ["--port", str(port)], [str(port), "already in use", "--port"])


def test_a_failure_while_loading_is_one_error_line(capsys, monkeypatch):
    """The port is bound and the model loads in the background; a load error still ends the command the usual
    way (the server stops, exit 2, the error's one line)."""
    from dsa.engine.args import EngineSetup
    from dsa.errors import CheckpointError

    def corrupt(self, *a, **k):
        raise CheckpointError("model-00002-of-00003.safetensors is truncated; re-download it")

    monkeypatch.setattr(EngineSetup, "build_model", corrupt)
    check(capsys, SERVE + ["--port", "0", "--uvicorn-log-level", "warning"], ["truncated", "re-download"])
