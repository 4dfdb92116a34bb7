"""`from dsa import LLM`: generate / logits on a tiny checkpoint, the same answers as `dsa run`, and every
invalid argument an InputError raised before any work."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dsa import LLM
from dsa.cli import main, printable
from dsa.errors import DsaError, InputError
from tests.unit.ckpt_fixtures import make_checkpoint

PROMPT = "Sparse attention reads"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("llm") / "fp8", fp8=True, seed=7)


@pytest.fixture(scope="module")
def llm(ckpt):
    return LLM(model=str(ckpt), device="cpu")


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_runtime_stays_light():
    code = "import sys, dsa; assert 'torch' not in sys.modules; from dsa import LLM; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_generate_returns_one_result_per_prompt(llm):
    one = llm.generate(PROMPT, max_new_tokens=4, temperature=0)
    many = llm.generate([PROMPT, "second"], max_new_tokens=4, temperature=0)
    assert len(one) == 1 and len(many) == 2
    assert many[0].token_ids == one[0].token_ids and many[0].text == one[0].text
    r = many[1]
    assert r.prompt == "second" and len(r.token_ids) <= 4 and r.text == llm.tokenizer.decode(r.token_ids)
    assert r.stats.prompt_tokens > 0 and r.stats.stop_reason in ("eos", "length")


@pytest.mark.parametrize("mode", ["chat", "raw"])
def test_greedy_generate_equals_cli(llm, ckpt, capsys, mode):
    flags = ["--raw"] if mode == "raw" else []
    code, out, err = cli(capsys, "run", "--device", "cpu", "--model", str(ckpt), "--prompt", PROMPT,
                         "--max-new-tokens", "8", "--temperature", "0", *flags)
    assert code == 0, err
    text, stats = out.rstrip("\n").rsplit("\n", 1)
    assert stats.startswith("[prompt:")
    result = llm.generate(PROMPT, max_new_tokens=8, temperature=0, chat=mode == "chat")[0]
    assert text == (PROMPT if mode == "raw" else "") + printable(result.text)
    assert f"decode: {len(result.token_ids)} tokens" in stats


def test_chat_template_is_the_default(llm):
    assert llm.tokenizer.chat_template is not None
    chat = llm.generate(PROMPT, max_new_tokens=1, temperature=0)[0]
    raw = llm.generate(PROMPT, max_new_tokens=1, temperature=0, chat=False)[0]
    assert chat.stats.prompt_tokens > raw.stats.prompt_tokens


def test_logits_shape_dtype_and_first_greedy_token(llm):
    ids = llm.tokenizer.encode(PROMPT)
    logits = llm.logits(ids)
    assert logits.shape == (len(ids), llm.config.vocab_size) and logits.dtype == torch.float32
    assert torch.equal(llm.logits(torch.tensor(ids)), logits)  # fresh cache each call: same result
    first = llm.generate(PROMPT, max_new_tokens=1, temperature=0, chat=False)[0]
    assert first.token_ids == [int(logits[-1].argmax())] or first.stats.stop_reason == "eos"


def test_seeded_sampling_is_reproducible(llm):
    a = llm.generate(PROMPT, max_new_tokens=6, temperature=1.0, top_p=0.9, seed=11)[0]
    b = llm.generate(PROMPT, max_new_tokens=6, temperature=1.0, top_p=0.9, seed=11)[0]
    assert a.token_ids == b.token_ids


def test_overrides(ckpt):
    llm = LLM(model=str(ckpt), dtype="fp32", page_size=4, indexer_fp8=False, weights="fp8", max_seq_len=64,
              kv_cache_dtype="fp8")
    assert (llm.plan.dtype, llm.plan.page_size, llm.plan.weights, llm.plan.kv_cache_dtype) == ("fp32", 4, "fp8", "fp8")
    assert llm.max_seq_len == 64 and llm.model.indexer_fp8 is False
    assert llm.model.model.layers[0].self_attn.q_a_proj.weight.dtype == torch.float8_e4m3fn
    assert llm.logits([0, 5, 9, 11, 200]).shape == (5, llm.config.vocab_size)
    assert len(llm.generate("x", max_new_tokens=3, temperature=0)[0].token_ids) <= 3


def test_the_default_model_is_the_trained_mini_checkpoint():
    llm = LLM(dtype=torch.float32)
    assert llm.source.name == "mini" and not llm.source.random_weights
    r = llm.generate("def ", max_new_tokens=4, temperature=0)[0]
    assert 1 <= len(r.token_ids) <= 4


def test_builtin_model_with_random_weights():
    llm = LLM(model="tiny", weights_seed=2, dtype=torch.float32)
    r = llm.generate("abc", max_new_tokens=3, temperature=0)[0]
    assert llm.source.random_weights and len(r.token_ids) <= 3
    with pytest.raises(InputError, match="no chat template"):
        llm.generate("abc", chat=True)


# ---- invalid arguments: InputError before any work -----------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"temperature": -1}, ["temperature"]),
    ({"temperature": float("nan")}, ["temperature"]),
    ({"top_p": 0}, ["top_p"]),
    ({"top_p": 1.5}, ["top_p"]),
    ({"max_new_tokens": 0}, ["max_new_tokens"]),
    ({"max_new_tokens": 2.5}, ["max_new_tokens"]),
    ({"seed": "x"}, ["seed"]),
    ({"chat": "yes"}, ["chat"]),
])
def test_invalid_generate_arguments(llm, monkeypatch, kwargs, words):
    monkeypatch.setattr(llm.engine, "generate", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(InputError) as err:
        llm.generate(PROMPT, **kwargs)
    assert all(w in str(err.value) for w in words), err.value


@pytest.mark.parametrize("prompts", [[], [PROMPT, 3], None, b"bytes"])
def test_invalid_prompts(llm, prompts):
    with pytest.raises(InputError):
        llm.generate(prompts, max_new_tokens=1)


def test_prompt_longer_than_context_generates_nothing(ckpt, monkeypatch):
    llm = LLM(model=str(ckpt), max_seq_len=16)
    monkeypatch.setattr(llm.engine, "generate", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(InputError, match=r"tokens but the context holds 16"):
        llm.generate(["short", "x " * 40], max_new_tokens=2)


@pytest.mark.parametrize("kwargs, words", [
    ({"dtype": "int8"}, ["dtype", "int8"]),
    ({"kv_cache_dtype": "fp4"}, ["kv_cache_dtype"]),
    ({"indexer_fp8": "no"}, ["indexer_fp8"]),
    ({"max_seq_len": 1}, ["max_seq_len"]),
    ({"max_seq_len": 10**9}, ["max_seq_len", "4096"]),
    ({"page_size": 0}, ["page_size"]),
    ({"weights": "int4"}, ["weights"]),
    ({"tp": 2}, ["one device", "tp=2"]),
    ({"nosuch": 1}, ["unknown", "nosuch"]),
    ({"weights_seed": -1}, ["weights_seed"]),
    ({"page_size": 4.0}, ["page_size", "integer"]),
])
def test_invalid_constructor_arguments_fail_before_loading(ckpt, monkeypatch, kwargs, words):
    import dsa.io.model_source

    monkeypatch.setattr(dsa.io.model_source, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(DsaError) as err:
        LLM(model=str(ckpt), **kwargs)
    assert all(w in str(err.value) for w in words), err.value


@pytest.mark.parametrize("ids", [[], [0, 10**6], [0, -1], [0.5], "abc", torch.tensor([[1, 2]]), list(range(20))])
def test_invalid_token_ids(ckpt, ids):
    llm = LLM(model=str(ckpt), max_seq_len=16)
    with pytest.raises(InputError):
        llm.logits(ids)


# ---- the same bad inputs through the CLI, with a checkpoint -------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--temperature", "-1"], ["temperature"]),
    (["--top-p", "1.5"], ["top_p"]),
    (["--max-new-tokens", "0"], ["max_new_tokens"]),
    (["--prompt", "x " * 40, "--max-seq-len", "16"], ["context holds 16"]),
    (["--chat", "--raw"], ["--raw", "--chat"]),
])
def test_cli_bad_inputs_with_a_checkpoint(ckpt, capsys, extra, words):
    argv = ["run", "--device", "cpu", "--model", str(ckpt), *extra]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == "", (code, out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and all(w in err for w in words), err


def test_cli_chat_without_template_is_an_error(capsys):
    code, out, err = cli(capsys, "run", "--device", "cpu", "--prompt", "x", "--chat")
    assert code == 2 and out == "" and "no chat template" in err and "--raw" in err
