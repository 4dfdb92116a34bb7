"""Device profiles: what a device is and which providers to prefer, from dsa/configs/devices/NAME.yaml.

    profile = load_profile("h200")                     # a shipped profile, by name
    profile = load_profile("/path/to/my-gpu.yaml")     # or any file with the same schema
    list_profiles()                                    # ["ascend-a2", ..., "h200", ...]

The schema is strict: unknown keys, a bad enum value, a provider no backend declares, an op missing
from `providers`, or a layout whose world size (tp * dp_attention) is not devices_per_node * nodes
is a `ProfileError` naming the file and the field. Profiles are frozen once loaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from dsa.configs import CONFIG_DIR
from dsa.errors import ProfileError
from dsa.hal import registry
from dsa.model.fields import float_problem, is_int, show

DEVICES_DIR = CONFIG_DIR / "devices"

PLATFORMS = ("cpu", "cuda", "rocm", "npu")
# Known architectures per platform (what dsa.planning.hardware reports). CUDA and ROCm also accept any
# well-formed sm<NN> / gfx<hex> so that users can describe a GPU we ship no profile for.
ARCHS = {
    "cpu": ("cpu",),
    "cuda": ("sm80", "sm90", "sm100", "sm120"),
    "rocm": ("gfx942", "gfx950"),
    "npu": ("ascend910b", "ascend910_93"),
}
_ARCH_PATTERN = {"cuda": re.compile(r"sm\d{2,3}$"), "rocm": re.compile(r"gfx[0-9a-f]{3,4}$")}
FP8_FORMATS = ("e4m3fn", "e4m3fnuz", "none")
COLLECTIVES = ("nccl", "hccl", "gloo")
_COLLECTIVE_PLATFORMS = {"nccl": ("cuda", "rocm"), "hccl": ("npu",), "gloo": PLATFORMS}
DTYPES = ("bf16", "fp16", "fp32")
WEIGHT_FORMATS = ("fp8", "bf16")
KV_DTYPES = ("bf16", "fp8")

# Bounds of the numbers (far above any real machine): they keep the layout checks and searches, which
# walk the divisors of the world size, short. MAX_NODES also bounds `--nodes` (check_node_count).
MAX_NODES = 1024
MAX_PROFILE_CHARS = 1 << 20  # a profile is a few hundred bytes
MAX_NESTING = 64
MAX_DEVICES_PER_NODE = 1024
MAX_MEMORY_GB = 1e6  # per device, GiB
MAX_PAGE_SIZE = 1 << 16  # tokens per KV cache page
MAX_PARALLEL = MAX_NODES * MAX_DEVICES_PER_NODE  # tp, dp_attention, ep
_INT_BOUNDS = {"devices_per_node": MAX_DEVICES_PER_NODE, "kv_cache.page_size": MAX_PAGE_SIZE, "layout.tp": MAX_PARALLEL,
               "layout.dp_attention": MAX_PARALLEL, "layout.ep": MAX_PARALLEL, "layout.nodes": MAX_NODES}

_TOP_KEYS = ("name", "description", "platform", "arch", "memory_gb", "devices_per_node", "fp8_format",
             "collective", "dtype", "weights", "kv_cache", "layout", "providers")
_KV_KEYS = ("dtype", "page_size")
_LAYOUT_KEYS = ("tp", "dp_attention", "ep", "nodes")


@dataclass(frozen=True)
class KVCacheSpec:
    dtype: str  # bf16 | fp8 (fp8 = the packed 656-byte token layout)
    page_size: int  # tokens per cache page


@dataclass(frozen=True)
class LayoutSpec:
    """Default parallel layout. world = tp * dp_attention = devices_per_node * nodes; ep | world."""

    tp: int  # attention tensor parallelism (heads split over tp ranks)
    dp_attention: int  # attention data-parallel groups (each holds its own requests' KV cache)
    ep: int  # ranks the routed experts are split over
    nodes: int

    @property
    def world_size(self) -> int:
        return self.tp * self.dp_attention


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    platform: str
    arch: str
    memory_gb: float  # per device, GiB
    devices_per_node: int
    fp8_format: str
    collective: str
    dtype: str
    weights: str
    kv_cache: KVCacheSpec
    layout: LayoutSpec
    providers: Mapping[str, tuple[str, ...]]  # op -> ordered provider names (read-only mapping)
    source: str = field(default="", compare=False)  # the file it came from

    @property
    def target_name(self) -> str:
        return f"{self.platform}/{self.arch}"


# ---- loading ---------------------------------------------------------------------------------

def list_profiles(directory: str | Path | None = None) -> list[str]:
    """Names of the profiles in dsa/configs/devices/ (or `directory`), sorted."""
    d = Path(directory) if directory is not None else DEVICES_DIR
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a profile by name (dsa/configs/devices/NAME.yaml) or from a path to a .yaml file."""
    path = profile_path(name_or_path)
    return parse_profile(_read_yaml(path), path)


