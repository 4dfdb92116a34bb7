"""Provider declarations (dsa.hal.capability.Requires): the reasons generated from them, the refusal of a
bad declaration, and how the registry combines a declaration with a provider's own checks."""
from __future__ import annotations

import dataclasses

import pytest

from dsa.hal import registry
from dsa.hal.capability import Requires, arch_matches
from tests.backends import common


def target(**kw):
    return common.target(**kw)  # cuda / sm90 / e4m3fn / fp8 cache / 64-token pages / 64 index heads


def no_such_module(name):
    raise ModuleNotFoundError(f"No module named {name!r}")


# ---------------------------------------------------------------- one reason per field


def test_platform_mismatch_names_the_platforms():
    assert Requires(platforms=("cuda",)).reason(target(platform="rocm", arch="gfx942")) == \
        "needs platform cuda (this plan: rocm)"
    assert Requires(platforms=("cuda", "rocm")).reason(target(platform="cpu", arch="cpu")) == \
        "needs platform cuda or rocm (this plan: cpu)"


def test_arch_mismatch_names_the_archs():
    req = Requires(platforms=("cuda",), archs=("sm90", "sm100"))
    assert req.reason(target(arch="sm80")) == "needs arch sm90 or sm100 (this plan: sm80)"
    assert req.reason(target(arch="sm100")) is None


def test_fp8_format_mismatch_names_the_formats():
    assert Requires(fp8_formats=("e4m3fn",)).reason(target(fp8_format="e4m3fnuz")) == \
        "needs fp8 format e4m3fn (this plan: e4m3fnuz)"


def test_kv_cache_dtype_mismatch_names_the_dtypes():
    assert Requires(kv_cache_dtypes=("fp8",)).reason(target(kv="bf16")) == "needs kv cache dtype fp8 (this plan: bf16)"


def test_page_size_mismatch_names_the_sizes():
    assert Requires(page_sizes=(64,)).reason(target(page=16)) == "needs page size 64 (this plan: 16)"
    assert Requires(page_sizes=(32, 64)).reason(target(page=16)) == "needs page size 32 or 64 (this plan: 16)"
    multiples = Requires(page_sizes=range(16, 1025, 16))
    assert multiples.reason(target(page=100)) == "needs page size a multiple of 16 up to 1024 (this plan: 100)"
    assert multiples.reason(target(page=1024)) is None
    assert Requires(page_sizes=range(1, 9)).reason(target(page=16)) == "needs page size from 1 to 8 (this plan: 16)"


def test_missing_module_names_the_module_and_the_error():
    req = Requires(modules=("flash_mla",), platforms=("cuda",), load=no_such_module)
    assert req.reason(target()) == "flash_mla not importable: ModuleNotFoundError: No module named 'flash_mla'"
    assert req.reason(target(platform="rocm", arch="gfx942")).startswith("flash_mla not importable")  # module first
    assert req.call_reason() == req.modules_reason() == req.reason(target())


def test_index_heads_above_the_limit():
    req = Requires(max_index_heads=64)
    assert req.reason(target(index_heads=128)) == "needs at most 64 index heads (this plan: 128)"
    assert req.reason(target(index_heads=64)) is None
    assert req.reason(target(index_heads=0)) is None  # 0 = not known yet


def test_unavailable_is_its_own_reason():
    req = Requires(unavailable="no such kernel")
    assert req.reason(target()) == req.call_reason() == "no such kernel"


def test_nothing_declared_runs_everywhere():
    for kw in ({}, {"platform": "cpu", "arch": "cpu", "fp8_format": "none", "kv": "bf16", "page": 1}):
        assert Requires().reason(target(**kw)) is None


# ---------------------------------------------------------------- patterns, alternatives, per-arch values


@pytest.mark.parametrize("arch,pattern,expect", [
    ("sm90", "sm90", True), ("sm90", "sm89+", True), ("sm100", "sm89+", True), ("sm86", "sm89+", False),
    ("gfx942", "sm80+", False), ("gfx1100", "gfx11*", True), ("gfx90a", "gfx9*", True), ("sm90", "gfx*", False),
])
def test_arch_patterns(arch, pattern, expect):
    assert arch_matches(arch, pattern) is expect


def test_arch_reason_lists_the_plans_family_only():
    req = Requires(platforms=("cuda", "rocm"), archs=("sm80+", "gfx942", "gfx11*"))
    assert req.reason(target(arch="sm75")) == "needs arch sm80 or newer (this plan: sm75)"
    assert req.reason(target(platform="rocm", arch="gfx906")) == "needs arch gfx942 or gfx11* (this plan: gfx906)"


def test_values_per_arch():
    req = Requires(platforms=("rocm",), archs=("gfx942", "gfx950"),
                   fp8_formats={"e4m3fnuz": ("gfx942",), "e4m3fn": ("gfx950",)})
    rocm = dict(platform="rocm", arch="gfx942")
    assert req.reason(target(**rocm, fp8_format="e4m3fnuz")) is None
    assert req.reason(target(**rocm, fp8_format="e4m3fn")) == \
        "fp8 format e4m3fn needs arch gfx950 (this plan: gfx942, which takes e4m3fnuz)"
    assert req.reason(target(**rocm, fp8_format="none")) == "needs fp8 format e4m3fnuz on gfx942 (this plan: none)"
    kv = Requires(kv_cache_dtypes={"bf16": None, "fp8": ("sm89+",)})
    assert kv.reason(target(arch="sm80", kv="fp8")) == \
        "kv cache dtype fp8 needs arch sm89 or newer (this plan: sm80, which takes bf16)"
    assert kv.reason(target(arch="sm80", kv="bf16")) is None and kv.reason(target(arch="sm90", kv="fp8")) is None


