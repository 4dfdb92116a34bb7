"""The torch indexer's key windows: each query row is scored against a window holding its own visible keys,
neighbouring runs merged only while the merge wastes few scores."""
from __future__ import annotations

import torch

from dsa.backends.torch.indexer import MERGE_SLACK_MACS, windows

HD = 256  # tiny model: 4 heads x 64


def _w(starts, ends):
    return windows(torch.tensor(starts, dtype=torch.int32), torch.tensor(ends, dtype=torch.int32), HD)


def test_rows_always_inside_their_window():
    starts = [0, 0, 0, 10, 10, 5000, 5000, 9000]
    ends = [1, 2, 3, 11, 12, 5001, 9000, 9001]
    for t0, t1, lo, hi in _w(starts, ends):
        for t in range(t0, t1):
            assert lo <= starts[t] and ends[t] <= hi


def test_short_decode_rows_merge_and_a_long_prefill_stays_apart():
    # 64 decode rows of 150-key sequences: merged into a few windows, never one per row
    starts = [150 * b for b in range(64)]
    ends = [150 * b + 150 for b in range(64)]
    got = _w(starts, ends)
    assert 1 < len(got) < 16
    assert all((t1 - t0) * (hi - lo) - (t1 - t0) * 150 <= MERGE_SLACK_MACS // HD for t0, t1, lo, hi in got)
    # a 4000-key prefill of 100 rows between decode rows of 3000-key sequences: three windows
    starts = [0] + [3000] * 100 + [7000]
    ends = [3000] + list(range(6901, 7001)) + [10000]
    assert [(t0, t1) for t0, t1, _, _ in _w(starts, ends)] == [(0, 1), (1, 101), (101, 102)]
    # a short sequence's decode row next to it costs little: merged
    starts = [0] + [10] * 100
    ends = [10] + list(range(3911, 4011))
    assert [(t0, t1) for t0, t1, _, _ in _w(starts, ends)] == [(0, 101)]


def test_empty_rows():
    assert _w([0, 3], [0, 3]) == [(0, 2, 0, 3)]
