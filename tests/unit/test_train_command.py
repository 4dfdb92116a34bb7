"""`dsa train` end to end at smoke size (a few steps of every stage on a handful of corpus files): the bf16 and
fp8 checkpoints load and generate, the report and the loss plot are written; bad flags are one error line."""
from __future__ import annotations

import json

import pytest

from dsa.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    code = main(["train", "--out", str(d / "ck"), "--fp8-out", str(d / "ck8"), "--report", str(d / "rep"),
                 "--work-dir", str(d / "work"), "--max-files", "12", "--steps", "0.002", "--no-progress"])
    assert code == 0
    return d


def test_smoke_training_writes_checkpoints_report_and_plot(trained, capsys):
    report = json.loads((trained / "rep" / "train.json").read_text())
    assert set(report["stages"]) == {"a1-dense-short", "a2-dense-long", "b-warmup", "c-sparse"}
    assert all(st["steps"] >= 1 and len(st["loss"]) == st["steps"] for st in report["stages"].values())
    for stage in ("after_dense", "after_warmup", "after_sparse"):
        ev = report["eval"][stage]
        assert ev["dense_loss"] > 0 and ev["sparse_loss"] > 0 and 0 < ev["recall"] <= ev["ceiling"] + 1e-6 <= 1 + 1e-6
    assert (trained / "rep" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for ck in ("ck", "ck8"):
        assert main(["run", "--device", "cpu", "--model", str(trained / ck), "--max-new-tokens", "4",
                     "--temperature", "0", "--prompt", "def f("]) == 0
    cfg = json.loads((trained / "ck8" / "config.json").read_text())
    assert "quantization_config" in cfg and (trained / "ck" / "tokenizer.json").is_file()


@pytest.mark.parametrize("argv, word", [
    (["--steps", "0"], "--steps"),
    (["--threads", "0"], "--threads"),
    (["--vocab-size", "300"], "--vocab-size"),
    (["--passkey-rate", "2"], "--passkey-rate"),
])
def test_bad_flags(tmp_path, capsys, argv, word):
    assert main(["train", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and word in err[0]


def test_refuses_a_non_empty_out(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    assert main(["train", "--out", str(tmp_path / "o")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"