def test_alternative_modules():
    loaded = []

    def load(name):
        if name != "pkg.new":
            raise ImportError(f"no {name}")
        loaded.append(name)

    assert Requires(modules=(("pkg.old", "pkg.new"),), load=load).reason(target()) is None and loaded == ["pkg.new"]
    why = Requires(modules=("pkg.new", ("pkg.a", "pkg.b")), load=load).reason(target())
    assert why == "pkg.a not importable (pkg.a: ImportError: no pkg.a; pkg.b: ImportError: no pkg.b)"


def test_a_derived_declaration_keeps_the_fields_and_is_checked_again():
    base = Requires(platforms=("rocm",), archs=("gfx942",), fp8_formats={"e4m3fnuz": ("gfx942",)})
    decode = dataclasses.replace(base, kv_cache_dtypes=("bf16",))
    assert decode.fp8_formats == base.fp8_formats and decode.platforms == ("rocm",)
    with pytest.raises(ValueError, match="page_sizes"):
        dataclasses.replace(base, page_sizes=(0,))


# ---------------------------------------------------------------- bad declarations are refused


@pytest.mark.parametrize("kw,field", [
    ({"platforms": ("cdua",)}, "platforms"),
    ({"platforms": ()}, "platforms"),
    ({"platforms": 3}, "platforms"),
    ({"platforms": ("cuda",), "archs": ("gfx942",)}, "archs"),  # an arch of another platform
    ({"archs": ("sm+",)}, "archs"),
    ({"fp8_formats": ("e5m2",)}, "fp8_formats"),
    ({"fp8_formats": {"e4m3fn": ("gfx950",)}, "platforms": ("cuda",)}, "fp8_formats"),
    ({"kv_cache_dtypes": ("int8",)}, "kv_cache_dtypes"),
    ({"kv_cache_dtypes": {}}, "kv_cache_dtypes"),
    ({"page_sizes": (0,)}, "page_sizes"),
    ({"page_sizes": (16.0,)}, "page_sizes"),
    ({"page_sizes": range(0, 64, 16)}, "page_sizes"),
    ({"page_sizes": "64"}, "page_sizes"),
    ({"max_index_heads": 0}, "max_index_heads"),
    ({"max_index_heads": True}, "max_index_heads"),
    ({"modules": ("",)}, "modules"),
    ({"modules": (("a", 1),)}, "modules"),
    ({"modules": 7}, "modules"),
    ({"unavailable": ""}, "unavailable"),
    ({"unavailable": "no kernel", "platforms": ("cuda",)}, "unavailable"),
    ({"load": "importlib"}, "load"),
])
def test_bad_declaration_is_refused(kw, field):
    with pytest.raises(ValueError, match=rf"Requires\.{field}"):
        Requires(**kw)


def test_declarations_are_frozen_and_normalised():
    req = Requires(modules="flash_mla", platforms="cuda", archs=["sm90"], page_sizes=64)
    assert (req.modules, req.platforms, req.archs, req.page_sizes) == (("flash_mla",), ("cuda",), ("sm90",), (64,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.platforms = ("rocm",)
    assert hash(req) == hash(Requires(modules=("flash_mla",), platforms=("cuda",), archs=("sm90",), page_sizes=(64,)))


# ---------------------------------------------------------------- the registry: declaration + the provider's own checks


@pytest.fixture
def scratch():
    """Register test-only providers of act_quant; removed afterwards."""
    names = []

    def add(name, **kw):
        names.append(name)
        return registry.register("act_quant", name, kw.pop("fn", lambda *a: None), backend="test", **kw)

    yield add
    for name in names:
        registry.unregister("act_quant", name)


def test_extra_check_runs_only_once_the_declaration_is_met(scratch):
    asked = []

    def extra(t):
        asked.append(t.arch)
        return "extra says no"

    p = scratch("test-extra", requires=Requires(platforms=("cuda",)), supported=extra)
    assert p.supported(target(platform="rocm", arch="gfx942")) == "needs platform cuda (this plan: rocm)" and not asked
    assert p.supported(target()) == "extra says no" and asked == ["sm90"]


def test_a_call_checks_the_declared_modules_before_the_arguments(scratch):
    p = scratch("test-module", requires=Requires(modules=("vendor_lib",), load=no_such_module),
                supports_args=lambda *a: pytest.fail("arguments checked although the library is missing"))
    assert p.supports_args(1, 2, 3).startswith("vendor_lib not importable")
    ok = scratch("test-ok", requires=Requires(), supports_args=lambda *a: f"{len(a)} args")
    assert ok.supports_args(1, 2) == "2 args"


def test_placeholder_says_why_and_raises(scratch):
    p = scratch("test-none", fn=None, requires=Requires(unavailable="nothing wrapped"))
    assert p.supported(target()) == p.supports_args(1) == "nothing wrapped"
    with pytest.raises(NotImplementedError, match="test-none: nothing wrapped"):
        p.fn(1)


def test_registration_needs_an_implementation_or_a_placeholder_reason(scratch):
    with pytest.raises(ValueError, match="only Requires\\(unavailable"):
        scratch("test-nofn", fn=None, requires=Requires())
    with pytest.raises(TypeError, match="Requires"):
        scratch("test-badreq", requires={"platforms": ("cuda",)})
