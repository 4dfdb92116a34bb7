"""sparse_mla_prefill and sparse_mla_decode (bf16 / fp32 / packed fp8 cache) against dense masked fp64 attention."""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.calling import call_op
from dsa.conformance.inputs import paged_cache, randn, rng, sparse_indices
from dsa.conformance.reference.compare import assert_close
from dsa.conformance.reference.ops import ref_sparse_mla_decode, ref_sparse_mla_prefill
from dsa.conformance.tolerances import LSE, out_tol

SM_SCALE_671B = 0.1352338  # 192^-0.5 * mscale^2 (docs/model-and-ops.md 2.1)


def check(out, lse, out_ref, lse_ref, dtype, label):
    assert out.dtype == dtype and lse.dtype == torch.float32
    tol = out_tol(dtype)
    assert_close(out, out_ref, tol.atol, tol.rtol, tol.cos_eps, f"{label} out")
    assert_close(lse, lse_ref, LSE.atol, LSE.rtol, LSE.cos_eps, f"{label} lse")


PREFILL_CASES = [
    # (name, T, H, d_v, rope, S, K, dtype); n_valid per row varies, rows shorter than K, row 0 empty
    ("bf16_671B_H16", 13, 16, 512, 64, 50, 32, torch.bfloat16),
    ("bf16_671B_H128", 5, 128, 512, 64, 40, 24, torch.bfloat16),
    ("fp32_small_S_lt_K", 7, 3, 64, 16, 9, 16, torch.float32),  # the sequence is shorter than top-k
]


@pytest.mark.op("sparse_mla_prefill")
@pytest.mark.parametrize("name,T,H,d_v,rope,S,K,dtype", PREFILL_CASES, ids=[c[0] for c in PREFILL_CASES])
def test_sparse_mla_prefill(provider, name, T, H, d_v, rope, S, K, dtype):
    g = rng(len(name))
    Dqk = d_v + rope
    q = randn((T, H, Dqk), g, dtype)
    kv = randn((S, 1, Dqk), g, dtype)
    n_valid = torch.randint(1, K + 1, (T,), generator=g).tolist()
    n_valid[-1] = K  # one full row
    indices = sparse_indices(T, K, S, g, n_valid)
    scale = SM_SCALE_671B if d_v == 512 else Dqk**-0.5

    out, lse = call_op("sparse_mla_prefill", provider, q, kv, indices, scale, d_v)
    assert out.shape == (T, H, d_v) and lse.shape == (T, H)
    out_ref, lse_ref = ref_sparse_mla_prefill(q, kv, indices, scale, d_v)
    check(out, lse, out_ref, lse_ref, dtype, f"prefill {name}")
    assert torch.isposinf(lse[0]).all() and (out[0] == 0).all(), "row without a valid index: out 0, lse +inf"


DECODE_CASES = [
    # (name, seq_lens, s_q, H, d_v, rope, page, K, q dtype, cache kind)
    ("bf16_671B_cache_bf16", [37, 0, 5], 1, 16, 512, 64, 16, 32, torch.bfloat16, "bf16"),
    ("bf16_671B_cache_fp8_656B", [37, 5, 70], 2, 16, 512, 64, 64, 48, torch.bfloat16, "fp8"),
    ("fp32_small_cache_fp32", [11, 3], 2, 4, 128, 64, 4, 16, torch.float32, "fp32"),
    ("fp32_small_cache_fp8", [9, 0, 13], 1, 3, 128, 32, 8, 8, torch.float32, "fp8"),
]


@pytest.mark.op("sparse_mla_decode")
@pytest.mark.parametrize(
    "name,seq_lens,s_q,H,d_v,rope,page,K,dtype,cache_kind", DECODE_CASES, ids=[c[0] for c in DECODE_CASES]
)
def test_sparse_mla_decode(provider, name, seq_lens, s_q, H, d_v, rope, page, K, dtype, cache_kind):
    g = rng(len(name))
    B, Dqk = len(seq_lens), d_v + rope
    q = randn((B, s_q, H, Dqk), g, dtype)
    latent = randn((B, max(seq_lens), Dqk), g)
    cache_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp8": None}[cache_kind]
    kv_cache, block_table = paged_cache(seq_lens, page, latent, d_v, cache_kind == "fp8", g, dtype=cache_dtype)
    indices = torch.stack(
        [
            # row 0 of the builder is empty
            sparse_indices(s_q + 1, K, n, g, [K // 2 + 3 * j for j in range(s_q + 1)])[1:]
            for n in seq_lens
        ]
    )  # [B, s_q, K]; sequences with seq_len 0 get only invalid entries
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
    scale = SM_SCALE_671B if d_v == 512 else Dqk**-0.5

    out, lse = call_op("sparse_mla_decode", provider, q, kv_cache, block_table, seq_lens_t, indices, scale, d_v)
    assert out.shape == (B, s_q, H, d_v) and lse.shape == (B, s_q, H)
    out_ref, lse_ref = ref_sparse_mla_decode(q, kv_cache, block_table, seq_lens_t, indices, scale, d_v)
    check(out, lse, out_ref, lse_ref, dtype, f"decode {name}")
