"""What a provider needs of a plan's target, declared once; the plan's rejection reasons come from it.

Every provider registers with a declaration (`dsa.hal.registry.register(..., requires=Requires(...))`):

    Requires(modules=("flash_mla",), platforms=("cuda",), archs=("sm90", "sm100"),
             kv_cache_dtypes=("fp8",), page_sizes=(64,), load=vendor.importer)

A field left at None accepts anything: `Requires()` runs on every target (the torch backend).
`reason(target)` checks the fields in this order and returns the first mismatch as one sentence that
names the field, what the provider takes and what the plan has (None: the target suits it):

    unavailable       a placeholder with nothing to run: its text is the reason
    modules           "flash_mla not importable: ModuleNotFoundError: No module named 'flash_mla'"
    platforms         "needs platform cuda (this plan: rocm)"
    archs             "needs arch sm90 or sm100 (this plan: sm80)"
    fp8_formats       "needs fp8 format e4m3fn (this plan: e4m3fnuz)"
    kv_cache_dtypes   "needs kv cache dtype fp8 (this plan: bf16)"
    page_sizes        "needs page size 64 (this plan: 16)"
    max_index_heads   "needs at most 64 index heads (this plan: 128)"

archs: exact names ("sm90"), "<family><n>+" for that number or newer ("sm89+": sm89, sm90, sm100,
sm120) or shell patterns ("gfx11*"); a mismatch lists those of the target's family (sm, gfx, ascend).
fp8_formats / kv_cache_dtypes: the values taken, or a mapping value -> archs where a value needs
particular archs (None: every arch the declaration takes):

    kv_cache_dtypes={"bf16": None, "fp8": ("sm89+",)}
        -> "kv cache dtype fp8 needs arch sm89 or newer (this plan: sm80, which takes bf16)"

page_sizes: the sizes, or a range ("range(16, 1025, 16)": "a multiple of 16 up to 1024").
modules: vendor modules that must import, each a name or a tuple of alternative names (the first that
imports serves); `load` imports them (a backend passes its vendor seam, so tests can substitute
stand-ins; default importlib.import_module). A declaration is checked when it is made: a field of the
wrong type, an unknown platform / format / dtype or an arch of another platform is a ValueError.
"""
from __future__ import annotations

import fnmatch
import importlib
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

from dsa.hal.target import Target

PLATFORMS = ("cpu", "cuda", "rocm", "npu")
FP8_FORMATS = ("e4m3fn", "e4m3fnuz", "none")
KV_CACHE_DTYPES = ("bf16", "fp8")
ARCH_FAMILY = {"cpu": "cpu", "cuda": "sm", "rocm": "gfx", "npu": "ascend"}  # arch-name prefix of each platform

_FAMILY = re.compile(r"[a-z]*")
_AT_LEAST = re.compile(r"([a-z]+)(\d+)\+")  # "sm89+"
_NUMBERED = re.compile(r"([a-z]+)(\d+)")  # "sm100"

Archs = Optional[tuple[str, ...]]
Values = Optional[tuple]  # ("bf16", "fp8"), or (("bf16", None), ("fp8", ("sm89+",))) for a mapping


def _either(items) -> str:
    """Joined as "a", "a or b" or "a, b or c"."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _family(arch: str) -> str:
    return _FAMILY.match(arch).group(0)


def arch_matches(arch: str, pattern: str) -> bool:
    """Whether `arch` ("sm90") is one `pattern` names: exact, "sm89+" (this number or newer) or "gfx11*"."""
    at_least = _AT_LEAST.fullmatch(pattern)
    if at_least:
        numbered = _NUMBERED.fullmatch(arch)
        if not numbered or numbered.group(1) != at_least.group(1):
            return False
        return int(numbered.group(2)) >= int(at_least.group(2))
    return fnmatch.fnmatchcase(arch, pattern)


def _show_archs(patterns: tuple[str, ...], arch: str) -> str:
    """The patterns of `arch`'s family (all when none is), "sm89+" written "sm89 or newer"."""
    same = [p for p in patterns if _family(p) == _family(arch)] or list(patterns)
    return _either(f"{p[:-1]} or newer" if _AT_LEAST.fullmatch(p) else p for p in same)


