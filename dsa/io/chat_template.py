"""Render a checkpoint's Jinja chat template in jinja2's sandbox.

The template comes from a downloaded directory, so it runs in `ImmutableSandboxedEnvironment`: no
attribute access to Python internals, no mutation of the messages. No Python code shipped with a
checkpoint is ever executed. The environment mirrors what HF chat templates expect: trim/lstrip blocks,
`{% break %}` / `{% continue %}`, a `raise_exception(msg)` global, `strftime_now(fmt)` and a
non-ASCII-preserving `tojson`.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

from dsa.errors import InputError, TokenizerError


def _raise(message: str):
    raise InputError(f"the chat template rejected the conversation: {message}")


def _tojson(value: Any, indent=None, ensure_ascii: bool = False, **kwargs) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, **kwargs)


@lru_cache(maxsize=8)
def _compile(template: str, source: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise TokenizerError(f"{source}: the chat template is not valid Jinja ({err.message}, line {err.lineno}); "
                             "fix it or use --raw") from None


def render_chat_template(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = True,
                         source: str = "chat template", **variables: Any) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}]); `variables` (bos_token, eos_token,
    ...) are visible to the template."""
    import jinja2

    if not isinstance(messages, (list, tuple)) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages):
        raise InputError("chat messages must be a list of {'role': str, 'content': str} dicts")
    compiled = _compile(template, source)
    try:
        return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                               **variables)
    except InputError:
        raise
    except jinja2.exceptions.SecurityError as err:
        raise TokenizerError(f"{source}: the chat template tried an unsafe operation ({err}); use --raw") from None
    except Exception as err:  # the template is a checkpoint's code: whatever it raises is its failure
        raise TokenizerError(f"{source}: the chat template failed to render ({type(err).__name__}: {err}); "
                             "use --raw") from None
