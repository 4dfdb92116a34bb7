"""HF safetensors checkpoints (SPEC 3): open, check, and load straight into the model - no conversion step.

Two phases, so every problem with the files is reported before any tensor data is read:

    ckpt = open_checkpoint("DeepSeek-V3.2-Exp/")  # config.json, the index, every needed shard's header
    ckpt.validate()                               # names, shapes, dtypes vs hf_tensor_specs(config)
    model = load_model(ckpt, plan.opset(), dtype=torch.bfloat16, weights=plan.weights)

`load_model` builds the model on the meta device, allocates its parameters once, then walks the shards
one at a time and copies each tensor (memory-mapped read through `safetensors.safe_open`) into the
parameter that holds it; per-expert HF tensors land in their row of the stacked expert parameters.
fp8 weights keep their `weight_scale_inv` when the plan keeps fp8 weights (`weights="fp8"`), else they
are dequantised to the compute dtype (128 x 128 blocks, partial edge blocks) as they are read.

Per-rank loading: every read asks a `TensorSlicer` which part of HF tensor X this rank holds
(`FULL` = all of it, the single-device case; `NOT_HELD` = none: the tensor is not read, and a shard
holding nothing for this rank is not opened), so a parallel layout only supplies a slicer.
`load_model(..., parallel=groups)` shards the meta model with model.parallel.parallelize and uses the
slicer it returns. Held routed experts fill the stacked expert rows in expert order.

The multi-token-prediction layer (stored after the decoder layers, layer 61 in the 671B release) is
not read: plain decoding does not use it. The skip is logged once per checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from dsa.errors import CheckpointError, ConfigError
from dsa.model.config import ModelConfig
from dsa.model.layers import WEIGHT_BLOCK
from dsa.model.parallel import NOT_HELD
from dsa.model.transformer import EXPERT_NAME, LAYER_NAME

log = logging.getLogger("dsa.loader")
STACKED_EXPERTS = re.compile(r"^model\.layers\.\d+\.mlp\.experts\.(gate_proj|up_proj|down_proj)(_scale_inv)?$")

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100 << 20  # safetensors caps the JSON header at 100 MB
MAX_LISTED_PROBLEMS = 8
PROGRESS_MIN_BYTES = 256 << 20  # a progress line is worth it above this much data (and on a terminal)
DEQUANT_ROWS = 32 * WEIGHT_BLOCK  # dequantise in row chunks, so the fp32 temporaries stay small

# safetensors dtype string -> (torch dtype, bytes per element)
ST_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U64": (torch.uint64, 8), "U32": (torch.uint32, 4), "U16": (torch.uint16, 2), "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
FLOAT_DTYPES = ("F32", "BF16", "F16")  # a non-fp8 tensor may be stored in any of these; it is cast at load
ST_NAME = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3"}

TensorSlicer = Callable[[str, tuple[int, ...]], Optional[tuple[slice, ...]]]
"""(HF tensor name, its full shape) -> the slices (one per dim) this rank holds, None for all of it, or
NOT_HELD for none of it. The result must have the shape of the model parameter (or expert row) the
tensor lands in."""


def FULL(name: str, shape: tuple[int, ...]) -> None:
    """The single-device slicer: every rank needs every tensor whole."""
    return None


# ---- headers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a shard's safetensors header describes it (no data read)."""

    name: str
    shard: str  # file name, relative to the checkpoint directory
    dtype: str  # safetensors dtype string: F8_E4M3, BF16, F32, ...
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # [begin, end) in the data section

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


