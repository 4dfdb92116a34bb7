"""indexer_topk against the oracle's full fp64 score matrix, compared as sets (tie-aware)."""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.calling import call_op
from dsa.conformance.inputs import quantize_rows, randn, rng
from dsa.conformance.reference.compare import assert_topk_equivalent
from dsa.conformance.reference.ops import ref_indexer_scores, ref_topk_count
from dsa.conformance.tolerances import TOPK_TIE

pytestmark = pytest.mark.op("indexer_topk")


def ranges_two_sequences(len_a: int, new_a: int, len_b: int, new_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal [starts, ends) for the new tokens of two sequences packed as keys [0, len_a) + [len_a, len_a+len_b),
    plus two rows with an empty range (starts == ends)."""
    starts, ends = [], []
    for offset, length, new in ((0, len_a, new_a), (len_a, len_b, new_b)):
        for pos in range(length - new, length):
            starts.append(offset)
            ends.append(offset + pos + 1)
    starts += [0, len_a + 3]
    ends += [0, len_a + 3]
    return torch.tensor(starts, dtype=torch.int32), torch.tensor(ends, dtype=torch.int32)


def indexer_inputs(T: int, S: int, H: int, D: int, kind, g: torch.Generator):
    """q [T,H,D], weights [T,H] (signed, from weights_proj), k [S,D], k_scale [S]; fp8 = docs/model-and-ops.md 2.2."""
    q, k = randn((T, H, D), g), randn((S, D), g)
    weights = randn((T, H), g) * H**-0.5 * D**-0.5
    if kind == "fp8":  # one scale per head vector / key (block of D); q's scale folds into weights
        q8, q_scale = quantize_rows(q.reshape(T * H, D), block=D)
        k8, k_scale = quantize_rows(k, block=D)
        return q8.reshape(T, H, D), weights * q_scale.reshape(T, H), k8, k_scale.reshape(S)
    return q.to(kind), weights, k.to(kind), torch.ones(S)


CASES = [
    # (name, H, D, kind, (len_a, new_a, len_b, new_b), topk)
    ("fp8_671B_prefill", 64, 128, "fp8", (20, 7, 30, 4), 8),  # T=13 incl. 2 empty rows; short rows < topk
    ("fp8_671B_decode_long", 64, 128, "fp8", (300, 1, 150, 1), 64),
    ("bf16_topk_2048_gt_len", 4, 32, torch.bfloat16, (9, 3, 40, 2), 2048),  # everything visible selected
    ("fp32_ties", 5, 16, torch.float32, (24, 5, 16, 6), 6),  # duplicated keys: exact score ties
]


@pytest.mark.parametrize("name,H,D,kind,lens,topk", CASES, ids=[c[0] for c in CASES])
def test_indexer_topk(provider, name, H, D, kind, lens, topk):
    g = rng(len(name))
    starts, ends = ranges_two_sequences(*lens)
    T, S = starts.shape[0], lens[0] + lens[2]
    q, weights, k, k_scale = indexer_inputs(T, S, H, D, kind, g)
    if name.endswith("ties"):
        k[1::3] = k[0]  # every third key equals key 0
        k[5] = 0  # a key scoring exactly 0 for everyone

    # the model's bound: the longest sequence (a host int: the provider need not read starts / ends)
    idx = call_op("indexer_topk", provider, q, weights, k, k_scale, starts, ends, topk, max(lens[0], lens[2]))
    assert idx.dtype == torch.int32 and idx.shape == (T, topk)
    ref = ref_indexer_scores(q, weights, k, k_scale, starts, ends)
    assert_topk_equivalent(idx, ref, ref_topk_count(starts, ends, topk), tie_tol=TOPK_TIE)


def ranges_packed(seqs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal [starts, ends) of the new tokens of sequences (length, new tokens) packed one after the other."""
    starts, ends, offset = [], [], 0
    for length, new in seqs:
        for pos in range(length - new, length):
            starts.append(offset)
            ends.append(offset + pos + 1)
        offset += length
    return torch.tensor(starts, dtype=torch.int32), torch.tensor(ends, dtype=torch.int32)


# A continuous-batching step: decode rows of many sequences, a prefill chunk of a long one in the middle (rows
# whose neighbours must not be scored against its 1500 keys), short sequences below top-k, a one-token prompt.
MANY = [(5, 1), (40, 1), (1500, 60), (33, 1), (7, 7), (1, 1), (260, 1), (90, 30), (16, 1)]


@pytest.mark.parametrize("kind", ["fp8", torch.float32], ids=["fp8", "fp32"])
def test_indexer_topk_many_sequences(provider, kind):
    g = rng(99)
    starts, ends = ranges_packed(MANY)
    T, S = starts.shape[0], sum(n for n, _ in MANY)
    q, weights, k, k_scale = indexer_inputs(T, S, 8, 64, kind, g)
    idx = call_op("indexer_topk", provider, q, weights, k, k_scale, starts, ends, 32, None)  # no bound given
    assert idx.dtype == torch.int32 and idx.shape == (T, 32)
    ref = ref_indexer_scores(q, weights, k, k_scale, starts, ends)
    assert_topk_equivalent(idx, ref, ref_topk_count(starts, ends, 32), tie_tol=TOPK_TIE)
