"""safetensors shard headers: the 8-byte length, the JSON header and the bounds of every tensor, checked
without reading any tensor data (a truncated download or a corrupt header is one clear CheckpointError).

    infos = read_header(Path("model-00001-of-000163.safetensors"))  # name -> TensorInfo
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from dsa.errors import CheckpointError
from dsa.model.fields import read_json

MAX_HEADER_BYTES = 100 << 20  # safetensors caps the JSON header at 100 MB
MAX_RANK = 16  # dimensions of one tensor (the model's have at most 3); bounds the size arithmetic

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
        raise CheckpointError(f"shard {path} is truncated: {size} bytes, too short for a safetensors header; "
                              f"{redownload}")
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"shard {path}: corrupt safetensors header (declared length {n} bytes); {redownload}")
    if n > size - 8:
        raise CheckpointError(f"shard {path} is truncated: its header needs {n + 8} bytes, the file has {size}; "
                              f"{redownload}")
    header = read_json(raw, lambda why: CheckpointError(
        f"shard {path}: corrupt safetensors header (not valid JSON: {why}); {redownload}"))
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
        if not isinstance(dtype, str) or not _int_list(shape) or len(shape) > MAX_RANK or not _int_list(offsets) \
                or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
            raise CheckpointError(f"{bad} (expected dtype, shape and data_offsets [begin, end]); {redownload}")
        itemsize = ST_DTYPES.get(dtype, (None, None))[1]
        if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise CheckpointError(f"{bad}: {dtype} {shape} needs {math.prod(shape) * itemsize} bytes, "
                                  f"data_offsets {offsets} span {offsets[1] - offsets[0]}; {redownload}")
        infos[name] = TensorInfo(name, shard, dtype, tuple(shape), (offsets[0], offsets[1]))
        data_end = max(data_end, offsets[1])
    if 8 + n + data_end > size:
        last = max(infos.values(), key=lambda t: t.data_offsets[1]).name
        raise CheckpointError(f"shard {path} is truncated: {size} bytes, but its header places tensor {last} up to "
                              f"byte {8 + n + data_end}; {redownload}")
    return infos


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


__all__ = ["TensorInfo", "read_header", "ST_DTYPES", "FLOAT_DTYPES", "ST_NAME", "MAX_HEADER_BYTES"]