def read_header(path: Path, shard: Optional[str] = None) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header: 8-byte little-endian length, JSON, then the data section.

    CheckpointError if the file is shorter than the header says (truncated download) or the header is
    not a well-formed safetensors header.
    """
    shard = shard or path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            raw = f.read(n) if 0 <= n <= min(size - 8, MAX_HEADER_BYTES) else b""
    except OSError as err:
        raise CheckpointError(f"shard {path}: cannot read it ({err.strerror or err})") from None
    redownload = f"re-download {shard}"
    if n < 0:
        raise CheckpointError(f"shard {path} is truncated: {size} bytes, too short for a safetensors header; {redownload}")
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"shard {path}: corrupt safetensors header (declared length {n} bytes); {redownload}")
    if n > size - 8:
        raise CheckpointError(f"shard {path} is truncated: its header needs {n + 8} bytes, the file has {size}; {redownload}")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"shard {path}: corrupt safetensors header (not a JSON object); {redownload}")
    header.pop("__metadata__", None)
    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        bad = f"shard {path}: corrupt safetensors header entry for tensor {name}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{bad} (not an object); {redownload}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2 \
                or not 0 <= offsets[0] <= offsets[1]:
            raise CheckpointError(f"{bad} (expected dtype, shape and data_offsets [begin, end]); {redownload}")
        itemsize = ST_DTYPES.get(dtype, (None, None))[1]
        if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise CheckpointError(f"{bad}: {dtype} {shape} needs {math.prod(shape) * itemsize} bytes, "
                                  f"data_offsets {offsets} span {offsets[1] - offsets[0]}; {redownload}")
        infos[name] = TensorInfo(name, shard, dtype, tuple(shape), (offsets[0], offsets[1]))
        data_end = max(data_end, offsets[1])
    if 8 + n + data_end > size:
        last = max(infos.values(), key=lambda t: t.data_offsets[1]).name
        raise CheckpointError(f"shard {path} is truncated: {size} bytes, but its header places tensor {last} up to byte "
                              f"{8 + n + data_end}; {redownload}")
    return infos


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


# ---- the checkpoint --------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A checkpoint directory as its config, index and shard headers describe it (no tensor data read)."""

    directory: Path
    config: ModelConfig
    tensors: dict[str, TensorInfo]  # every tensor the model may load (MTP layer excluded)
    shards: list[str]  # shards holding those tensors, in file-name order
    skipped: list[str] = field(default_factory=list)  # MTP-layer tensors, not read

    def validate(self, fp8: Optional[bool] = None) -> None:
        """CheckpointError listing every missing, unexpected, mis-shaped or mis-typed tensor.

        The expected layout is `hf_tensor_specs(config, fp8)` with fp8 = config.json's
        quantization_config (fp8 weights with fp32 weight_scale_inv) unless given.
        """
        from dsa.model.weights import hf_tensor_specs

        fp8 = self.config.fp8_weights if fp8 is None else fp8
        specs = hf_tensor_specs(self.config, fp8)
        quant = ("config.json says fp8 weights (quantization_config)" if fp8
                 else "config.json has no fp8 quantization_config")
        problems = []
        for name, (shape, dtype) in specs.items():
            t = self.tensors.get(name)
            want = f"{list(shape)} {ST_NAME[dtype]}"
            if t is None:
                weight = self.tensors.get(name[: -len("_scale_inv")]) if name.endswith(".weight_scale_inv") else None
                if weight is not None and weight.dtype == "F8_E4M3":
                    problems.append(f"fp8 weight {weight.name} (in {weight.shard}) has no {name}: expected its fp32 "
                                    f"128x128 block scales {list(shape)}")
                else:
                    problems.append(f"missing tensor {name}: expected {want}, found in no shard")
                continue
            allowed = ("F8_E4M3",) if dtype == torch.float8_e4m3fn else ("F32",) if name.endswith("_scale_inv") \
                else FLOAT_DTYPES
            if t.dtype not in allowed:
                why = f" ({quant})" if "F8_E4M3" in (t.dtype, *allowed) else ""
                problems.append(f"tensor {name} in {t.shard} has dtype {t.dtype}, expected {' or '.join(allowed)}{why}")
            if t.shape != shape:
                problems.append(f"tensor {name} in {t.shard} has shape {list(t.shape)}, expected {list(shape)} "
                                "(from config.json)")
        for name, t in self.tensors.items():
            if name not in specs:
                hint = f" ({quant})" if name.endswith("_scale_inv") else ""
                problems.append(f"unexpected tensor {name} {list(t.shape)} {t.dtype} in {t.shard}{hint}")
        if problems:
            more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
            raise CheckpointError(f"checkpoint {self.directory} does not match its config.json: "
                                  + "; ".join(problems[:MAX_LISTED_PROBLEMS]) + more)


