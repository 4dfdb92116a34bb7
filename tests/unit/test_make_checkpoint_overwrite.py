"""`dsa make-checkpoint --overwrite` replaces only a directory that is recognisably one of ours (a DeepSeek-V3.2
config.json plus nothing but checkpoint files); everything else is refused with one `error:` line, exit 2,
and the directory is left byte for byte as it was. An --out of ".", "", the current directory, one above it,
"/" or the home directory is refused before any work. Symlinks are never followed."""
import json
import os
from pathlib import Path

import pytest

from dsa.cli import main
from dsa.configs import CONFIG_DIR
from dsa.errors import OutputDirError
from dsa.io.checkpoint_writer import _remove_checkpoint_dir, write_checkpoint
from dsa.model.config import ModelConfig

TINY = CONFIG_DIR / "models" / "tiny" / "config.json"


def snapshot(root: Path) -> dict:
    """Every path under root (symlinks as their target, not followed) -> its bytes / link / 'dir'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            key = str(p.relative_to(root))
            out[key] = ("link", os.readlink(p)) if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return out


def cli_error(capsys, *argv) -> str:
    code = main(["make-checkpoint", "--config", "tiny", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def test_issue_repro_app_config_and_source_file_are_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = Path("p")
    p.mkdir()
    (p / "config.json").write_text('{"app": 1}\n')
    (p / "main.py").write_text("src\n")
    before = snapshot(tmp_path)
    err = cli_error(capsys, "--out", "p", "--overwrite")
    assert "--out p holds main.py, which is not a checkpoint file; refusing to overwrite" in err
    assert "remove it or choose another --out" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("config", [{"app": 1}, "not json", {**json.loads(TINY.read_text()), "model_type": "llama"}],
                         ids=["app-config", "bad-json", "other-model-type"])
def test_a_config_json_that_is_not_deepseek_v32_is_refused(tmp_path, capsys, config):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (out / "tokenizer.json").write_text("{}")
    before = snapshot(tmp_path)
    err = cli_error(capsys, "--out", str(out), "--overwrite")
    assert "not a DeepSeek-V3.2 config" in err and "refusing to overwrite" in err
    assert snapshot(tmp_path) == before


def test_checkpoint_files_without_config_are_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    before = snapshot(tmp_path)
    assert "no config.json" in cli_error(capsys, "--out", str(out), "--overwrite")
    assert snapshot(tmp_path) == before


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint("tiny", tmp_path / "ck", fp8=False, num_shards=1)


@pytest.mark.parametrize("extra", ["notes.txt", "subdir", "model.safetensors.bak", "symlink-shard", "symlink-dir"])
def test_a_checkpoint_with_anything_else_in_it_is_refused(tmp_path, capsys, checkpoint, extra):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"keep me")
    if extra == "subdir":
        (checkpoint / "subdir").mkdir()
        (checkpoint / "subdir" / "x").write_text("x")
        name = "subdir/, a directory"
    elif extra == "symlink-shard":  # a symlink, even one named like a shard, is never ours and never followed
        (checkpoint / "model-00002-of-00002.safetensors").symlink_to(outside / "precious.bin")
        name = "model-00002-of-00002.safetensors, a symbolic link"
    elif extra == "symlink-dir":
        (checkpoint / "data").symlink_to(outside, target_is_directory=True)
        name = "data, a symbolic link"
    else:
        (checkpoint / extra).write_text("mine")
        name = f"{extra}, which is not a checkpoint file"
    before = snapshot(tmp_path)
    err = cli_error(capsys, "--out", str(checkpoint), "--overwrite")
    assert f"holds {name}; refusing to overwrite" in err, err
    assert snapshot(tmp_path) == before


def test_a_symlinked_out_is_refused(tmp_path, capsys, checkpoint):
    link = tmp_path / "link"
    link.symlink_to(checkpoint, target_is_directory=True)
    before = snapshot(tmp_path)
    assert "is a symbolic link" in cli_error(capsys, "--out", str(link), "--overwrite")
    assert snapshot(tmp_path) == before


def test_our_checkpoint_is_still_replaced(tmp_path, capsys, checkpoint):
    (checkpoint / "generation_config.json").unlink()  # a subset of our files is still ours
    assert main(["make-checkpoint", "--config", "tiny", "--out", str(checkpoint), "--overwrite", "--fp8"]) == 0
    assert ModelConfig.from_file(checkpoint).fp8_weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("out", ["", ".", "./", "CWD", "..", "/", "HOME", "~"])
def test_dangerous_out_is_refused_up_front(tmp_path, capsys, monkeypatch, out):
    cwd = tmp_path / "work"
    cwd.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    out = {"CWD": str(cwd), "HOME": str(home)}.get(out, out)
    before = snapshot(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        err = cli_error(capsys, "--out", out, *overwrite)
        assert "give a new directory" in err, err
    assert snapshot(tmp_path) == before


def test_dangerous_out_is_refused_by_the_api_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in ("", " ", ".", Path("."), Path.cwd()):
        with pytest.raises(OutputDirError, match="give a new directory"):
            write_checkpoint("tiny", out, fp8=False, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_removal_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("keep")
    d = tmp_path / "d"
    d.mkdir()
    (d / "tokenizer.json").write_text("{}")
    (d / "config.json").symlink_to(outside / "config.json")
    assert not _remove_checkpoint_dir(d)  # the link is not ours: the directory stays
    assert [p.name for p in d.iterdir()] == ["config.json"] and (d / "config.json").is_symlink()
    assert (outside / "config.json").read_text() == "keep"
