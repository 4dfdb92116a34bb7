"""Properties of the remaining parsers and validators: `dsa` argument sets (through the real entry point),
EngineArgs keyword arguments, sampling parameters, and chat messages rendered by a checkpoint's template.
Each input is either accepted or refused with our error (exit 2 and one `error:` line for the CLI,
InputError / TokenizerError for the API) - never another exception, never a hang."""
from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dsa.cli import main
from dsa.engine.args import EngineArgs
from dsa.engine.sampling import SamplingParams, sample
from dsa.errors import DsaError, InputError, TokenizerError
from dsa.io.chat_template import render_chat_template
from dsa.io.tokenizer_writer import CHAT_TEMPLATE

ANY = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))

# `dsa plan` parses every engine flag and plans without building the model, so a whole argument set is cheap.
PLAN_FLAGS = ["--device", "--model", "--dtype", "--kv-cache-dtype", "--weights", "--page-size", "--block-size",
              "--tp", "--tensor-parallel-size", "--ep", "--dp", "--nodes", "--context", "--batch"]
VALUES = st.one_of(st.sampled_from(["cpu", "h200", "tiny", "bf16", "fp8", "fp32", "fp16", "1", "2", "0", "-1",
                                    "64", "1e3", "1.5", "nan", "", "nosuch", "99999999999999999999", "--tp"]),
                   st.text(max_size=8))


@given(st.lists(st.tuples(st.sampled_from(PLAN_FLAGS), VALUES), max_size=5))
def test_plan_argument_sets(pairs):
    argv = ["plan"] + [w for pair in pairs for w in pair]
    out_buf, err_buf = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
        code = main(argv)
    out, err = out_buf.getvalue(), err_buf.getvalue()
    assert "Traceback" not in out + err
    if code == 0:
        assert "providers" in out and not err.strip()
    else:
        assert code == 2, (argv, code, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)


@given(st.dictionaries(st.sampled_from(EngineArgs.field_names() + ("colour",)), ANY, max_size=4))
def test_engine_args_keywords(kwargs):
    try:
        args = EngineArgs.from_kwargs(**kwargs)
    except InputError as err:
        assert str(err)
        return
    assert isinstance(args, EngineArgs)


@given(st.fixed_dictionaries({}, optional={"temperature": ANY, "top_p": ANY, "max_new_tokens": ANY, "seed": ANY}))
def test_sampling_params_and_sample(kwargs):
    try:
        params = SamplingParams(**kwargs)
    except InputError as err:
        assert any(name in str(err) for name in kwargs), err
        return
    assert params.temperature >= 0 and 0 < params.top_p <= 1 and params.max_new_tokens >= 1
    logits = torch.tensor([0.5, -1.0, 3.0, float("-inf")])
    g = torch.Generator().manual_seed(params.seed if params.seed is not None else 0)
    token = sample(logits, params, g)
    assert 0 <= token < 3  # never the -inf token
    assert math.isfinite(float(logits[token]))


MESSAGE = st.one_of(ANY, st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "assistant", "system",
                                                                                    "tool"]), ANY),
                                                 "content": st.one_of(st.text(max_size=20), ANY)}))


@given(st.one_of(ANY, st.lists(MESSAGE, max_size=4)), st.booleans())
def test_chat_messages(messages, add_generation_prompt):
    try:
        text = render_chat_template(CHAT_TEMPLATE, messages, add_generation_prompt=add_generation_prompt,
                                    bos_token="<bos>", eos_token="<eos>")
    except (InputError, TokenizerError) as err:
        assert str(err)
        return
    assert isinstance(text, str)


def test_template_cannot_reach_python_internals():
    with pytest.raises(TokenizerError, match="unsafe"):
        render_chat_template("{{ messages[0].content.__class__.__mro__ }}", [{"role": "user", "content": "x"}])


@pytest.mark.parametrize("template", ["{% for %}", "{{ 1 / 0 }}",
                                      "{{ raise_exception('no') }}", "{{ messages.append(1) }}",
                                      "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"])
def test_hostile_templates_are_our_errors(template):
    with pytest.raises(DsaError):
        render_chat_template(template, [{"role": "user", "content": "x"}])
