"""`dsa export onnx` and `dsa run --onnx` on the built-in trained model: the exported graph generates the
same greedy text as the torch path (fp32), and every bad input is one error line with exit 2, nothing written."""
from __future__ import annotations

import pytest

pytest.importorskip("onnx", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install -e '.[onnx]') is not installed")

from dsa.cli import main  # noqa: E402

GREEDY = ("--temperature", "0", "--max-new-tokens", "48", "--prompt", "class Queue:\n    def ")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "mini-onnx"
    assert main(["export", "onnx", "--out", str(out), "--max-seq-len", "512"]) == 0
    return out


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_export_writes_the_graph_its_data_and_the_tokenizer(export_dir, capsys):
    names = {p.name for p in export_dir.iterdir()}
    assert {"model.onnx", "model.onnx.data", "onnx.json", "tokenizer.json", "config.json"} <= names
    assert not [p for p in export_dir.parent.iterdir() if ".partial-" in p.name]  # renamed into place


def test_run_onnx_streams_the_torch_paths_greedy_text(export_dir, capsys):
    assert main(["run", "--device", "cpu", "--dtype", "fp32", *GREEDY]) == 0
    want = capsys.readouterr().out.splitlines()
    assert main(["run", "--onnx", str(export_dir), *GREEDY]) == 0
    got = capsys.readouterr()
    lines = got.out.splitlines()
    assert lines[:-1] == want[:-1] and len("".join(lines[:-1])) > 60  # the text; the last line is the stats
    assert lines[-1].startswith("[prompt: ") and "decode: 48 tokens" in lines[-1] and "stop: length" in lines[-1]
    assert "onnxruntime" in got.err


def test_overwrite_refuses_an_export_holding_a_users_file(export_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(export_dir, out)
    (out / "notes.txt").write_text("mine")
    assert main(["export", "onnx", "--out", str(out), "--overwrite"]) == 2
    assert "notes.txt" in _one_error(capsys) and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, words", [
    (["run", "--onnx", "{export}", "--tp", "2"], ["--tp", "does not apply to --onnx"]),
    (["run", "--onnx", "{export}", "--model", "tiny"], ["--model", "export again"]),
    (["run", "--onnx", "{export}", "--device", "h200"], ["--device h200"]),
    (["run", "--onnx", "{export}", "--interactive"], ["--interactive"]),
    (["run", "--onnx", "{tmp}"], ["onnx.json"]),
    (["run", "--onnx", "{export}", "--prompt", "a" * 3000], ["the export holds 512"]),
    (["run", "--prompt", "x"], ["--device"]),
    (["export", "onnx", "--out", "{tmp}/o", "--kv-cache-dtype", "fp8"], ["--kv-cache-dtype bf16"]),
    (["export", "onnx", "--out", "{tmp}/o", "--tp", "2"], ["--tp"]),
    (["export", "onnx", "--out", "{tmp}/o", "--dtype", "bf16"], ["--dtype fp32"]),
    (["export", "onnx", "--out", "{tmp}/o", "--opset", "12"], ["--opset"]),
    (["export", "onnx", "--out", "{tmp}/o", "--model", "nosuch"], ["nosuch"]),
    (["export", "onnx", "--out", "{export}"], ["not empty", "--overwrite"]),
    (["export", "onnx", "--out", "{tmp}", "--overwrite"], ["not an ONNX export of ours"]),
])
def test_bad_input_is_one_error_line(export_dir, tmp_path, capsys, argv, words):
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.replace("{export}", str(export_dir)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    line = _one_error(capsys)
    for w in words:
        assert w in line, (w, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "notes.txt").read_text() == "mine"
