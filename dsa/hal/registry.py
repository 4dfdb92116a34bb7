"""Providers of HAL ops, and how one is chosen.

A *provider* is one implementation of one HAL op (`dsa.hal`). Every backend registers its providers,
when its package is imported, through the one function `register`:

    register("sparse_mla_decode", "flashmla", fn, backend="cuda",
             requires=Requires(modules=("flash_mla",), platforms=("cuda",), archs=("sm90", "sm100"),
                               kv_cache_dtypes=("fp8",), page_sizes=(64,)),
             supported=lambda target: None,                # optional: a vendor-specific extra check
             supports_args=lambda q, kv, idx, *a: None)    # None = can take these shapes

`requires` (dsa.hal.capability) declares what the provider needs of the plan's target; the reasons a
plan shows for rejecting it are generated from the declaration. `Provider.supported(target)` answers
once per plan ("can this provider run on this hardware / cache format / head count at all?"): the
declaration first, then the extra `supported` check. `Provider.supports_args(*op_args)` answers per
call ("can it take *these* shapes?"): a declared module that does not import, then the `supports_args`
check. Both return None when the answer is yes and a short human reason when it is no.

`select(op, preference, target)` walks a profile's ordered preference list and returns a `Selection`:
the usable providers in order, and every rejected one with its reason. Nothing is silent: when no
provider is usable the error lists them all.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Optional

from dsa.errors import NoProviderError
from dsa.hal.capability import Requires
from dsa.hal.target import Target  # noqa: F401  (re-exported: registry.Target)

log = logging.getLogger("dsa.registry")

# The HAL ops (one module each in dsa/hal/).
OPS = (
    "act_quant",
    "fp8_linear",
    "indexer_topk",
    "sparse_mla_prefill",
    "sparse_mla_decode",
    "grouped_gemm",
)

# Every provider name a profile may mention, with the backend package that would register it.
# A known provider that has not registered is reported as "not installed", never as unknown.
KNOWN_PROVIDERS = {
    "torch": "dsa.backends.torch",
    "triton": "dsa.backends.triton",
    "flashmla": "dsa.backends.cuda",
    "deepgemm": "dsa.backends.cuda",
    "tilelang": "dsa.backends.cuda",
    "aiter": "dsa.backends.rocm",
    "npu": "dsa.backends.npu",
}

ENTRY_POINT_GROUP = "dsa.backends"

Reason = Optional[str]


def _always(*_args, **_kwargs) -> Reason:
    return None


@dataclass(frozen=True)
class Provider:
    op: str
    name: str
    fn: Callable
    backend: str
    requires: Optional[Requires] = None  # the declaration; None only for test-only providers (no requirement)
    check: Callable[[Target], Reason] = _always  # extra plan-time check, run when the declaration is met
    check_args: Callable[..., Reason] = _always  # per-call check of the arguments
    capturable: bool = False  # declared: its calls read nothing back to the host (a CUDA graph can capture them)

    def supported(self, target: Target) -> Reason:
        """None when this provider can run on `target`, else why not: the declaration's reason, then the
        extra check (only asked once the declaration is met, so it may use the declared modules)."""
        why = self.requires.reason(target) if self.requires is not None else None
        return why or self.check(target)

    def supports_args(self, *args) -> Reason:
        """None when this provider takes these arguments (HAL contract order), else why not."""
        why = self.requires.call_reason() if self.requires is not None else None
        return why or self.check_args(*args)


@dataclass
class Selection:
    """The outcome of choosing providers for one op."""

    op: str
    usable: list[Provider]  # in preference order; usable[0] is the chosen one
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (provider name, reason)

    @property
    def chosen(self) -> Provider:
        return self.usable[0]


_PROVIDERS: dict[str, dict[str, Provider]] = {op: {} for op in OPS}
_LOADED = False


def register(
    op: str,
    name: str,
    fn: Optional[Callable] = None,
    *,
    backend: str,
    requires: Optional[Requires] = None,
    supported: Callable[[Target], Reason] = _always,
    supports_args: Callable[..., Reason] = _always,
    capturable: bool = False,
) -> Provider:
    """Register provider `name` of `op` (the one registration function of every backend).

    fn             the implementation, called with the op's arguments; None only for a placeholder
                   declared Requires(unavailable=reason), which then raises NotImplementedError
    requires       what the provider needs of the target (dsa.hal.capability.Requires); every backend
                   in dsa/backends declares one. None (test-only providers): no requirement
    supported      an extra plan-time check, fn(target) -> reason | None, for what a declaration cannot
                   say (a vendor-specific rule); asked only when the declaration is met
    supports_args  the per-call check, fn(*op_args) -> reason | None
    capturable     True when neither fn nor supports_args reads a tensor's values on the host or sizes an
                   output by them (given the ops' host-side bounds, e.g. indexer_topk's max_visible), so the
                   decode step can be captured in a CUDA graph (dsa.engine.cuda_graphs); False (the default)
                   keeps that step eager
    """
    if op not in _PROVIDERS:
        raise ValueError(f"unknown HAL op {op!r}; the ops are {', '.join(OPS)}")
    if requires is not None and not isinstance(requires, Requires):
        raise TypeError(f"{op}/{name}: requires must be a dsa.hal.capability.Requires, got {requires!r}")
    if fn is None:
        if requires is None or requires.unavailable is None:
            raise ValueError(f"{op}/{name}: no implementation given; only Requires(unavailable=...) may omit it")
        reason = requires.unavailable

        def fn(*_args):
            raise NotImplementedError(f"{name}: {reason}")

    provider = Provider(op, name, fn, backend, requires, supported, supports_args, capturable)
    _PROVIDERS[op][name] = provider
    return provider


def unregister(op: str, name: str) -> None:
    """Remove a provider (tests, or a backend withdrawing one it registered). Absent names are fine."""
    _PROVIDERS[op].pop(name, None)


def providers(op: str) -> dict[str, Provider]:
    load_backends()
    return dict(_PROVIDERS[op])


def get(op: str, name: str) -> Provider:
    load_backends()
    try:
        return _PROVIDERS[op][name]
    except KeyError:
        raise NoProviderError(
            f"provider {name!r} of op {op!r} is not registered (installed: {', '.join(_PROVIDERS[op]) or 'none'})"
        ) from None


def load_backends() -> None:
    """Import every backend package that is present, plus out-of-tree ones from entry points.

    A missing package is normal (its providers then show as "not installed"). A package that is
    present but fails to import for another reason is logged, not hidden.
    """
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    modules = dict.fromkeys(KNOWN_PROVIDERS.values())
    try:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            modules.setdefault(ep.value)
    except Exception as err:  # a broken distribution's metadata must not stop the runtime
        log.warning("could not read %s entry points: %s", ENTRY_POINT_GROUP, err)
    for module in modules:
        try:
            present = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is absent
            present = False
        if not present:
            continue  # its providers show as "not installed"
        try:
            importlib.import_module(module)
        except Exception as err:  # present but broken: say so, keep going with the others
            log.warning("backend %s failed to import: %s", module, err)


def _not_installed_reason(name: str) -> str:
    if name not in KNOWN_PROVIDERS:
        return "not installed (unknown provider name; no backend registers it)"
    return f"not installed (backend package {KNOWN_PROVIDERS[name]} or its library is not available here)"


def select(op: str, preference: list[str] | tuple[str, ...], target: Target) -> Selection:
    """Walk `preference` in order; keep the providers whose `supported(target)` says yes."""
    load_backends()
    usable: list[Provider] = []
    rejected: list[tuple[str, str]] = []
    for name in preference:
        provider = _PROVIDERS[op].get(name)
        if provider is None:
            rejected.append((name, _not_installed_reason(name)))
            continue
        reason = provider.supported(target)
        if reason:
            rejected.append((name, reason))
        else:
            usable.append(provider)
    if not usable:
        lines = "; ".join(f"{n}: {r}" for n, r in rejected) or "the preference list is empty"
        raise NoProviderError(
            f"no provider of op {op!r} can run on {target.platform}/{target.arch} "
            f"(kv cache {target.kv_cache_dtype}, page {target.page_size}): {lines}. "
            f"Add a provider that supports this target (e.g. 'torch') to the profile's providers.{op} list."
        )
    return Selection(op, usable, rejected)
