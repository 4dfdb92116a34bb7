"""HAL op `sparse_mla_decode`: sparse MLA over a paged latent cache (bf16 or packed fp8)."""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.hal import kv_format
from dsa.hal.library import hal_op


def _fake(
    q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor, sm_scale: float, d_v: int,
    provider: str,
):
    B, s_q, H, _ = q.shape
    dt = q.dtype
    return q.new_empty((B, s_q, H, d_v), dtype=dt), q.new_empty((B, s_q, H), dtype=torch.float32)


@hal_op(_fake)
def sparse_mla_decode(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    indices: Tensor,
    sm_scale: float,
    d_v: int,
    provider: str,
) -> tuple[Tensor, Tensor]:
    """Sparse attention for decode steps, reading keys straight from the paged latent cache.

    q            [B, s_q, H, Dqk]  bf16 / fp32 (s_q query tokens per sequence, usually 1)
    kv_cache     [num_blocks, page, 1, Dqk] bf16 / fp32, or
                 [num_blocks, page, 1, P] uint8 in the packed fp8 token layout of
                 `dsa.hal.kv_format` (P = 656 for 671B); the cache's dtype says which
    block_table  [B, max_blocks] int32: logical page j of sequence b lives in block block_table[b, j]
    seq_lens     [B] int32: number of valid cached tokens of each sequence
    indices      [B, s_q, K] int32 LOGICAL token positions within the sequence (0 <= p < seq_lens[b]);
                 -1 (or any position outside [0, seq_lens[b])) = skip. Distinct within a row.
    sm_scale, d_v  as in sparse_mla_prefill

    The token at logical position p of sequence b is kv_cache[block_table[b, p // page], p % page, 0]
    (dequantised first when packed fp8). Then the same formulas as sparse_mla_prefill:
    out [B, s_q, H, d_v] in q.dtype, lse [B, s_q, H] fp32 (natural log), out 0 / lse +inf for a row
    with no valid index.
    """
    raise NotImplementedError

def onnx_translation():
    """This op in standard ONNX ops (dsa.hal.onnx_graph.sparse_mla_decode), for custom_translation_table;
    imports onnxscript (the `onnx` extra) only when asked."""
    from dsa.hal import onnx_graph

    def sparse_mla_decode_onnx(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v, provider):
        return onnx_graph.sparse_mla_decode(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v)

    return sparse_mla_decode_onnx



def check_args(q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor, d_v: int) -> None:
    """The contract's shape rules, shared by every provider: a ValueError naming the mismatch."""
    if q.dim() != 4 or kv_cache.dim() != 4 or kv_cache.shape[2] != 1 or indices.dim() != 3:
        raise ValueError(f"sparse_mla_decode: expected q [B, s_q, H, D], kv_cache [blocks, page, 1, D or P], "
                         f"indices [B, s_q, K]; got {tuple(q.shape)}, {tuple(kv_cache.shape)}, {tuple(indices.shape)}")
    B, s_q, _, D = q.shape
    if (indices.shape[:2] != (B, s_q) or block_table.dim() != 2 or block_table.shape[0] != B
            or tuple(seq_lens.shape) != (B,)):
        raise ValueError(f"sparse_mla_decode: batch mismatch: q {tuple(q.shape)}, indices {tuple(indices.shape)}, "
                         f"block_table {tuple(block_table.shape)}, seq_lens {tuple(seq_lens.shape)}")
    if not 0 < d_v <= D:
        raise ValueError(f"sparse_mla_decode: d_v={d_v} must be in (0, {D}]")
    if kv_cache.dtype == torch.uint8:
        width = kv_format.packed_bytes(d_v, D - d_v)
        if kv_cache.shape[-1] != width:
            raise ValueError(f"sparse_mla_decode: packed fp8 cache rows are {kv_cache.shape[-1]} bytes, but q "
                             f"(D={D}, d_v={d_v}) needs {width}")
    elif kv_cache.shape[-1] != D:
        raise ValueError(f"sparse_mla_decode: cache head dim {kv_cache.shape[-1]} != q head dim {D}")
