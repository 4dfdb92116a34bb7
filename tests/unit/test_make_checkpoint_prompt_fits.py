"""`check_prompt_fits` (dsa/engine/engine.py), tested here with the make-checkpoint reliability fixes: a prompt
must be shorter than the context by at least 1; a prompt that fills it exactly says so, and raising
--max-seq-len is suggested only when it is below the model's max_position_embeddings."""
import pytest

from dsa.cli import main
from dsa.engine.engine import check_prompt_fits
from dsa.errors import InputError


def message(*args) -> str:
    with pytest.raises(InputError) as info:
        check_prompt_fits(*args)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_shorter_prompts_fit():
    check_prompt_fits(1, 2)
    check_prompt_fits(15, 16, 16)


def test_exact_fill_says_no_room_for_a_generated_token():
    text = message(2, 2)
    assert "fills the context of 2 exactly" in text and "no room for a generated token" in text
    assert "shorter than the context by at least 1" in text
    assert "but the context holds" not in text


def test_no_raise_hint_at_the_models_maximum():
    text = message(2, 2, 2)
    assert "already at the model's limit" in text and "raise" not in text
    text = message(40, 16, 16)
    assert "context holds 16" in text and "raise" not in text


def test_raise_hint_below_the_maximum():
    text = message(16, 16, 4096)
    assert "raise --max-seq-len to at least 17" in text and "4096" in text
    text = message(5000, 16, 4096)  # raising cannot help: the prompt is beyond the model's longest context
    assert "raise" not in text and "cannot hold it" in text


def test_backward_compatible_without_the_maximum():
    text = message(41, 16)
    assert "41 tokens but the context holds 16" in text and "--max-seq-len" in text


def test_cli_exact_fill_is_one_error_line(capsys):
    # the built-in tokenizer: bos + one byte per character, so "x" * 15 is 16 tokens
    assert main(["run", "--device", "cpu", "--raw", "--prompt", "x" * 15, "--max-seq-len", "16"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "no room for a generated token" in err and "Traceback" not in err