def _show_pages(pages) -> str:
    if isinstance(pages, range):
        last = pages[-1]
        if pages.step == 1:
            return f"from {pages.start} to {last}"
        if pages.start == pages.step:
            return f"a multiple of {pages.step} up to {last}"
        return f"from {pages.start} to {last} in steps of {pages.step}"
    return _either(pages)


# ---------------------------------------------------------------- validation (at declaration time)


def _bad(name: str, why: str) -> ValueError:
    return ValueError(f"Requires.{name}: {why}")


def _names(name: str, value, known: Optional[tuple[str, ...]] = None) -> tuple[str, ...]:
    """A str or an iterable of non-empty str -> tuple (a str alone is one name); checked against `known`."""
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, Mapping) or not hasattr(value, "__iter__"):
        raise _bad(name, f"expected a name or a tuple of names, got {value!r}")
    names = tuple(value)
    if not names:
        raise _bad(name, "empty (leave it None to accept anything)")
    for n in names:
        if not isinstance(n, str) or not n:
            raise _bad(name, f"expected non-empty strings, got {n!r}")
        if known is not None and n not in known:
            raise _bad(name, f"unknown value {n!r} (known: {', '.join(known)})")
    return names


def _check_archs(name: str, archs: tuple[str, ...], platforms: Optional[tuple[str, ...]]) -> None:
    for a in archs:
        if a.endswith("+") and not _AT_LEAST.fullmatch(a):
            raise _bad(name, f"{a!r}: 'or newer' is written <family><number>+, e.g. 'sm89+'")
        if platforms is not None and _family(a) and _family(a) not in {ARCH_FAMILY[p] for p in platforms}:
            raise _bad(name, f"arch {a!r} is not an arch of platform {_either(platforms)}")


def _values(name: str, value, known: tuple[str, ...], platforms) -> tuple:
    """Allowed values, or a mapping value -> archs (None = any), normalised to a tuple of (value, archs)
    (which is taken again: dataclasses.replace passes the normalised form)."""
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        value = dict(value)
    if not isinstance(value, Mapping):
        return _names(name, value, known)
    if not value:
        raise _bad(name, "empty (leave it None to accept anything)")
    pairs = []
    for v, archs in value.items():
        _names(name, v, known)
        if archs is not None:
            archs = _names(f"{name}[{v!r}]", archs)
            _check_archs(f"{name}[{v!r}]", archs, platforms)
        pairs.append((v, archs))
    return tuple(pairs)


def _pairs(values: tuple) -> list[tuple[str, Archs]]:
    return [v if isinstance(v, tuple) else (v, None) for v in values]


