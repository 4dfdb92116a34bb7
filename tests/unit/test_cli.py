"""The `dsa` command: happy paths on the built-in model and every user-error path (one line, exit 2)."""
import re
import subprocess
import sys

import pytest

from dsa.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, *words):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def test_run_streams_text_and_reports_throughput(capsys):
    code, out, err = run_cli(capsys, "run", "--device", "cpu", "--prompt", "abc", "--max-new-tokens", "5",
                             "--temperature", "0")
    assert code == 0, err
    text, stats = out.rstrip("\n").rsplit("\n", 1)
    assert text.startswith("abc")
    assert re.match(r"\[prompt: [1-4] tokens,", stats) and "tok/s | decode:" in stats and "stop:" in stats
    assert "indexer_topk=torch" in err


def test_greedy_run_is_reproducible_and_fp8_cache_runs(capsys):
    argv = ["run", "--device", "cpu", "--prompt", "hello", "--max-new-tokens", "6", "--temperature", "0"]
    _, first, _ = run_cli(capsys, *argv)
    _, second, _ = run_cli(capsys, *argv)
    assert first.splitlines()[0] == second.splitlines()[0]
    code, out, err = run_cli(capsys, *argv, "--kv-cache-dtype", "fp8")
    assert code == 0, err


def test_seeded_sampling_is_reproducible(capsys):
    argv = ["run", "--device", "cpu", "--prompt", "x", "--max-new-tokens", "8", "--seed", "5", "--temperature", "1"]
    _, a, _ = run_cli(capsys, *argv)
    _, b, _ = run_cli(capsys, *argv)
    assert a.splitlines()[0] == b.splitlines()[0]


def test_prompt_file_and_interactive(capsys, tmp_path, monkeypatch):
    f = tmp_path / "p.txt"
    f.write_text("from a file", encoding="utf-8")
    code, out, _ = run_cli(capsys, "run", "--device", "cpu", "--prompt-file", str(f), "--max-new-tokens", "2")
    assert code == 0 and out.startswith("from a file")
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\n\nsecond\nexit\nnever\n"))
    code, out, _ = run_cli(capsys, "run", "--device", "cpu", "--interactive", "--max-new-tokens", "2")
    assert code == 0
    assert out.count("[prompt:") == 2 and "never" not in out


def test_devices_lists_profiles_and_marks_this_machine(capsys):
    code, out, _ = run_cli(capsys, "devices")
    assert code == 0
    for name in ("cpu", "h100", "h200", "h20", "b200", "mi300x", "mi350x", "ascend-a2", "ascend-a3"):
        assert name in out
    cpu_line = [line for line in out.splitlines() if line.startswith("cpu ")][0]
    assert "matches this machine" in cpu_line


def test_plan_shows_providers_with_reasons(capsys):
    code, out, _ = run_cli(capsys, "plan", "--device", "h200", "--model", "deepseek-v3.2-exp")
    assert code == 0
    assert "sparse_mla_decode" in out
    assert "x flashmla: " in out  # rejected here (no CUDA / library), with its reason
    assert "verdict" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--device", "nosuch"], ["nosuch", "cpu"]),
        (["plan", "--device", "cpu", "--model", "nosuch-model"], ["nosuch-model", "tiny"]),
        (["run", "--device", "cpu", "--temperature", "-1"], ["temperature"]),
        (["run", "--device", "cpu", "--top-p", "0"], ["top_p"]),
        (["run", "--device", "cpu", "--top-p", "1.5"], ["top_p"]),
        (["run", "--device", "cpu", "--max-new-tokens", "0"], ["max_new_tokens"]),
        (["run", "--device", "cpu", "--prompt-file", "/nonexistent/prompt.txt"], ["/nonexistent/prompt.txt"]),
        (["run", "--device", "cpu", "--prompt", "x" * 40, "--max-seq-len", "16"], ["41 tokens", "16"]),
        (["plan", "--device", "cpu", "--tp", "3"], ["3", "heads"]),
        (["run", "--device", "h200"], ["h200", "cpu"]),
        (["run", "--device", "cpu", "--tp", "2"], ["2"]),
        (["run", "--device", "cpu", "--max-new-tokens", "abc"], ["max-new-tokens"]),
        (["run"], ["--device"]),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, argv, words):
    assert_user_error(capsys, argv, *words)


def test_bad_profile_file_names_file_and_field(capsys, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text((__import__("dsa.configs").configs.CONFIG_DIR / "devices" / "cpu.yaml").read_text()
                   .replace("name: cpu", "name: mine").replace("[torch]", "[torchh]", 1))
    assert_user_error(capsys, ["plan", "--device", str(bad)], "mine.yaml", "torchh")


def test_model_config_errors(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama"}')
    assert_user_error(capsys, ["plan", "--device", "cpu", "--model", str(cfg)], "llama")
    cfg.write_text("{not json")
    assert_user_error(capsys, ["plan", "--device", "cpu", "--model", str(cfg)], "JSON")


def test_console_script_exit_code_without_traceback():
    """The installed entry point behaves like main(): a real subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "dsa.cli", "run", "--device", "nosuch"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_generation_stops_exactly_at_the_context_limit(capsys):
    prompt = "x" * 60  # 61 tokens with bos
    code, out, err = run_cli(capsys, "run", "--device", "cpu", "--raw", "--prompt", prompt, "--max-seq-len", "70",
                             "--max-new-tokens", "50", "--temperature", "0")
    assert code == 0, err
    stats = out.strip().splitlines()[-1]
    assert "decode: 9 tokens" in stats and "stop: context" in stats, stats  # 61 + 9 = 70


def test_undecodable_prompt_bytes_are_replaced_not_a_crash(capsys):
    # what Python makes of the argv bytes b"a\xffb" under a UTF-8 locale
    code, out, err = run_cli(capsys, "run", "--device", "cpu", "--prompt", "a\udcffb", "--max-new-tokens", "2")
    assert code == 0, err
    assert out.startswith("a\ufffdb")


def test_interactive_rejects_a_long_line_without_echoing_it(capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("y" * 40 + "\nhi\n"))
    code, out, err = run_cli(capsys, "run", "--device", "cpu", "--interactive", "--max-seq-len", "16",
                             "--max-new-tokens", "2")
    assert code == 0
    assert "y" * 40 not in out and out.startswith("hi")
    assert "41 tokens" in err
