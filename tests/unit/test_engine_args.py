"""EngineArgs: the one options object. Every field has a `dsa` flag, CLI flags and keyword arguments build
the same object, values are validated once (naming the field and its flag), and it reaches the plan."""
from __future__ import annotations

import dataclasses

import pytest

from dsa.cli import build_parser
from dsa.engine.args import FLAGS, EngineArgs
from dsa.errors import InputError


def _cli(*words: str) -> EngineArgs:
    return EngineArgs.from_cli(build_parser().parse_args(["run", "--device", "cpu", *words]))


def _options(command: str) -> dict[str, list[str]]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a.option_strings for a in sub.choices[command]._actions}


def test_every_field_has_a_run_flag_and_every_flag_a_field():
    assert set(FLAGS) == set(EngineArgs.field_names())
    options = _options("run")
    for name, flags in FLAGS.items():
        assert options[name][:len(flags)] == list(flags), name  # (+ --no-indexer-fp8)
    assert options["tp"] == ["--tp", "--tensor-parallel-size"]
    assert options["max_seq_len"] == ["--max-seq-len", "--max-model-len"]
    plan = _options("plan")
    assert {"model", "device", "dtype", "kv_cache_dtype", "weights", "tp", "ep", "dp_attention", "nodes"} <= set(plan)


def test_cli_and_api_build_the_same_object():
    cli = _cli("--model", "tiny", "--dtype", "fp32", "--kv-cache-dtype", "fp8", "--max-model-len", "512",
               "--tensor-parallel-size", "1", "--block-size", "32", "--weights-seed", "7", "--no-indexer-fp8")
    api = EngineArgs.from_kwargs(model="tiny", device="cpu", dtype="fp32", kv_cache_dtype="fp8", max_seq_len=512,
                                 tp=1, page_size=32, weights_seed=7, indexer_fp8=False)
    assert cli == api
    assert _cli("--max-seq-len", "512").max_seq_len == _cli("--max-model-len", "512").max_seq_len == 512
    assert _cli() == EngineArgs(device="cpu")  # flags not given keep the defaults


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineArgs().dtype = "fp32"


@pytest.mark.parametrize("kwargs, words", [
    ({"max_seq_len": True}, ["max_seq_len (--max-seq-len)", "integer"]),
    ({"max_seq_len": 128.0}, ["max_seq_len", "integer"]),
    ({"tp": 0}, ["tp (--tp)", "[1, "]),
    ({"nodes": 100000}, ["nodes (--nodes)", "1024"]),
    ({"weights_seed": -1}, ["weights_seed (--weights-seed)"]),
    ({"weights_seed": 2**63}, ["weights_seed", "2**63"]),
    ({"dtype": "int8"}, ["dtype (--dtype)", "bf16"]),
    ({"kv_cache_dtype": "fp4"}, ["kv_cache_dtype", "fp8"]),
    ({"indexer_fp8": 1}, ["indexer_fp8", "True or False"]),
    ({"device": ""}, ["device", "profile"]),
    ({"model": 3}, ["model"]),
    ({"colour": "red"}, ["unknown", "colour"]),
])
def test_bad_values_name_the_field_and_flag(kwargs, words):
    with pytest.raises(InputError) as err:
        EngineArgs.from_kwargs(**kwargs)
    assert all(w in str(err.value) for w in words), err.value


def test_torch_dtype_is_accepted_by_name():
    import torch

    assert EngineArgs(dtype=torch.float32).dtype == "fp32"


def test_cli_flag_errors_exit_2_with_one_line(capsys):
    from dsa.cli import main

    assert main(["run", "--device", "cpu", "--weights-seed", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: weights_seed (--weights-seed)"), err


def test_resolve_applies_the_options_to_the_plan():
    setup = EngineArgs(dtype="fp32", page_size=16, kv_cache_dtype="fp8", max_seq_len=300).resolve()
    assert (setup.plan.dtype, setup.plan.page_size, setup.plan.kv_cache_dtype, setup.max_seq_len) == (
        "fp32", 16, "fp8", 300
    )
    assert setup.source.name == "mini" and setup.profile.name == "cpu"  # the built-in trained model
    with pytest.raises(InputError, match="max_position_embeddings"):
        EngineArgs(max_seq_len=10**7).resolve()


def test_plan_takes_the_same_flags(capsys):
    from dsa.cli import main

    assert main(["plan", "--device", "h200", "--model", "deepseek-v3.2-exp", "--tensor-parallel-size", "8",
                 "--dtype", "bf16", "--kv-cache-dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "tp 8" in out and "kv cache bf16" in out


def test_llm_from_engine_args():
    from dsa import LLM

    llm = LLM.from_engine_args(EngineArgs(dtype="fp32", max_seq_len=64))
    assert llm.max_seq_len == 64 and llm.plan.dtype == "fp32"
    out = llm.generate("hi", max_new_tokens=2, temperature=0)[0]
    assert len(out.token_ids) == 2
    with pytest.raises(InputError, match="EngineArgs"):
        LLM.from_engine_args({"dtype": "fp32"})
