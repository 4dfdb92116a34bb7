"""HAL op `sparse_mla_prefill`: MLA in absorbed (MQA) form over selected keys, contiguous kv."""
from __future__ import annotations

import torch
from torch import Tensor

from dsa.hal.library import hal_op


def _fake(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int, provider: str):
    T, H, _ = q.shape
    return q.new_empty((T, H, d_v)), q.new_empty((T, H), dtype=torch.float32)


@hal_op(_fake)
def sparse_mla_prefill(
    q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int, provider: str
) -> tuple[Tensor, Tensor]:
    """Sparse attention of every query head over the keys its token selected.

    q        [T, H, Dqk]  bf16 / fp32; Dqk = kv_lora_rank + qk_rope_head_dim (576 for 671B)
    kv       [S, 1, Dqk]  same dtype; one latent head shared by all query heads. The value is
                          kv[..., :d_v] (d_v = kv_lora_rank = 512 for 671B)
    indices  [T, K]       int32 positions into kv; -1 (or any value outside [0, S)) = skip. Valid
                          positions of one row are distinct. Shared by all H heads of the token.
    sm_scale float        softmax scale applied to q . k

    With V_t = the valid indices of row t:
        p[t, h, s] = softmax_{s in V_t}(sm_scale * q[t, h] . kv[s])
        out[t, h]  = sum_{s in V_t} p[t, h, s] * kv[s, :d_v]         -> [T, H, d_v], q.dtype
        lse[t, h]  = log sum_{s in V_t} exp(sm_scale * q[t, h] . kv[s])  (natural log) -> [T, H] fp32
    A row with no valid index gives out = 0 and lse = +inf (the FlashMLA convention).
    Accumulation in fp32 at least.
    """
    raise NotImplementedError

def onnx_translation():
    """This op in standard ONNX ops (dsa.hal.onnx_graph.sparse_mla_prefill), for custom_translation_table;
    imports onnxscript (the `onnx` extra) only when asked."""
    from dsa.hal import onnx_graph

    def sparse_mla_prefill_onnx(q, kv, indices, sm_scale, d_v, provider):
        return onnx_graph.sparse_mla_prefill(q, kv, indices, sm_scale, d_v)

    return sparse_mla_prefill_onnx



def check_args(q: Tensor, kv: Tensor, indices: Tensor, d_v: int) -> None:
    """The contract's shape rules, shared by every provider: a ValueError naming the mismatch."""
    if q.dim() != 3 or kv.dim() != 3 or kv.shape[1] != 1 or indices.dim() != 2:
        raise ValueError(f"sparse_mla_prefill: expected q [T, H, D], kv [S, 1, D], indices [T, K]; got "
                         f"{tuple(q.shape)}, {tuple(kv.shape)}, {tuple(indices.shape)}")
    T, _, D = q.shape
    if kv.shape[2] != D or indices.shape[0] != T or not 0 < d_v <= D:
        raise ValueError(f"sparse_mla_prefill: inconsistent shapes q {tuple(q.shape)}, kv {tuple(kv.shape)}, "
                         f"indices {tuple(indices.shape)}, d_v {d_v}")
