"""indexer_topk: the lightning-indexer logits as a Triton kernel, then torch.topk.

Logits are kept per query as a *window* of its visible keys: row t of the [T, W] buffer holds the keys
starts[t] .. starts[t] + W - 1 (W = the widest visible range), -inf past ends[t]. A decode batch packs
B sequences into the key tensor, so the window is B times narrower than a [T, S] matrix would be.

Kernel design (one program = BLOCK_T queries x BLOCK_S keys of their window)
  * The query tile's heads are flattened into the MMA's M dimension: q [BLOCK_T * H, D] (on GPUs
    BLOCK_T = 1: M = the 64 index heads of the 671B model) times k^T [D, BLOCK_S] -> [BLOCK_T * H,
    BLOCK_S] fp32, one tl.dot (D = 128 is a single K step). fp8 operands go to the tensor cores as fp8
    (or the device's substitute, numerics.FP8_*); bf16 / fp16 natively; fp32 in IEEE precision.
  * ReLU, times the head weight of its (query, head) row, then a sum over the heads (a reshape to
    [BLOCK_T, H, BLOCK_S] and a reduction), times k_scale[s] -> scores [BLOCK_T, BLOCK_S] fp32.
  * Keys outside [starts[t], ends[t]) are -inf. A key tile no query of the tile sees is not computed.
Heads and D are padded to powers of two with masked (zero) loads, so any H / D works. Under the
interpreter BLOCK_T is large (few programs) and the host pre-fills the window with -inf.

Top-k: torch.topk over the windows of a chunk of queries (chunks bound the buffer), window columns
turned back into key positions, -inf picks into -1: valid entries first, then -1 padding, as the
contract says. (A fused in-kernel top-k is the next step; the issue allows torch.topk at first.)
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from dsa.backends.triton.common import INTERPRETING, may_read_host, tensors_reason
from dsa.backends.triton.numerics import (
    FP8,
    FP8_F32,
    FP8_FP16,
    FP8_NATIVE,
    cdiv,
    fp8_dot_factor,
    fp8_mode,
    fp8_operand,
    next_pow2,
)
from dsa.hal.indexer_topk import args_reason as contract_reason
from dsa.hal.indexer_topk import widest_visible

# Budget of one chunk's [Tc, S] fp32 logits (the chunk is then top-k'd and dropped).
_CHUNK_BYTES = 512 * 1024 * 1024

KIND_FP8, KIND_NATIVE, KIND_F32 = 0, 1, 2  # how q / k reach tl.dot (constexpr KIND)


@triton.jit
def _indexer_logits_kernel(
    q_ptr, w_ptr, k_ptr, ks_ptr, starts_ptr, ends_ptr, out_ptr,
    T, S, W,  # T queries of this chunk (q, w, starts, ends, out offset to it); out is [T, W]
    H: tl.constexpr, D: tl.constexpr,  # index heads and head dim (64 / 128 for the 671B model)
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, H_P2: tl.constexpr, D_P2: tl.constexpr,
    KIND: tl.constexpr,  # KIND_FP8 / KIND_NATIVE (bf16, fp16 MMA) / KIND_F32 (fp32 operands, IEEE dot)
    FP8_MODE: tl.constexpr, DOT_FACTOR: tl.constexpr,
):
    """out[t, c] = score(t, starts[t] + c) for c < ends[t] - starts[t], else -inf (c < W).

    Program (pid_t, pid_j) scores the keys [lo + pid_j * BLOCK_S, + BLOCK_S), lo = the smallest start
    of its queries, against each of its BLOCK_T queries. With BLOCK_T = 1 (GPUs) the programs of a
    query cover its whole row; with BLOCK_T > 1 the host pre-fills `out` with -inf.
    """
    pid_t = tl.program_id(0)
    pid_j = tl.program_id(1)
    t0 = pid_t * BLOCK_T
    lt = tl.arange(0, BLOCK_T)  # [BT] queries (local)
    ls = tl.arange(0, BLOCK_S)  # [BS] keys (local)
    t_ok = t0 + lt < T
    st = tl.load(starts_ptr + t0 + lt, mask=t_ok, other=0).to(tl.int32)
    en = tl.load(ends_ptr + t0 + lt, mask=t_ok, other=0).to(tl.int32)
    lo = tl.min(tl.where(t_ok, st, 2147483647))
    s0 = lo + pid_j * BLOCK_S
    ss = s0 + ls  # [BS] absolute key positions
    s_ok = (ss >= 0) & (ss < S)
    visible = (ss[None, :] >= st[:, None]) & (ss[None, :] < en[:, None]) & s_ok[None, :]  # [BT, BS]

    # Does any query of this tile see any key of it? (else: all -inf, no math)
    seen = t_ok & (st < en)
    hi = tl.max(tl.where(seen, en, 0))
    lo_seen = tl.min(tl.where(seen, st, 2147483647))
    if tl.minimum(hi - s0, s0 + BLOCK_S - lo_seen) > 0:
        # rows of the flattened (query, head) tile; 64-bit tile bases, 32-bit offsets inside a tile
        r = tl.arange(0, BLOCK_T * H_P2)
        rt = r // H_P2
        rh = r % H_P2
        r_ok = (t0 + rt < T) & (rh < H)
        dd = tl.arange(0, D_P2)
        d_ok = dd < D
        q_tile = q_ptr + t0.to(tl.int64) * (H * D)
        q = tl.load(q_tile + (rt * H + rh)[:, None] * D + dd[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0)
        k_tile = k_ptr + s0.to(tl.int64) * D
        k = tl.load(k_tile + ls[:, None] * D + dd[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0)
        if KIND == 0:
            qo = fp8_operand(q, FP8_MODE)
            ko = fp8_operand(k, FP8_MODE)
            if FP8_MODE == 3:  # FP8_F32 (the interpreter): exact fp32 operands
                logits = tl.dot(qo, tl.trans(ko), input_precision="ieee")
            else:
                logits = tl.dot(qo, tl.trans(ko))
        elif KIND == 1:
            logits = tl.dot(q, tl.trans(k))
        else:
            logits = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        w = tl.load(w_ptr + t0.to(tl.int64) * H + (rt * H + rh), mask=r_ok, other=0.0)  # [BT * H_P2] fp32
        logits = tl.maximum(logits, 0.0) * w[:, None]  # relu(q . k) * w
        score = tl.sum(tl.reshape(logits, (BLOCK_T, H_P2, BLOCK_S)), axis=1)  # [BT, BS]
        ks = tl.load(ks_ptr + ss, mask=s_ok, other=0.0)
        if DOT_FACTOR != 1.0:
            ks = ks * DOT_FACTOR
        score = score * ks[None, :]
    else:
        score = tl.zeros((BLOCK_T, BLOCK_S), dtype=tl.float32)
    score = tl.where(visible, score, float("-inf"))
    col = ss[None, :] - st[:, None]  # [BT, BS] column of key s in query t's window
    out = out_ptr + t0.to(tl.int64) * W + (lt[:, None] * W + col)
    tl.store(out, score, mask=t_ok[:, None] & (col >= 0) & (col < W))


def _kind(dtype: torch.dtype) -> int:
    if dtype == FP8:
        return KIND_FP8
    if dtype == torch.float32 or INTERPRETING:  # the interpreter: bf16 math is broken, fp16 slow
        return KIND_F32
    return KIND_NATIVE


def _tiles(T: int, h_p2: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_S, num_warps)."""
    if may_read_host():  # few, large programs (their spans are read on the host)
        return max(1, min(next_pow2(T), 2048 // h_p2)), 512, 4
    # One query per program: its H heads are the MMA's M (64 for the 671B indexer) and every
    # program's keys are its own sequence's (decode batches pack many sequences).
    return 1, 128, 4


def _launch(q, weights, k, k_scale, starts, ends, out) -> None:
    """Windowed logits of queries q [Tc, H, D] into out [Tc, W] (see the kernel's docstring)."""
    T, H, D = q.shape
    S = k.shape[0]
    W = out.shape[1]
    kind = _kind(q.dtype)
    mode = fp8_mode(q.device) if kind == KIND_FP8 else FP8_F32
    if kind == KIND_FP8:
        q, k = q.view(torch.uint8), k.view(torch.uint8)
    h_p2, d_p2 = next_pow2(H), max(32, next_pow2(D))
    block_t, block_s, warps = _tiles(T, h_p2)
    if block_t == 1:
        span = W
    else:  # keys a tile of queries spans, from its smallest start to its largest end (CPU tensors here)
        out.fill_(float("-inf"))
        pad = -T % block_t
        st = torch.nn.functional.pad(starts.long(), (0, pad), value=2**31 - 1).view(-1, block_t)
        en = torch.nn.functional.pad(ends.long(), (0, pad), value=0).view(-1, block_t)
        span = int((en.amax(1) - st.amin(1)).clamp_min(0).max())
    if span <= 0:
        out.fill_(float("-inf"))
        return
    grid = (cdiv(T, block_t), cdiv(span, block_s))
    _indexer_logits_kernel[grid](
        q, weights.float().contiguous(), k, k_scale.float().contiguous(), starts.contiguous(), ends.contiguous(), out,
        T, S, W, H=H, D=D,
        BLOCK_T=block_t, BLOCK_S=block_s, H_P2=h_p2, D_P2=d_p2, KIND=kind,
        FP8_MODE=mode, DOT_FACTOR=fp8_dot_factor(mode) if kind == KIND_FP8 else 1.0,
        num_warps=warps,
    )


def indexer_topk(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
    max_visible: Optional[int] = None,
) -> Tensor:
    """Top-`topk` visible key positions per query, int32 [T, topk], -1 padded. See dsa.hal.indexer_topk."""
    reason = indexer_args(q, weights, k, k_scale, starts, ends, topk, max_visible)
    if reason:
        raise ValueError(f"indexer_topk (triton): {reason}")
    T = q.shape[0]
    out = torch.full((T, topk), -1, dtype=torch.int32, device=q.device)
    if T == 0 or topk == 0 or k.shape[0] == 0:
        return out
    # Each query's logits are a window of width W: the caller's bound (no sync), else the widest visible
    # range read back from the device (one sync). The interpreter (CPU tensors) checks the bound for free.
    if max_visible is None or may_read_host():
        widest = widest_visible(starts, ends, max_visible, "indexer_topk (triton)")
    W = min(max_visible, k.shape[0]) if max_visible is not None else widest
    kk = min(topk, W)
    if kk == 0:
        return out
    q, k = q.contiguous(), k.contiguous()
    chunk = max(1, _CHUNK_BYTES // (4 * W))
    logits = torch.empty((min(chunk, T), W), dtype=torch.float32, device=q.device)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        buf = logits[: t1 - t0]
        _launch(q[t0:t1], weights[t0:t1], k, k_scale, starts[t0:t1], ends[t0:t1], buf)
        vals, idx = torch.topk(buf, kk, dim=1, largest=True, sorted=True)  # -inf (invisible) last
        idx = (idx + starts[t0:t1, None].long()).to(torch.int32)  # window column -> key position
        out[t0:t1, :kk] = idx.masked_fill_(vals == float("-inf"), -1)
    return out


def indexer_logits(q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Windowed scores [T, W] fp32, W = max(ends - starts): column c of query t is key starts[t] + c
    (-inf where c >= ends[t] - starts[t]). For benchmarks and tests; indexer_topk chunks the same."""
    W = widest_visible(starts, ends) if q.shape[0] else 0
    out = torch.empty((q.shape[0], W), dtype=torch.float32, device=q.device)
    if q.shape[0] and W and k.shape[0]:
        _launch(q.contiguous(), weights, k.contiguous(), k_scale, starts, ends, out)
    return out


def indexer_args(q, weights, k, k_scale, starts, ends, topk, max_visible=None) -> Optional[str]:
    reason = contract_reason(q, weights, k, k_scale, starts, ends, topk, max_visible)
    if reason:
        return reason
    if q.dtype != k.dtype or q.dtype not in (FP8, torch.bfloat16, torch.float16, torch.float32):
        return f"q and k must both be fp8 e4m3fn, bf16, fp16 or fp32; got {q.dtype} and {k.dtype}"
    if starts.dtype not in (torch.int32, torch.int64) or ends.dtype not in (torch.int32, torch.int64):
        return f"starts / ends must be int32 / int64, got {starts.dtype} / {ends.dtype}"
    _, H, D = q.shape
    if H > 256 or D > 512:
        return f"H={H} / D={D} exceed the kernel's single-tile limits (H <= 256, D <= 512)"
    return tensors_reason(q, weights, k, k_scale, starts, ends)


def _kernel_spec(label: str, kind: int, mode: int) -> tuple:
    """A compile_check entry: the 671B indexer (64 heads x 128) with the GPU tiles of _tiles()."""
    H, D = 64, 128
    block_t, block_s, warps = _tiles(4096, next_pow2(H))
    operand = {KIND_FP8: "*u8", KIND_NATIVE: "*bf16", KIND_F32: "*fp32"}[kind]
    sig = {"q_ptr": operand, "w_ptr": "*fp32", "k_ptr": operand, "ks_ptr": "*fp32", "starts_ptr": "*i32",
           "ends_ptr": "*i32", "out_ptr": "*fp32", "T": "i32", "S": "i32", "W": "i32"}
    const = {"H": H, "D": D, "BLOCK_T": block_t, "BLOCK_S": block_s, "H_P2": next_pow2(H), "D_P2": D,
             "KIND": kind, "FP8_MODE": mode, "DOT_FACTOR": fp8_dot_factor(mode) if kind == KIND_FP8 else 1.0}
    sig.update({name: "constexpr" for name in const})
    return (label, _indexer_logits_kernel, sig, const, {"num_warps": warps, "num_stages": 1})


KERNELS = [
    _kernel_spec("indexer_logits[H64xD128,fp8]", KIND_FP8, FP8_NATIVE),
    _kernel_spec("indexer_logits[H64xD128,fp8 as fp16 (no fp8 MMA)]", KIND_FP8, FP8_FP16),
    _kernel_spec("indexer_logits[H64xD128,bf16]", KIND_NATIVE, FP8_F32),
]
