"""The torch provider's chunked loops, run with more than one chunk.

At the default chunk sizes (dsa/backends/torch/chunks.py) the ops take one pass at the shapes of the
conformance cases, so a wrong chunk offset would pass them. Here the same cases run on provider "torch"
under `torch_chunks(...)` with tiny, odd sizes that do not divide the shapes (and both sparse-MLA prefill
paths forced), plus a few cases at real sizes that take several chunks with the default settings.
"""
from __future__ import annotations

import pytest
import torch

from dsa.backends.torch.chunks import ChunkSizes, current, torch_chunks
from dsa.conformance.cases import test_fp8_linear as fp8_linear_cases
from dsa.conformance.cases import test_indexer_topk as indexer_cases
from dsa.conformance.cases import test_sparse_mla as sparse_mla_cases

TINY = [
    # odd sizes that divide none of the case shapes; every sparse-MLA prefill chunk on one path
    dict(keys=7, queries=3, rows=3, window_rows=2, weight_rows=37, path="window"),
    dict(keys=1, queries=1, rows=1, window_rows=1, weight_rows=131, path="gather"),
    dict(keys=13, queries=4, rows=5, window_rows=3, weight_rows=128, path="auto"),
]
TINY_IDS = ["k7_r3_w37_window", "k1_r1_w131_gather", "k13_r5_w128_auto"]


@pytest.fixture(params=TINY, ids=TINY_IDS)
def tiny(request):
    with torch_chunks(**request.param):
        yield


def _case_params(cases):
    return pytest.mark.parametrize("case", cases, ids=[c[0] for c in cases])


@_case_params(indexer_cases.CASES)
def test_indexer_topk_tiny_chunks(tiny, case):
    indexer_cases.test_indexer_topk("torch", *case)


@_case_params(sparse_mla_cases.PREFILL_CASES)
def test_sparse_mla_prefill_tiny_chunks(tiny, case):
    sparse_mla_cases.test_sparse_mla_prefill("torch", *case)


@_case_params(sparse_mla_cases.DECODE_CASES)
def test_sparse_mla_decode_tiny_chunks(tiny, case):
    sparse_mla_cases.test_sparse_mla_decode("torch", *case)


@pytest.mark.parametrize("ue8m0", [False, True], ids=["plain", "ue8m0"])
@_case_params(fp8_linear_cases.CASES)
def test_fp8_linear_tiny_chunks(tiny, case, ue8m0):
    fp8_linear_cases.test_fp8_linear("torch", *case, ue8m0)


# ---------------------------------------------------------------- real sizes, default chunk budget


@pytest.mark.parametrize("queries", [None, 1], ids=["default", "one_query_per_chunk"])
def test_indexer_topk_more_keys_than_a_chunk(queries):
    """5200 keys (> 4096 per chunk): two key chunks, one query per chunk included (the matrix-vector path)."""
    assert ChunkSizes().keys == 4096
    with torch_chunks(queries=queries):
        indexer_cases.test_indexer_topk("torch", "fp8_671B_decode_5200_keys", 64, 128, "fp8", (4500, 1, 700, 1), 2048)


def test_sparse_mla_prefill_default_row_chunks():
    """top-k 2048 of 671B's 576-dim latent: ~6 rows per chunk by the default budget, so 13 rows take 3 chunks."""
    assert current() == ChunkSizes()
    for path in ("window", "gather"):
        with torch_chunks(path=path):
            sparse_mla_cases.test_sparse_mla_prefill(
                "torch", "bf16_671B_K2048", 13, 16, 512, 64, 2100, 2048, torch.bfloat16
            )


def test_fp8_linear_default_weight_slices():
    """K=7168: 2304 weight rows per slice by the default budget, so N=2440 takes two slices (the last partial)."""
    assert current() == ChunkSizes()
    fp8_linear_cases.test_fp8_linear("torch", "bf16_7168_to_2440", (3, 7168), 2440, torch.bfloat16, False)


def test_chunk_settings_restored():
    with torch_chunks(keys=3, path="gather"):
        assert current().keys == 3 and current().path == "gather"
    assert current() == ChunkSizes()
    with pytest.raises(ValueError):
        ChunkSizes(rows=0)