def profile_path(name_or_path: str | Path) -> Path:
    """The .yaml file a profile name (dsa/configs/devices/NAME.yaml) or path names; ProfileError if absent."""
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ProfileError(f"device profile file {path} not found")
    else:
        path = DEVICES_DIR / f"{text}.yaml"
        if not path.is_file():
            names = ", ".join(list_profiles()) or "none"
            raise ProfileError(
                f"unknown device profile {text!r}; available: {names}. To add one, copy a profile in "
                f"{_display(DEVICES_DIR)}/ to {text}.yaml, set `name: {text}` and edit it (or pass --device PATH.yaml)"
            )
    return path


def _display(path: Path) -> str:
    """A shipped profile's path as dsa/configs/... (shorter error messages); any other path as given."""
    try:
        return str(Path(path).resolve().relative_to(CONFIG_DIR.parent.parent))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"{_display(path)}: cannot read the profile ({err})") from None
    if len(text) > MAX_PROFILE_CHARS:
        raise ProfileError(f"{_display(path)}: {len(text)} characters is not a device profile (at most "
                           f"{MAX_PROFILE_CHARS}); pass a profile .yaml")
    depth = _bracket_depth(text)
    if depth > MAX_NESTING:  # YAML's parser takes seconds on thousands of nested brackets before failing
        raise ProfileError(f"{_display(path)}: flow collections nested {depth} deep (a profile needs a few)")
    try:
        return yaml.safe_load(text)
    except (ValueError, RecursionError) as err:  # an integer over Python's 4300-digit limit, nesting too deep
        raise ProfileError(f"{_display(path)}: not a usable YAML document "
                           f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from None
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ProfileError(f"{_display(path)}: not valid YAML{where}: {problem}") from None


def _bracket_depth(text: str) -> int:
    """The deepest nesting of [ and { in `text` (quotes ignored: an upper bound, cheap)."""
    depth = deepest = 0
    for c in text:
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
    return deepest


def node_count_problem(nodes: Any) -> str | None:
    """None if `nodes` is a node count the planner handles (1..MAX_NODES), else what is wrong with it."""
    if not is_int(nodes) or nodes <= 0:
        return f"must be a positive integer, got {show(nodes)}"
    if nodes > MAX_NODES:
        return f"must be at most {MAX_NODES}, got {show(nodes)}"
    return None


def check_node_count(nodes: Any, what: str = "nodes") -> int:
    """`nodes` if it is 1..MAX_NODES, else ProfileError (a `--nodes 100000` search would take minutes)."""
    problem = node_count_problem(nodes)
    if problem:
        raise ProfileError(f"{what} {problem} (this runtime plans for at most {MAX_NODES} nodes)")
    return nodes


def known_provider_names() -> set[str]:
    """Provider names a profile may use: the built-in ones, entry-point backends, and any registered."""
    names = set(registry.KNOWN_PROVIDERS)
    try:
        names.update(ep.name for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP))
    except Exception:  # broken distribution metadata: the built-in names still work
        pass
    return names


