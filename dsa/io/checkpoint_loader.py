"""HF safetensors checkpoints (docs/model-and-ops.md 3): open, check, and load straight into the model - no
conversion step.

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
`load_model(..., parallel=groups)` shards the meta model with dsa.model.parallel.parallelize and uses the
slicer it returns. Held routed experts fill the stacked expert rows in expert order.

The multi-token-prediction layer (ModelConfig.is_mtp_layer: stored after the decoder layers, layer 61
in the 671B release) is not read: plain decoding does not use it. The skip is logged once per checkpoint.

Parts: dsa.io.safetensors_header (TensorInfo, read_header: one shard's header, bounds-checked),
dsa.io.checkpoint (Checkpoint, open_checkpoint, validate: the directory, its index and headers) and
this module (load_model: read planning, per-rank slicing, fp8 dequantisation); the public names of
all three are importable from here.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from dsa.errors import CheckpointError, ConfigError
from dsa.io.checkpoint import INDEX_FILE, MAX_LISTED_PROBLEMS, SINGLE_FILE, Checkpoint, open_checkpoint
from dsa.io.safetensors_header import FLOAT_DTYPES, MAX_HEADER_BYTES, ST_DTYPES, ST_NAME, TensorInfo, read_header
from dsa.model.layers import WEIGHT_BLOCK
from dsa.model.parallel import NOT_HELD
from dsa.model.transformer import EXPERT_NAME

STACKED_EXPERTS = re.compile(r"^model\.layers\.\d+\.mlp\.experts\.(gate_proj|up_proj|down_proj)(_scale_inv)?$")

PROGRESS_MIN_BYTES = 256 << 20  # a progress line is worth it above this much data (and on a terminal)
DEQUANT_ROWS = 32 * WEIGHT_BLOCK  # dequantise in row chunks, so the fp32 temporaries stay small

TensorSlicer = Callable[[str, tuple[int, ...]], Optional[tuple[slice, ...]]]
"""(HF tensor name, its full shape) -> the slices (one per dim) this rank holds, None for all of it, or
NOT_HELD for none of it. The result must have the shape of the model parameter (or expert row) the
tensor lands in."""


def FULL(name: str, shape: tuple[int, ...]) -> None:
    """The single-device slicer: every rank needs every tensor whole."""
    return None


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
    dsa.model.parallel_groups.ParallelGroups; the model is sharded for its layout and each rank reads its parts.
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
    empty = {k: torch.empty(v.shape, dtype=v.dtype, device=device) for k, v in model.state_dict().items()}
    model.load_state_dict(empty, strict=True, assign=True)
    targets = model.state_dict()

    by_shard: dict[str, list[TensorInfo]] = {}
    for t in ckpt.tensors.values():
        if t.name in reads:  # tensors this rank holds no part of are not read
            by_shard.setdefault(t.shard, []).append(t)
    total = sum(t.nbytes for ts in by_shard.values() for t in ts)
    bar = _Progress(len(by_shard), enabled=progress, total_bytes=total)
    # fp8 weights / scales waiting for their partner (possibly in a later shard)
    pending: dict[str, tuple[Tensor, TensorInfo]] = {}
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
            _store_dequant(pending.pop(read.scale_of), pending.pop(info.name)[0], read.key, read.expert, targets,
                           slicer)
        return
    t = _read(f, info, slicer(info.name, info.shape))
    if read.dequant_with is None:
        dst = targets[read.key] if read.expert is None else targets[read.key][read.expert]
        dst.copy_(t)
        return
    pending[info.name] = (t, info)
    if read.dequant_with in pending:
        _store_dequant(pending.pop(info.name), pending.pop(read.dequant_with)[0], read.key, read.expert, targets,
                       slicer)


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


__all__ = ["load_model", "TensorSlicer", "FULL", "Checkpoint", "open_checkpoint", "TensorInfo", "read_header",
           "INDEX_FILE", "SINGLE_FILE", "MAX_HEADER_BYTES", "MAX_LISTED_PROBLEMS", "ST_DTYPES", "ST_NAME",
           "FLOAT_DTYPES", "PROGRESS_MIN_BYTES", "DEQUANT_ROWS", "STACKED_EXPERTS"]
