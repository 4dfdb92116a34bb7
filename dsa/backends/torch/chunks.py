"""The chunk sizes of the torch provider, read by each op at call time.

The ops bound their peak memory by working in chunks (keys of the indexer, query rows of sparse MLA,
weight rows of fp8_linear). At the default sizes the chunked loops only take more than one pass far above
test shapes, so the tests shrink them with `torch_chunks` to make every loop boundary run:

    with torch_chunks(keys=7, rows=3, weight_rows=5):
        ...  # the same calls, now in many small (odd-sized) chunks

The model never sets these; `torch_chunks` is for tests (and for measuring the chunk budget).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional

BUDGET_BYTES = 64 * 1024 * 1024  # one chunk's temporaries (~64 MiB): peak memory does not grow with the shapes


@dataclasses.dataclass(frozen=True)
class ChunkSizes:
    """None = derived from `budget_bytes` and the shapes of the call (the production setting)."""

    keys: int = 4096  # indexer_topk: keys scored at a time
    queries: Optional[int] = None  # indexer_topk: queries scored per chunk
    rows: Optional[int] = None  # sparse MLA: query rows attended per chunk
    window_rows: Optional[int] = None  # sparse MLA prefill, window path: rows per dense score block
    weight_rows: Optional[int] = None  # fp8_linear: weight rows dequantised per slice (any size >= 1)
    path: str = "auto"  # sparse MLA prefill per row chunk: "auto" (by cost), "window" or "gather"
    budget_bytes: int = BUDGET_BYTES

    def __post_init__(self):
        for name in ("keys", "queries", "rows", "window_rows", "weight_rows", "budget_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"torch chunk size {name} must be >= 1, got {value}")
        if self.path not in ("auto", "window", "gather"):
            raise ValueError(f"torch chunk path must be auto / window / gather, got {self.path!r}")


_current = ChunkSizes()


def current() -> ChunkSizes:
    """The chunk sizes in force (ChunkSizes() outside `torch_chunks`)."""
    return _current


@contextlib.contextmanager
def torch_chunks(**sizes) -> Iterator[ChunkSizes]:
    """Run the block with some chunk sizes replaced (keyword names of ChunkSizes); restores them after."""
    global _current
    saved = _current
    _current = dataclasses.replace(saved, **sizes)
    try:
        yield _current
    finally:
        _current = saved
