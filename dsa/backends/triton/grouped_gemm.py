"""grouped_gemm as one Triton launch over all experts (MoE), bf16 / fp16 / fp32 or block-scaled fp8.

Kernel design
  * Grid (tile slots, N tiles). The tile schedule is computed *on the device* from m_sizes (no host
    sync, so the launch can be captured in a CUDA graph): each program loads m_sizes, forms the
    per-expert tile counts ceil(m_e / BLOCK_M) and their running sum, and finds its expert by counting
    the experts whose tiles end at or before its slot. Slots after the last expert tile zero the
    padding rows [sum(m_sizes), M); slots after those exit. The grid's slot count
    ceil(M / BLOCK_M) + E bounds the number of tiles for any m_sizes.
  * Per program: a [BLOCK_M, BLOCK_N] fp32 accumulator over K in BLOCK_K steps; w[e] is read as
    [BLOCK_N, BLOCK_K] (K-contiguous, the "NT" layout fp8 MMAs want) and transposed in registers.
  * fp8 (e4m3fn, 1x128 activation scales, 128x128 weight scales): BLOCK_K = 128, so every K step is
    one scale block. Its dot is taken alone and added as `dot * x_scale[row] * w_scale[n // 128]`, the
    per-K-block promotion fp8 block GEMMs do (it also bounds the error of the tensor cores' reduced
    precision fp8 accumulation to one 128-long block). How the fp8 bits reach tl.dot depends on the
    device (dsa.backends.triton.numerics.FP8_*: native e4m3fn, gfx942 fnuz, or exact fp16 decode).
  * bf16 / fp16: native MMA on GPUs; under the interpreter bf16 tiles are converted to fp32 first (the
    interpreter computes garbage on bf16). fp32: `input_precision="ieee"` (TF32 would miss the
    conformance tolerance). Output is rounded once: bf16 through an exact RNE on the bits.
All offsets that can pass 2^31 (expert * N * K, row * K) are int64.
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
    FP8_FP16,
    FP8_NATIVE,
    cdiv,
    f32_to_bf16_bits,
    fp8_dot_factor,
    fp8_mode,
    fp8_operand,
    next_pow2,
)
from dsa.hal.fp8 import num_blocks
from dsa.hal.grouped_gemm import args_reason as contract_reason

_FLOAT_INPUTS = (torch.bfloat16, torch.float16, torch.float32)
_SCALE_BLOCK = 128


@triton.jit
def _grouped_gemm_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, y_ptr, m_sizes_ptr,
    M, N, K, E,
    KB,  # scale blocks along K: ceil(K / 128)
    NB,  # scale blocks along N: ceil(N / 128)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    E_P2: tl.constexpr,  # next power of two >= E
    IS_FP8: tl.constexpr,
    FP8_MODE: tl.constexpr,  # numerics.FP8_NATIVE / FP8_FNUZ / FP8_FP16
    DOT_FACTOR: tl.constexpr,  # numerics.fp8_dot_factor(FP8_MODE)
    UPCAST: tl.constexpr,  # convert float tiles to fp32 before tl.dot (bf16 under the interpreter)
    IEEE: tl.constexpr,  # fp32 dot in full precision (no TF32)
    OUT_BF16: tl.constexpr,  # y is bf16, passed as int16 bits
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K mask
    N16: tl.constexpr,  # N % 16 == 0
):
    slot = tl.program_id(0)
    pid_n = tl.program_id(1)
    # Alignment facts, stated so the compiler can vectorise loads whatever it infers from the values
    # (a multiply by a constant carries divisibility; tl.multiple_of does not attach to scalars).
    if EVEN_K:
        K = (K // BLOCK_K) * BLOCK_K
    if N16:
        N = (N // 16) * 16

    # ---- the tile schedule, from m_sizes on the device
    ex = tl.arange(0, E_P2)
    sizes = tl.maximum(tl.load(m_sizes_ptr + ex, mask=ex < E, other=0).to(tl.int32), 0)  # [E_P2]
    tiles = (sizes + BLOCK_M - 1) // BLOCK_M
    tile_end = tl.cumsum(tiles, 0)  # inclusive running sums
    row_end = tl.cumsum(sizes, 0)
    n_tiles = tl.sum(tiles)
    total = tl.minimum(tl.sum(sizes), M)  # rows owned by a group (clipped to x: never write past M)

    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    n_ok = cols < N
    if slot < n_tiles:
        e = tl.sum((tile_end <= slot).to(tl.int32))  # the expert this slot belongs to
        mine = ex == e
        first_tile = tl.sum(tl.where(mine, tile_end - tiles, 0))
        stop = tl.minimum(tl.sum(tl.where(mine, row_end, 0)), M)
        start = tl.sum(tl.where(mine, row_end - sizes, 0))
        local = (slot - first_tile) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] rows within the group
        rows = start + local
        row_ok = rows < stop
        rows64 = rows.to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        # 64-bit scalar bases + 32-bit tile offsets (a tile of 64-bit pointers costs registers)
        x_ptrs = (x_ptr + start.to(tl.int64) * K) + (local[:, None] * K + offs_k[None, :])  # [BM, BK]
        w_ptrs = (w_ptr + (e.to(tl.int64) * N + pid_n * BLOCK_N) * K) + (tl.arange(0, BLOCK_N)[:, None] * K
                                                                         + offs_k[None, :])
        if IS_FP8:
            xs_ptrs = xs_ptr + rows64 * KB  # [BM]
            ws_ptrs = ws_ptr + (e.to(tl.int64) * NB + cols // 128) * KB  # [BN]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(x_ptrs, mask=row_ok[:, None], other=0)  # [BM, BK]
                b = tl.load(w_ptrs, mask=n_ok[:, None], other=0)  # [BN, BK]
            else:
                k_ok = offs_k < K - kb * BLOCK_K
                a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0)
                b = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0)
            if IS_FP8:  # BLOCK_K == 128: this K step is scale block kb
                if FP8_MODE == 3:  # FP8_F32 (the interpreter): exact fp32 operands
                    part = tl.dot(fp8_operand(a, FP8_MODE), tl.trans(fp8_operand(b, FP8_MODE)), input_precision="ieee")
                else:
                    part = tl.dot(fp8_operand(a, FP8_MODE), tl.trans(fp8_operand(b, FP8_MODE)))
                xs = tl.load(xs_ptrs + kb, mask=row_ok, other=0.0)  # [BM]
                ws = tl.load(ws_ptrs + kb, mask=n_ok, other=0.0)  # [BN]
                acc += part * xs[:, None] * ws[None, :]
            else:
                if UPCAST:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                if IEEE:
                    acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, tl.trans(b), acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        if IS_FP8:
            if DOT_FACTOR != 1.0:
                acc = acc * DOT_FACTOR
        out_rows = rows64
        out_ok = row_ok
    else:
        # padding rows after the last group: zeros
        rows = total + (slot - n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
        out_rows = rows.to(tl.int64)
        out_ok = rows < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    y_offs = out_rows[:, None] * N + cols[None, :]
    y_mask = out_ok[:, None] & n_ok[None, :]
    if OUT_BF16:
        tl.store(y_ptr + y_offs, f32_to_bf16_bits(acc), mask=y_mask)
    else:
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


def _tiles(M: int, E: int, N: int, fp8: bool) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for this problem."""
    if INTERPRETING:  # the interpreter pays per program and per op: few, large tiles
        return 64, min(1024, max(16, next_pow2(N))), 128  # (BLOCK_M is refined by gemm_launch)
    rows_per_group = M / max(E, 1)
    return 64 if rows_per_group <= 64 else 128, 128, 128 if fp8 else 64