def _registered_names() -> set[str]:
    names: set[str] = set()
    for op in registry.OPS:
        names.update(registry.providers(op))
    return names


def parse_profile(raw: Any, path: str | Path = "<profile>") -> DeviceProfile:
    """Validate a parsed YAML document against the schema and build the frozen profile."""
    src = _display(Path(path)) if str(path) != "<profile>" else str(path)

    def bad(field_name: str, msg: str):
        raise ProfileError(f"{src}: {field_name}: {msg}")

    if not isinstance(raw, dict):
        raise ProfileError(f"{src}: expected a YAML mapping of profile fields ({', '.join(_TOP_KEYS)}), "
                           f"got {type(raw).__name__}")
    _check_keys(raw, _TOP_KEYS, "", bad)

    def req(key: str, parent: dict = raw, prefix: str = "") -> Any:
        if key not in parent:
            bad(prefix + key, "required field is missing")
        return parent[key]

    def enum(key: str, allowed: tuple[str, ...], parent: dict = raw, prefix: str = "") -> str:
        value = req(key, parent, prefix)
        if not isinstance(value, str) or value not in allowed:
            bad(prefix + key, f"{show(value)} is not one of {', '.join(allowed)}")
        return value

    def pos_int(key: str, parent: dict = raw, prefix: str = "") -> int:
        value = req(key, parent, prefix)
        if not is_int(value) or value <= 0:
            bad(prefix + key, f"must be a positive integer, got {show(value)}")
        hi = _INT_BOUNDS[prefix + key]
        if value > hi:
            bad(prefix + key, f"must be at most {hi}, got {show(value)}")
        return value

    def text(key: str) -> str:
        value = req(key)
        if not isinstance(value, str) or not value.strip():
            bad(key, f"must be a non-empty string, got {show(value)}")
        return value

    name = text("name")
    stem = Path(path).stem
    if str(path) != "<profile>" and name != stem:
        bad("name", f"is {name!r} but must equal the file name stem {stem!r} (rename the file or the field)")
    description = text("description")
    platform = enum("platform", PLATFORMS)
    arch = req("arch")
    pattern = _ARCH_PATTERN.get(platform)
    if not isinstance(arch, str) or not (arch in ARCHS[platform] or (pattern and pattern.match(arch))):
        bad("arch", f"{show(arch)} is not an architecture of platform {platform} "
                    f"(expected one of {', '.join(ARCHS[platform])}"
                    + (", or another " + {"cuda": "sm<NN>", "rocm": "gfx<hex>"}[platform] if pattern else "") + ")")
    memory = req("memory_gb")
    if float_problem(memory, 0.0, None, lo_open=True):  # not a number, nan, inf, <= 0
        bad("memory_gb", f"must be a positive number (finite, GiB per device), got {show(memory)}")
    if memory > MAX_MEMORY_GB:
        bad("memory_gb", f"must be at most {MAX_MEMORY_GB:g} (GiB per device), got {show(memory)}")
    devices_per_node = pos_int("devices_per_node")
    fp8_format = enum("fp8_format", FP8_FORMATS)
    if arch == "gfx942" and fp8_format != "e4m3fnuz":
        bad("fp8_format", f"gfx942 (MI300) uses e4m3fnuz, not {fp8_format!r}")
    if platform == "npu" and fp8_format != "none":
        bad("fp8_format", f"Ascend {arch} has no fp8; use none (weights: bf16, kv_cache.dtype: bf16)")
    collective = enum("collective", COLLECTIVES)
    if platform not in _COLLECTIVE_PLATFORMS[collective]:
        bad("collective", f"{collective} does not run on platform {platform} "
                          f"(use {' or '.join(c for c, p in _COLLECTIVE_PLATFORMS.items() if platform in p)})")
    dtype = enum("dtype", DTYPES)
    weights = enum("weights", WEIGHT_FORMATS)
    if weights == "fp8" and fp8_format == "none":
        bad("weights", "fp8 weights need an fp8 format, but fp8_format is none; use bf16")

    kv_raw = req("kv_cache")
    if not isinstance(kv_raw, dict):
        bad("kv_cache", f"must be a mapping {{dtype: bf16|fp8, page_size: N}}, got {show(kv_raw)}")
    _check_keys(kv_raw, _KV_KEYS, "kv_cache.", bad)
    kv = KVCacheSpec(enum("dtype", KV_DTYPES, kv_raw, "kv_cache."), pos_int("page_size", kv_raw, "kv_cache."))
    if kv.dtype == "fp8" and fp8_format == "none":
        bad("kv_cache.dtype", "an fp8 KV cache needs an fp8 format, but fp8_format is none; use bf16")

    lay_raw = req("layout")
    if not isinstance(lay_raw, dict):
        bad("layout", f"must be a mapping {{tp, dp_attention, ep, nodes}}, got {show(lay_raw)}")
    _check_keys(lay_raw, _LAYOUT_KEYS, "layout.", bad)
    layout = LayoutSpec(*(pos_int(k, lay_raw, "layout.") for k in _LAYOUT_KEYS))
    devices = devices_per_node * layout.nodes
    if layout.world_size != devices:
        bad("layout", f"world size tp * dp_attention = {layout.tp} * {layout.dp_attention} = {layout.world_size} "
                      f"must equal devices_per_node * nodes = {devices_per_node} * {layout.nodes} = {devices}")
    if layout.world_size % layout.ep:
        bad("layout.ep", f"ep = {layout.ep} must divide the world size {layout.world_size} "
                         f"(divisors: {', '.join(map(str, _divisors(layout.world_size)))})")

    prov_raw = req("providers")
    if not isinstance(prov_raw, dict):
        bad("providers", "must be a mapping from op name to an ordered list of provider names")
    for op in prov_raw:
        if not isinstance(op, str) or op not in registry.OPS:
            bad(f"providers.{_key(op)}", f"unknown op (the ops are {', '.join(registry.OPS)})")
    missing = [op for op in registry.OPS if op not in prov_raw]
    if missing:
        bad("providers", f"missing op(s) {', '.join(missing)}: every op needs a preference list "
                         f"(at least [torch])")
    known = known_provider_names()
    registered: set[str] | None = None
    providers: dict[str, tuple[str, ...]] = {}
    for op in registry.OPS:
        names = prov_raw[op]
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            bad(f"providers.{op}", f"must be a non-empty list of provider names, got {show(prov_raw[op])}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            bad(f"providers.{op}", f"provider(s) listed twice: {', '.join(dupes)}")
        for n in names:
            if n in known:
                continue
            if registered is None:
                registered = _registered_names()  # imports the installed backends (rare path)
            if n not in registered:
                bad(f"providers.{op}", f"unknown provider {n!r} (known: {', '.join(sorted(known | registered))})")
        providers[op] = tuple(names)

    return DeviceProfile(
        name=name, description=description, platform=platform, arch=arch, memory_gb=float(memory),
        devices_per_node=devices_per_node, fp8_format=fp8_format, collective=collective, dtype=dtype,
        weights=weights, kv_cache=kv, layout=layout, providers=MappingProxyType(providers), source=src,
    )


def _check_keys(raw: dict, allowed: tuple[str, ...], prefix: str, bad) -> None:
    for key in raw:
        if key not in allowed:
            bad(f"{prefix}{_key(key)}", f"unknown key (allowed here: {', '.join(allowed)})")


def _key(key: Any) -> str:
    """A YAML key for a message: a string as it is, anything else (a 0x... integer of 10000 digits) shortened."""
    return key if isinstance(key, str) else show(key)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


__all__ = ["DeviceProfile", "KVCacheSpec", "LayoutSpec", "load_profile", "profile_path", "list_profiles",
           "parse_profile", "known_provider_names", "DEVICES_DIR", "MAX_NODES", "check_node_count",
           "node_count_problem"]
