"""Number checks shared by every file parser (config.json, device profiles, generation_config.json,
safetensors index and headers): integers that are integers, floats that are finite and in range.

Each check returns None when the value is fine, else the problem as a phrase ("must be an integer >= 1,
got 1.5"); the caller prefixes the file and the field and raises its own DsaError subclass:

    problem = int_problem(value, lo=1, hi=MAX_DIM)
    if problem:
        raise ConfigError(f"{source}: field hidden_size {problem}")

`read_json` is the one JSON reader of those parsers: besides malformed JSON it turns the other ways
`json.loads` fails on hostile input (an integer beyond Python's 4300-digit limit, nesting deeper than
the recursion limit) into the caller's error, and NaN / Infinity literals into an error as well.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

MAX_INT = 1 << 62  # larger integers never describe a real model, device or file (and would slow the arithmetic)


MAX_SEED = 1 << 63  # seeds (sampling, random weights) are integers in [0, 2**63): what torch.Generator takes


def is_int(value: Any) -> bool:
    """A true integer: not a bool, not a float such as 128.0."""
    return isinstance(value, int) and not isinstance(value, bool)


def seed_problem(value: Any) -> Optional[str]:
    """None for a valid seed, else what is wrong with it ("must be ..."): the one seed rule of the CLI and API."""
    if is_int(value) and 0 <= value < MAX_SEED:
        return None
    return f"must be an integer in [0, 2**63), got {value!r}"


def int_problem(value: Any, lo: Optional[int] = None, hi: Optional[int] = MAX_INT) -> Optional[str]:
    """None if `value` is an integer in [lo, hi], else what is wrong with it."""
    if not is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"must be {_int_range(lo, hi)}, got {show(value)}"
    return None


def float_problem(value: Any, lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
                  hi_open: bool = False) -> Optional[str]:
    """None if `value` is a finite number (int or float, not bool) in the range, else what is wrong with it.

    `lo_open` / `hi_open`: the bound itself is excluded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number{_float_range(lo, hi, lo_open, hi_open)}, got {show(value)}"
    try:
        x = float(value)
    except OverflowError:  # an int too large for a float
        x = math.inf if value > 0 else -math.inf
    if not math.isfinite(x):
        return f"must be a finite number{_float_range(lo, hi, lo_open, hi_open)}, got {show(value)}"
    if lo is not None and (x < lo or (lo_open and x == lo)) or hi is not None and (x > hi or (hi_open and x == hi)):
        return f"must be a number{_float_range(lo, hi, lo_open, hi_open)}, got {show(value)}"
    return None


def read_json(text: str | bytes, fail: Callable[[str], Exception]) -> Any:
    """json.loads, with every failure (bad JSON, bad UTF-8, a 5000-digit integer, 100000 nested lists, a NaN or
    Infinity literal) raised as `fail(reason)`."""
    def no_constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise fail("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError, as is the int digit limit
        raise fail(str(err).splitlines()[0][:200] if str(err) else type(err).__name__) from None


def read_json_object(path, error: Callable[[str], Exception], fix: str) -> dict:
    """The JSON object in file `path`; an unreadable file, bad JSON (as read_json) or another JSON value is
    error(f"{path}: <problem>; {fix}")."""
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot read it ({err.strerror or err}); {fix}") from None
    data = read_json(text, lambda why: error(f"{path}: not valid JSON ({why}); {fix}"))
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object; {fix}")
    return data


def _int_range(lo: Optional[int], hi: Optional[int]) -> str:
    if lo == 1 and (hi is None or hi == MAX_INT):
        return "a positive integer"
    if lo is not None and hi is not None and hi != MAX_INT:
        return f"an integer in [{lo}, {hi}]"
    if lo is not None:
        return f"an integer >= {lo}"
    if hi is not None and hi != MAX_INT:
        return f"an integer <= {hi}"
    return "an integer"


def _float_range(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


def show(value: Any) -> str:
    """repr, cut short: a fuzzed 10 MB string must not become a 10 MB error message."""
    if is_int(value) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["MAX_INT", "is_int", "int_problem", "float_problem", "read_json", "read_json_object", "show", "MAX_SEED",
           "seed_problem"]