def _warps_stages(block_m: int, hip: bool) -> tuple[int, int]:
    """(num_warps, num_stages). AMD (wave64): 8 warps keep the fp8 path out of spills (compile_check)."""
    if hip:
        return 8, 2
    return (4 if block_m == 64 else 8), 3


def gemm_launch(
    x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor,
    out_dtype: torch.dtype,
) -> Tensor:
    """The launch behind grouped_gemm and fp8_linear; arguments already validated."""
    M, K = x.shape
    E, N, _ = w.shape
    y = torch.empty((M, N), dtype=out_dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    fp8 = x.dtype == FP8
    x = x.contiguous()
    w = w.contiguous()
    if fp8:
        mode = fp8_mode(x.device)
        xs, ws = x_scale.float().contiguous(), w_scale.float().contiguous()
        x_arg, w_arg = x.view(torch.uint8), w.view(torch.uint8)
    else:
        mode = FP8_NATIVE
        xs = ws = torch.empty(1, dtype=torch.float32, device=x.device)  # unused
        x_arg, w_arg = x, w
    block_m, block_n, block_k = _tiles(M, E, N, fp8)
    warps, stages = _warps_stages(block_m, bool(getattr(torch.version, "hip", None)))
    if E and may_read_host():  # CPU tensors: reading m_sizes is free; fit BLOCK_M
        block_m = max(16, min(64, next_pow2(int(m_sizes.max()))))
    upcast = not fp8 and INTERPRETING and x.dtype == torch.bfloat16
    ieee = not fp8 and (x.dtype == torch.float32 or upcast)
    out_bf16 = out_dtype == torch.bfloat16
    grid = (cdiv(M, block_m) + E, cdiv(N, block_n))
    _grouped_gemm_kernel[grid](
        x_arg, xs, w_arg, ws, y.view(torch.int16) if out_bf16 else y, m_sizes.contiguous(),
        M, N, K, E, num_blocks(K, _SCALE_BLOCK), num_blocks(N, _SCALE_BLOCK),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, E_P2=next_pow2(E),
        IS_FP8=fp8, FP8_MODE=mode, DOT_FACTOR=fp8_dot_factor(mode) if fp8 else 1.0,
        UPCAST=upcast, IEEE=ieee, OUT_BF16=out_bf16, EVEN_K=K % block_k == 0, N16=N % 16 == 0,
        num_warps=warps, num_stages=stages,
    )
    return y


def grouped_gemm(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor) -> Tensor:
    """y[group e rows] = x[group e rows] @ w[e]^T; padding rows 0. See dsa.hal.grouped_gemm."""
    reason = grouped_args(x, x_scale, w, w_scale, m_sizes)
    if reason:
        raise TypeError(f"grouped_gemm (triton): {reason}")
    out_dtype = torch.bfloat16 if x.dtype == FP8 else x.dtype
    return gemm_launch(x, x_scale, w, w_scale, m_sizes, out_dtype)


def grouped_args(x, x_scale, w, w_scale, m_sizes) -> Optional[str]:
    """Why these arguments are outside the contract or what the kernel handles, or None. (No device sync:
    the kernel itself clips groups to the M rows of x, so a bad sum(m_sizes) cannot write out of bounds.)"""
    reason = contract_reason(x, x_scale, w, w_scale, m_sizes)
    if reason:
        return reason
    if x.dtype != FP8 and (x.dtype not in _FLOAT_INPUTS or w.dtype != x.dtype):
        return f"float inputs must be one of bf16 / fp16 / fp32 and equal; got x {x.dtype}, w {w.dtype}"
    return tensors_reason(x, x_scale, w, w_scale, m_sizes)


def _kernel_spec(label: str, fp8: bool, mode: int, rows: int) -> tuple:
    """A compile_check entry: the 671B MoE (256 experts, 7168 -> 2048) with `rows` routed rows."""
    E, N = 256, 2048
    block_m, block_n, block_k = _tiles(rows, E, N, fp8)
    operand = "*u8" if fp8 else "*bf16"
    sig = {"x_ptr": operand, "xs_ptr": "*fp32", "w_ptr": operand, "ws_ptr": "*fp32", "y_ptr": "*i16",
           "m_sizes_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "E": "i32", "KB": "i32", "NB": "i32"}
    const = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": _SCALE_BLOCK if fp8 else block_k, "E_P2": E,
             "IS_FP8": fp8, "FP8_MODE": mode, "DOT_FACTOR": fp8_dot_factor(mode) if fp8 else 1.0,
             "UPCAST": False, "IEEE": False, "OUT_BF16": True, "EVEN_K": True, "N16": True}
    sig.update({name: "constexpr" for name in const})

    def options(target) -> dict:
        warps, stages = _warps_stages(block_m, target.backend == "hip")
        return {"num_warps": warps, "num_stages": stages}

    return (label, _grouped_gemm_kernel, sig, const, options)


KERNELS = [
    _kernel_spec("grouped_gemm[fp8,E256,decode BM64]", True, FP8_NATIVE, 256 * 8),
    _kernel_spec("grouped_gemm[fp8,E256,prefill BM128]", True, FP8_NATIVE, 256 * 1024),
    _kernel_spec("grouped_gemm[fp8 as fp16 (no fp8 MMA),E256]", True, FP8_FP16, 256 * 1024),
    _kernel_spec("grouped_gemm[bf16,E256,prefill BM128]", False, FP8_NATIVE, 256 * 1024),
]