def mtp_layer(name: str, config: ModelConfig) -> bool:
    """A tensor of the multi-token-prediction layer(s) stored after the decoder layers (SPEC 3)."""
    m = LAYER_NAME.match(name)
    n = config.num_hidden_layers
    return m is not None and n <= int(m.group(1)) < n + max(config.num_nextn_predict_layers, 1)


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Read config.json, the index (or find the single shard) and the headers of the shards to load.

    With `model.safetensors.index.json`, only the shards its weight_map names are opened; without it,
    every *.safetensors file of the directory is (a single `model.safetensors` is the usual case).
    """
    d = Path(directory).expanduser()
    if not d.exists():
        raise CheckpointError(f"checkpoint directory {d} not found")
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} is not a directory; give the directory holding config.json and the shards")
    config = ModelConfig.from_file(d / "config.json")
    index_path = d / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_index(index_path)
    else:
        files = sorted(p.name for p in d.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"checkpoint directory {d} has no {INDEX_FILE} and no *.safetensors shard")
        weight_map = {}
        for shard in files:
            for name in read_header(d / shard, shard):
                if name in weight_map:
                    raise CheckpointError(f"tensor {name} is in two shards, {weight_map[name]} and {shard}; without "
                                          f"{INDEX_FILE} a tensor must be in exactly one shard")
                weight_map[name] = shard

    skipped = sorted(n for n in weight_map if mtp_layer(n, config))
    wanted: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not mtp_layer(name, config):
            wanted.setdefault(shard, []).append(name)
    for shard, names in sorted(wanted.items()):
        if not (d / shard).is_file():
            raise CheckpointError(
                f"{index_path} names shard {shard} (holding {names[0]}"
                + (f" and {len(names) - 1} more tensors" if len(names) > 1 else "") + f"), but {d / shard} does not exist; "
                "re-download it")

    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(wanted):
        header = read_header(d / shard, shard)
        for name in wanted[shard]:
            if name not in header:
                raise CheckpointError(f"{index_path} maps tensor {name} to shard {shard}, but {shard} does not hold it; "
                                      "the index and the shards disagree (re-download both)")
            tensors[name] = header[name]
        for name in header:
            if weight_map.get(name) != shard and not mtp_layer(name, config):
                raise CheckpointError(f"shard {shard} holds tensor {name}, which {index_path} "
                                      + (f"maps to {weight_map[name]}" if name in weight_map else "does not list")
                                      + "; the index and the shards disagree (re-download both)")
    if skipped:
        layers = sorted({int(LAYER_NAME.match(n).group(1)) for n in skipped})
        log.info("%s: not loading the %d tensors of the multi-token-prediction layer %s (plain decoding does not "
                 "use it)", d, len(skipped), ", ".join(map(str, layers)))
    return Checkpoint(d, config, tensors, sorted(wanted), skipped)


def _read_index(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the index ({err}); re-download it") from None
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: expected an object with a \"weight_map\" of tensor name -> shard file name")
    for shard in set(weight_map.values()):
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise CheckpointError(f"{path}: shard {shard!r} must be a file name inside the checkpoint directory")
    return weight_map


# ---- loading -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Read:
    """Where one HF tensor goes: state-dict key, expert row (stacked experts) or None, and how."""

    key: str
    expert: Optional[int]
    dequant_with: Optional[str] = None  # the scale tensor, when an fp8 weight is dequantised
    scale_of: Optional[str] = None  # set on a scale tensor consumed by dequantisation (no key of its own)


def load_model(
    checkpoint: Checkpoint | str | Path,
    opset,
    *,
    dtype: torch.dtype = torch.bfloat16,
    kv_cache_dtype: str = "bf16",
    indexer_fp8: bool = True,
    weights: str = "bf16",
    device: str | torch.device = "cpu",
    slicer: TensorSlicer = FULL,
    progress: Optional[bool] = None,
    parallel=None,
):
    """Build DeepseekV32 on the meta device and fill it from the checkpoint's shards; returns it in eval mode.

    weights: "fp8" keeps fp8 weights + block scales (when the checkpoint has them), "bf16" stores every
    weight in the compute `dtype` (fp8 weights dequantised). progress: None = a progress line on a
    terminal for loads over 256 MiB; False = never; True = on a terminal. parallel: a
    model.parallel.ParallelGroups; the model is sharded for its layout and each rank reads its parts.
    """
    from dsa.model.transformer import DeepseekV32

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    ckpt.validate()
    config = ckpt.config
    if weights not in ("fp8", "bf16"):
        raise ValueError(f"weights must be 'fp8' or 'bf16', got {weights!r}")
    keep_fp8 = weights == "fp8" and config.fp8_weights
    with torch.device("meta"):
        model = DeepseekV32(config, opset, dtype=dtype, kv_cache_dtype=kv_cache_dtype, indexer_fp8=indexer_fp8,
                            fp8_weights=keep_fp8)
    if parallel is not None:
        from dsa.model.parallel import parallelize

        if slicer is not FULL:
            raise ValueError("load_model: pass a slicer or parallel, not both")
        slicer = parallelize(model, parallel).slicer  # layout errors here, before any tensor data
    reads = _plan_reads(ckpt, model.state_dict(), keep_fp8, slicer)  # all shape checks, before any data
    # allocate every parameter / persistent buffer once; `targets` share their storage
    model.load_state_dict({k: torch.empty(v.shape, dtype=v.dtype, device=device) for k, v in model.state_dict().items()},
                          strict=True, assign=True)
    targets = model.state_dict()

    by_shard: dict[str, list[TensorInfo]] = {}
    for t in ckpt.tensors.values():
        if t.name in reads:  # tensors this rank holds no part of are not read
            by_shard.setdefault(t.shard, []).append(t)
    total = sum(t.nbytes for ts in by_shard.values() for t in ts)
    bar = _Progress(len(by_shard), enabled=progress, total_bytes=total)
    pending: dict[str, tuple[Tensor, TensorInfo]] = {}  # fp8 weights / scales waiting for their partner (possibly in a later shard)
    from safetensors import safe_open

    for i, shard in enumerate(sorted(by_shard)):
        infos = sorted(by_shard[shard], key=lambda t: t.data_offsets[0])  # sequential reads
        bar.start(i, shard, sum(t.nbytes for t in infos))
        try:
            with safe_open(str(ckpt.directory / shard), framework="pt", device="cpu") as f:
                for info in infos:
                    _load_one(f, info, reads[info.name], targets, pending, slicer)
                    bar.advance(info.nbytes)
        except CheckpointError:
            raise
        except Exception as err:  # the header was checked; a read can still fail on a corrupt file
            raise CheckpointError(f"shard {ckpt.directory / shard}: reading failed ({err}); re-download it") from None
    bar.finish()
    if pending:  # cannot happen after validate(); kept as a guard for the invariant
        raise CheckpointError(f"checkpoint {ckpt.directory}: {sorted(pending)[0]} was read but never paired with its "
                              "fp8 weight / weight_scale_inv")
    model._after_load()
    return model.eval()


def _plan_reads(ckpt: Checkpoint, state: dict[str, Tensor], keep_fp8: bool, slicer: TensorSlicer) -> dict[str, _Read]:
    """Map every checkpoint tensor onto the model's state dict and check the (sliced) shapes; the final
    strict check: every parameter / expert row is filled exactly once."""
    reads: dict[str, _Read] = {}
    filled: dict[tuple[str, Optional[int]], str] = {}
    held = {name: info for name, info in ckpt.tensors.items() if slicer(name, info.shape) is not NOT_HELD}
    rows: dict[str, int] = {}  # per-expert HF name -> row of the stacked parameter (held experts, in order)
    by_stack: dict[str, list[tuple[int, str]]] = {}
    for name in held:
        m = EXPERT_NAME.match(name)
        if m is not None:
            by_stack.setdefault(f"{m.group(1)}.{m.group(3)}.{m.group(4)}", []).append((int(m.group(2)), name))
    for experts in by_stack.values():
        rows.update((name, row) for row, (_, name) in enumerate(sorted(experts)))
    for name, info in held.items():
        m = EXPERT_NAME.match(name)
        if m is not None:
            key = f"{m.group(1)}.{m.group(3)}" + ("_scale_inv" if m.group(4) == "weight_scale_inv" else "")
            expert: Optional[int] = rows[name]
        else:
            key, expert = name, None
        if name.endswith(".weight_scale_inv") and not keep_fp8:
            reads[name] = _Read(key, expert, scale_of=name[: -len("_scale_inv")])
            continue
        dequant = f"{name}_scale_inv" if info.dtype == "F8_E4M3" and not keep_fp8 else None
        reads[name] = _Read(key, expert, dequant_with=dequant)
        target = state.get(key)
        if target is None or (expert is not None and not 0 <= expert < target.shape[0]):
            raise ConfigError(f"checkpoint tensor {name} has no place in the model (state key {key}"
                              + (f", expert {expert}" if expert is not None else "") + ")")
        want = tuple(target.shape[1:] if expert is not None else target.shape)
        got = _sliced_shape(info.shape, slicer(name, info.shape))
        if got != want:
            raise ConfigError(f"tensor {name} in {info.shard}: this rank's part has shape {list(got)}, but the model "
                              f"parameter {key} needs {list(want)}")
        filled[(key, expert)] = name
    for key, t in state.items():
        rows = range(t.shape[0]) if STACKED_EXPERTS.match(key) else [None]
        for row in rows:
            if (key, row) not in filled:
                raise ConfigError(f"the model parameter {key}" + (f" (expert {row})" if row is not None else "")
                                  + " is not filled by any checkpoint tensor")
    return reads


def _sliced_shape(shape: tuple[int, ...], slices: Optional[Sequence[slice]]) -> tuple[int, ...]:
    if slices is None:
        return tuple(shape)
    return tuple(len(range(*s.indices(n))) for s, n in zip(slices, shape)) + tuple(shape[len(slices):])


def _read(f, info: TensorInfo, slices: Optional[Sequence[slice]]) -> Tensor:
    if slices is None:
        return f.get_tensor(info.name)
    return f.get_slice(info.name)[tuple(slices)]


def _load_one(f, info: TensorInfo, read: _Read, targets: dict[str, Tensor],
              pending: dict[str, tuple[Tensor, TensorInfo]], slicer: TensorSlicer) -> None:
    if read.scale_of is not None:  # a scale consumed by dequantising its weight: read whole (it is small)
        pending[info.name] = (f.get_tensor(info.name), info)
        if read.scale_of in pending:
            _store_dequant(pending.pop(read.scale_of), pending.pop(info.name)[0], read.key, read.expert, targets, slicer)
        return
    t = _read(f, info, slicer(info.name, info.shape))
    if read.dequant_with is None:
        dst = targets[read.key] if read.expert is None else targets[read.key][read.expert]
        dst.copy_(t)
        return
    pending[info.name] = (t, info)
    if read.dequant_with in pending:
        _store_dequant(pending.pop(info.name), pending.pop(read.dequant_with)[0], read.key, read.expert, targets, slicer)


def _store_dequant(weight: tuple[Tensor, TensorInfo], scale: Tensor, key: str, expert: Optional[int],
                   targets: dict[str, Tensor], slicer: TensorSlicer) -> None:
    """dst = this rank's part of the fp8 weight times the scale of its 128 x 128 block, in row chunks."""
    w, info = weight
    dst = targets[key] if expert is None else targets[key][expert]
    rows, cols = _block_index(info.shape, slicer(info.name, info.shape))
    for r0 in range(0, w.shape[0], DEQUANT_ROWS):
        r1 = min(r0 + DEQUANT_ROWS, w.shape[0])
        s = scale.index_select(0, rows[r0:r1]).index_select(1, cols)  # [r, K] fp32
        dst[r0:r1].copy_(w[r0:r1].float() * s)


