"""dsa/bench/gpu_costs.py: the shape / FLOP / byte arithmetic behind the roofline columns of
`python -m dsa.bench.gpu_ops` (no GPU needed), and that command's refusal to run without a GPU."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def bench():
    from dsa.bench import gpu_costs

    return gpu_costs


def test_671b_dimensions(bench):
    assert (bench.HEADS, bench.D_QK, bench.D_V, bench.TOPK) == (128, 576, 512, 2048)
    assert (bench.INDEX_HEADS, bench.INDEX_DIM) == (64, 128)
    assert (bench.HIDDEN, bench.MOE_INTER, bench.EXPERTS) == (7168, 2048, 256)
    assert bench.TOKEN_BYTES == {"bf16": 1152, "fp8": 512 + 4 * 4 + 2 * 64}
    assert bench.CONTEXTS[0] == 4096 and bench.CONTEXTS[-1] == 128 * 1024


def test_sparse_mla_decode_cost(bench):
    c = bench.sparse_mla_decode_cost(batch=2, context=100_000, cache="fp8")
    assert c.flops == 2 * 2 * 128 * 2048 * (576 + 512)
    # q bf16 + 2048 selected 656-byte tokens per sequence + out bf16 + lse fp32 + int32 indices
    assert c.bytes == 2 * 128 * 576 * 2 + 2 * 2048 * 656 + 2 * 128 * (512 * 2 + 4) + 2 * 2048 * 4
    short = bench.sparse_mla_decode_cost(batch=1, context=1000, cache="bf16")  # fewer tokens than top-k
    assert short.bytes - bench.sparse_mla_decode_cost(batch=1, context=999, cache="bf16").bytes == 1152
    assert not c.fp8  # attention math is bf16 even over an fp8 cache


def test_dense_decode_cost(bench):
    c = bench.dense_decode_cost(64, 65536)
    assert c.flops == 2.0 * 64 * 128 * 65536 * (576 + 512)
    assert c.bytes == 64 * 65536 * 576 * 2 + 64 * 128 * (576 + 512) * 2  # the whole bf16 cache, q and out
    sparse = bench.sparse_mla_decode_cost(64, 65536, "bf16")
    assert c.bytes / sparse.bytes > 25 and c.flops / sparse.flops == 32  # 64K / top-k 2048


def test_sparse_mla_prefill_cost(bench):
    c = bench.sparse_mla_prefill_cost(tokens=4096, context=4096)
    assert c.flops == 2 * 4096 * 128 * 2048 * 1088
    kv = 4096 * 1152  # every cached row once (4096 < 4096 * 2048 selections)
    assert c.bytes == 4096 * 128 * 576 * 2 + kv + 4096 * 128 * (1024 + 4) + 4096 * 2048 * 4


def test_indexer_cost(bench):
    assert bench.causal_pairs(4, 4) == 1 + 2 + 3 + 4
    assert bench.causal_pairs(2, 10) == 9 + 10
    c = bench.indexer_cost(queries=3, keys=50, pairs=40)
    assert c.fp8 and c.flops == 2 * 40 * 64 * 128
    assert c.bytes == 3 * 64 * (128 + 4) + 50 * (128 + 4) + 40 * 8 + 3 * 2048 * 4
    assert bench.indexer_cost(3, 50, 40, fp8=False).bytes > c.bytes


def test_gemm_costs(bench):
    g = bench.grouped_gemm_cost(rows=512, n=2048, k=7168, experts_used=200, fp8=True)
    assert g.flops == 2 * 512 * 2048 * 7168 and g.fp8
    assert g.bytes == 512 * 7168 + 200 * 2048 * 7168 + 512 * 2048 * 2 + 512 * 56 * 4 + 200 * 16 * 56 * 4
    b = bench.grouped_gemm_cost(rows=512, n=2048, k=7168, experts_used=200, fp8=False)
    assert b.bytes == 512 * 7168 * 2 + 200 * 2048 * 7168 * 2 + 512 * 2048 * 2 and not b.fp8
    assert bench.act_quant_cost(10, 200).bytes == 10 * 200 * 3 + 10 * 2 * 4
    lin = bench.fp8_linear_cost(rows=4, n=576, k=7168)
    assert lin.flops == 2 * 4 * 576 * 7168
    assert lin.bytes == 4 * 7168 * 2 + 576 * 7168 + 5 * 56 * 4 + 4 * 576 * 2


def test_roofline_floor_and_achieved(bench):
    peak = bench.PEAKS["H200"]
    assert (peak.bf16_flops, peak.fp8_flops, peak.bytes_per_s) == (790e12, 1580e12, 4.8e12)
    compute = bench.Cost(flops=1580e12, bytes=1.0, fp8=True)
    assert compute.floor_seconds(peak) == pytest.approx(1.0)  # fp8 FLOPs at the fp8 peak
    assert bench.Cost(flops=1580e12, bytes=1.0).floor_seconds(peak) == pytest.approx(2.0)
    memory = bench.Cost(flops=1.0, bytes=9.6e12)
    assert memory.floor_seconds(peak) == pytest.approx(2.0)
    assert bench.Cost(2e12, 3e9).achieved(0.5) == pytest.approx((4.0, 6.0))
    # with 128 heads sharing each selected token, sparse attention is compute-bound even in decode
    # (36.5 GFLOP vs 105 MB for 64 sequences); quantisation is pure bandwidth
    dec = bench.sparse_mla_decode_cost(64, 131072, "fp8")
    assert dec.flops / peak.bf16_flops > dec.bytes / peak.bytes_per_s
    assert bench.act_quant_cost(64, 7168).floor_seconds(peak) == pytest.approx(
        64 * 7168 * 3 / 4.8e12 + 64 * 56 * 4 / 4.8e12
    )
    pre = bench.sparse_mla_prefill_cost(4096, 131072)
    assert pre.flops / peak.bf16_flops > pre.bytes / peak.bytes_per_s


def test_exits_with_a_message_without_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-m", "dsa.bench.gpu_ops", "--only", "act_quant"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode != 0
    assert "needs a CUDA or ROCm GPU" in r.stderr


def test_dense_baseline_is_attention_over_every_token():
    """The dense row of the timing table (SDPA, one shared latent head) computes MLA's absorbed attention."""
    import torch

    from dsa.bench.gpu_ops import dense_decode

    g = torch.Generator().manual_seed(0)
    q, kv = torch.randn(2, 8, 1, 576, generator=g), torch.randn(2, 1, 100, 576, generator=g)
    ref = torch.softmax((q.double() @ kv.double().transpose(-1, -2)) * 576**-0.5, -1) @ kv.double()[..., :512]
    torch.testing.assert_close(dense_decode(q, kv).double(), ref, atol=1e-5, rtol=1e-5)


def test_ratio_lines_compare_dense_with_the_indexer_and_sparse_decode():
    from dsa.bench.gpu_ops import ratio_lines

    times = {("dense", 65536): 16.0, ("indexer", 65536): 1.0, ("sparse_bf16", 65536): 1.0,
             ("sparse_fp8", 65536): 0.5, ("dense", 4096): 2.0}
    floors = {("sparse_bf16", 65536): 0.6, ("sparse_fp8", 65536): 0.3}
    head, *rows = ratio_lines(times, floors)
    assert "dense/idx" in head and len(rows) == 2
    assert rows[0].split()[:2] == ["4K", "2.000"] and rows[0].count("-") >= 5  # only dense was timed at 4K
    cells = rows[1].split()
    assert cells[0] == "64K" and cells[3] == "16.0x" and cells[5] == "60%" and cells[7] == "60%"
    assert cells[8] == "8.0x"  # dense / (indexer + sparse bf16)