def _positive(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0


def _default_load(module: str):
    return importlib.import_module(module)


@dataclass(frozen=True)
class Requires:
    """What one provider needs of the target (see the module docstring); None fields accept anything."""

    unavailable: Optional[str] = None  # a placeholder that never runs, saying why (no other field then)
    modules: tuple[Union[str, tuple[str, ...]], ...] = ()
    platforms: Optional[tuple[str, ...]] = None
    archs: Optional[tuple[str, ...]] = None
    fp8_formats: Values = None
    kv_cache_dtypes: Values = None
    page_sizes: Union[None, tuple[int, ...], range] = None
    max_index_heads: Optional[int] = None
    load: Callable[[str], object] = field(default=_default_load, compare=False, repr=False)

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.unavailable is not None:
            if not isinstance(self.unavailable, str) or not self.unavailable.strip():
                raise _bad("unavailable", f"expected the reason as a non-empty string, got {self.unavailable!r}")
            others = [n for n in ("platforms", "archs", "fp8_formats", "kv_cache_dtypes", "page_sizes",
                                  "max_index_heads") if getattr(self, n) is not None]
            if self.modules or others:
                got = others or ["modules"]
                raise _bad("unavailable", f"a provider that never runs takes no other field, got {got}")
        modules = (self.modules,) if isinstance(self.modules, str) else self.modules
        if not isinstance(modules, (tuple, list)):
            raise _bad("modules", f"expected a tuple of module names, got {self.modules!r}")
        put("modules", tuple(m if isinstance(m, str) and m else _names("modules", m) for m in modules))
        if self.platforms is not None:
            put("platforms", _names("platforms", self.platforms, PLATFORMS))
        if self.archs is not None:
            put("archs", _names("archs", self.archs))
            _check_archs("archs", self.archs, self.platforms)
        if self.fp8_formats is not None:
            put("fp8_formats", _values("fp8_formats", self.fp8_formats, FP8_FORMATS, self.platforms))
        if self.kv_cache_dtypes is not None:
            put("kv_cache_dtypes", _values("kv_cache_dtypes", self.kv_cache_dtypes, KV_CACHE_DTYPES, self.platforms))
        if self.page_sizes is not None:
            pages = self.page_sizes
            if isinstance(pages, int) and not isinstance(pages, bool):
                pages = (pages,)
            if not isinstance(pages, range):
                pages = tuple(pages) if isinstance(pages, (tuple, list)) else None
            if not pages or (isinstance(pages, range) and pages.step <= 0) or not all(map(_positive, pages)):
                raise _bad("page_sizes", f"expected positive token counts (tuple or range), got {self.page_sizes!r}")
            put("page_sizes", pages)
        if self.max_index_heads is not None and not _positive(self.max_index_heads):
            raise _bad("max_index_heads", f"expected a positive head count, got {self.max_index_heads!r}")
        if not callable(self.load):
            raise _bad("load", f"expected a function module name -> module, got {self.load!r}")

    # ------------------------------------------------------------ reasons

    def modules_reason(self) -> Optional[str]:
        """None when every declared module imports here, else "<module> not importable: <error>"."""
        for entry in self.modules:
            names = (entry,) if isinstance(entry, str) else entry
            errors = []
            for name in names:
                try:
                    self.load(name)
                    break
                except Exception as err:  # ImportError, or a vendor library that needs a driver to import
                    errors.append(f"{type(err).__name__}: {err}")
            else:
                if len(names) == 1:
                    return f"{names[0]} not importable: {errors[0]}"
                return f"{names[0]} not importable ({'; '.join(f'{n}: {e}' for n, e in zip(names, errors))})"
        return None

    def call_reason(self) -> Optional[str]:
        """What a call still needs here (checked per call, before the arguments): a placeholder's reason,
        or a declared module that does not import."""
        return self.unavailable or self.modules_reason()

    def reason(self, target: Target) -> Optional[str]:
        """None when `target` suits this provider, else the first mismatch (order: module docstring)."""
        why = self.call_reason()
        if why:
            return why
        if self.platforms is not None and target.platform not in self.platforms:
            return f"needs platform {_either(self.platforms)} (this plan: {target.platform})"
        if self.archs is not None and not any(arch_matches(target.arch, a) for a in self.archs):
            return f"needs arch {_show_archs(self.archs, target.arch)} (this plan: {target.arch})"
        why = (self._value_reason("fp8 format", self.fp8_formats, target.fp8_format, target.arch)
               or self._value_reason("kv cache dtype", self.kv_cache_dtypes, target.kv_cache_dtype, target.arch))
        if why:
            return why
        if self.page_sizes is not None and target.page_size not in self.page_sizes:
            return f"needs page size {_show_pages(self.page_sizes)} (this plan: {target.page_size})"
        if self.max_index_heads is not None and target.index_n_heads > self.max_index_heads:
            return f"needs at most {self.max_index_heads} index heads (this plan: {target.index_n_heads})"
        return None

    @staticmethod
    def _value_reason(what: str, values: Values, actual: str, arch: str) -> Optional[str]:
        if values is None:
            return None
        pairs = _pairs(values)
        here = [v for v, archs in pairs if archs is None or any(arch_matches(arch, a) for a in archs)]
        if actual in here:
            return None
        elsewhere = dict(pairs).get(actual)
        if elsewhere is not None:  # a value this provider takes, on other archs
            takes = f", which takes {_either(here)}" if here else ""
            return f"{what} {actual} needs arch {_show_archs(elsewhere, arch)} (this plan: {arch}{takes})"
        if not here:
            return f"needs {what} {_either(v for v, _ in pairs)} (this plan: {actual})"
        on = f" on {arch}" if any(archs is not None for _, archs in pairs) else ""
        return f"needs {what} {_either(here)}{on} (this plan: {actual})"


__all__ = ["Requires", "arch_matches", "PLATFORMS", "FP8_FORMATS", "KV_CACHE_DTYPES", "ARCH_FAMILY"]