def _block_index(shape: tuple[int, ...], slices: Optional[Sequence[slice]]) -> tuple[Tensor, Tensor]:
    """The scale block of every row / column of this rank's part of a weight of full `shape`."""
    idx = []
    for dim in range(2):
        sl = slices[dim] if slices is not None and dim < len(slices) else slice(None)
        idx.append(torch.arange(*sl.indices(shape[dim])) // WEIGHT_BLOCK)
    return idx[0], idx[1]


class _Progress:
    """`[dsa] loading shard 3/163 model-00003-of-000163.safetensors  45%  12.1 GiB/642.0 GiB` on stderr,
    rewritten in place; silent when stderr is not a terminal or the load is small."""

    def __init__(self, shards: int, enabled: Optional[bool], total_bytes: int):
        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.on = tty and (enabled or (enabled is None and total_bytes >= PROGRESS_MIN_BYTES))
        self.shards, self.total = shards, total_bytes
        self.done, self.shard_done, self.shard_total, self.label = 0, 0, 0, ""
        self.last = 0.0

    def start(self, i: int, shard: str, nbytes: int) -> None:
        self.label, self.shard_done, self.shard_total = f"shard {i + 1}/{self.shards} {shard}", 0, nbytes
        self._draw(force=True)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self.shard_done += nbytes
        self._draw(force=self.shard_done >= self.shard_total)

    def _draw(self, force: bool) -> None:
        now = time.monotonic()
        if not self.on or (not force and now - self.last < 0.1):
            return
        self.last = now
        pct = 100 * self.shard_done // max(self.shard_total, 1)
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        sys.stderr.write(f"\r[dsa] loading {self.label} [{bar}] {pct:3d}%  {self.done / 2**30:.1f}/"
                         f"{self.total / 2**30:.1f} GiB\x1b[K")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.on:
            sys.stderr.write("\n")
            sys.stderr.flush()
