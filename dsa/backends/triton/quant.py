"""act_quant and fp8_linear as Triton kernels.

act_quant: one program quantises BLOCK_R rows x BLOCKS_PER_PROG blocks of the last dimension. Every
step is exact, so the result is bit-identical to the contract (dsa.hal.act_quant):
  amax = max|x| (exact) floored at fp32(1e-4); s = amax / 448 with IEEE division (tl.math.div_rn, not
  the approximate `/` Triton emits for fp32 on GPUs); ue8m0: 2^ceil(log2 s) from the bits of s (a
  power of two keeps itself, anything else moves to the next exponent - what pow2_ceil does with
  frexp); y = RNE_e4m3(clamp(div_rn(x, s), +-448)) with an integer rounding (numerics.f32_to_e4m3_bits).

fp8_linear: act_quant (above) of x, then the block-scaled fp8 GEMM of grouped_gemm with one group
(per-128 K-block dots, each scaled by its 1x128 activation scale and 128x128 weight scale, summed in
fp32), rounded once to x.dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from dsa.backends.triton.common import INTERPRETING, tensors_reason
from dsa.backends.triton.numerics import FP8, cdiv, f32_to_e4m3_bits, next_pow2
from dsa.hal.fp8 import num_blocks

_FLOAT_INPUTS = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _act_quant_kernel(
    x_ptr, y_ptr, s_ptr,  # x [R, K] float, y [R, K] uint8 (e4m3fn bits), s [R, NB] fp32
    R, K, NB,
    BLOCK: tl.constexpr,  # quantisation block along K
    BLOCK_P2: tl.constexpr,  # next power of two >= BLOCK (tile width)
    BLOCK_R: tl.constexpr,  # rows per program
    NBS: tl.constexpr,  # quantisation blocks per program (a power of two)
    UE8M0: tl.constexpr,
    K16: tl.constexpr,  # K % 16 == 0 (lets the compiler vectorise)
):
    """One program: a [BLOCK_R, NBS, BLOCK_P2] tile = BLOCK_R rows x NBS blocks of K."""
    if K16:
        K = (K // 16) * 16  # a multiply by a constant carries the divisibility to the compiler
    r0 = tl.program_id(0) * BLOCK_R
    lr = tl.arange(0, BLOCK_R)  # [BR] rows (local)
    blk = tl.program_id(1) * NBS + tl.arange(0, NBS)  # [NBS]
    cols = tl.arange(0, BLOCK_P2)  # [BP]
    k = blk[:, None] * BLOCK + cols[None, :]  # [NBS, BP]
    col_ok = (cols[None, :] < BLOCK) & (k < K)  # k < K also masks the blocks past NB
    row_ok = r0 + lr < R
    m = row_ok[:, None, None] & col_ok[None, :, :]  # [BR, NBS, BP]
    offs = lr[:, None, None] * K + k[None, :, :]  # 32-bit offsets from the tile's 64-bit base
    base = r0.to(tl.int64) * K
    x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)  # bf16 -> fp32 before any math
    amax = tl.maximum(tl.max(tl.abs(x), axis=2), 1e-4)  # [BR, NBS]
    s = tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32))  # IEEE division, as torch
    if UE8M0:
        bits = s.to(tl.int32, bitcast=True)  # s is a positive normal fp32 (>= 1e-4 / 448)
        up = ((bits >> 23) + 1) << 23  # next power of two: exponent + 1, mantissa 0
        pow2 = tl.where((bits & 0x7FFFFF) == 0, bits, up)
        s = pow2.to(tl.float32, bitcast=True)
        inv = ((254 - (pow2 >> 23)) << 23).to(tl.float32, bitcast=True)  # 1 / s, exactly (from the bits)
        q = x * inv[:, :, None]  # times a power of two: the exact quotient, no division
    else:
        q = tl.math.div_rn(x, tl.broadcast_to(s[:, :, None], x.shape))
    q = tl.minimum(tl.maximum(q, -448.0), 448.0)
    tl.store(y_ptr + base + offs, f32_to_e4m3_bits(q), mask=m)
    s_ok = row_ok[:, None] & (blk < NB)[None, :]
    tl.store(s_ptr + r0.to(tl.int64) * NB + (lr[:, None] * NB + blk[None, :]), s, mask=s_ok)


def _act_quant_launch(x2: Tensor, block_size: int, ue8m0: bool) -> tuple[Tensor, Tensor]:
    """x2 [R, K] contiguous -> (fp8 [R, K], fp32 [R, NB])."""
    R, K = x2.shape
    nb = num_blocks(K, block_size)
    y = torch.empty((R, K), dtype=FP8, device=x2.device)
    s = torch.empty((R, nb), dtype=torch.float32, device=x2.device)
    if R == 0 or K == 0:
        return y, s
    block_p2, nbs, block_r = _act_quant_config(block_size, R, nb)
    grid = (cdiv(R, block_r), cdiv(nb, nbs))
    _act_quant_kernel[grid](
        x2, y.view(torch.uint8), s, R, K, nb,
        BLOCK=block_size, BLOCK_P2=block_p2, BLOCK_R=block_r, NBS=nbs, UE8M0=bool(ue8m0), K16=K % 16 == 0,
        num_warps=4,
    )
    return y, s


def act_quant(x: Tensor, block_size: int, ue8m0: bool) -> tuple[Tensor, Tensor]:
    """x [..., K] -> (fp8 [..., K], fp32 scales [..., ceil(K/block_size)]). See dsa.hal.act_quant."""
    reason = act_quant_args(x, block_size, ue8m0)
    if reason:
        raise TypeError(f"act_quant (triton): {reason}")
    lead, K = x.shape[:-1], x.shape[-1]
    y, s = _act_quant_launch(x.reshape(-1, K).contiguous(), block_size, ue8m0)
    return y.reshape(x.shape), s.reshape(*lead, s.shape[-1])


def fp8_linear(x: Tensor, weight: Tensor, weight_scale_inv: Tensor, ue8m0: bool) -> Tensor:
    """y [..., N] = act_quant(x) @ dequant(weight)^T in fp32, rounded once to x.dtype. See dsa.hal.fp8_linear."""
    from dsa.backends.triton.grouped_gemm import gemm_launch

    reason = fp8_linear_args(x, weight, weight_scale_inv, ue8m0)
    if reason:
        raise TypeError(f"fp8_linear (triton): {reason}")
    N, K = weight.shape
    xq, xs = _act_quant_launch(x.reshape(-1, K).contiguous(), 128, ue8m0)
    M = xq.shape[0]
    m_sizes = torch.full((1,), M, dtype=torch.int32, device=x.device)
    y = gemm_launch(xq, xs, weight.unsqueeze(0), weight_scale_inv.unsqueeze(0), m_sizes, x.dtype)
    return y.reshape(*x.shape[:-1], N)


# ---------------------------------------------------------------- what these kernels accept


def act_quant_args(x, block_size, ue8m0) -> Optional[str]:
    if x.dtype not in _FLOAT_INPUTS:
        return f"x must be bf16 / fp16 / fp32, got {x.dtype}"
    if not 0 < block_size <= 4096:
        return f"block_size must be in 1..4096, got {block_size}"
    return tensors_reason(x)


def fp8_linear_args(x, weight, weight_scale_inv, ue8m0) -> Optional[str]:
    if x.dtype not in _FLOAT_INPUTS:
        return f"x must be bf16 / fp16 / fp32, got {x.dtype}"
    if weight.dtype != FP8 or weight.dim() != 2:
        return f"weight must be 2-D float8_e4m3fn, got {weight.dtype} {tuple(weight.shape)}"
    N, K = weight.shape
    if x.shape[-1] != K:
        return f"x has K={x.shape[-1]} but weight is [N={N}, K={K}]"
    if tuple(weight_scale_inv.shape) != (num_blocks(N), num_blocks(K)) or weight_scale_inv.dtype != torch.float32:
        return (f"weight_scale_inv must be fp32 {(num_blocks(N), num_blocks(K))} (128x128 blocks), got "
                f"{weight_scale_inv.dtype} {tuple(weight_scale_inv.shape)}")
    return tensors_reason(x, weight, weight_scale_inv)


def _act_quant_config(block_size: int, R: int, nb: int) -> tuple[int, int, int]:
    """(BLOCK_P2, NBS, BLOCK_R) of the act_quant launch."""
    block_p2 = next_pow2(block_size)
    if INTERPRETING:  # few, large programs: the interpreter's cost is per program and per op
        nbs = next_pow2(nb)
        return block_p2, nbs, min(next_pow2(R), max(1, 65536 // (nbs * block_p2)))
    nbs = min(next_pow2(nb), max(1, 512 // block_p2))  # ~2K elements (16 per thread) per program
    return block_p2, nbs, max(1, min(8, 2048 // (nbs * block_p2)))


def _act_quant_spec(label: str, dtype: str, ue8m0: bool) -> tuple:
    """A compile_check entry: 1x128 blocks of the 671B hidden size (7168)."""
    block_p2, nbs, block_r = _act_quant_config(128, 4096, 56)
    sig = {"x_ptr": dtype, "y_ptr": "*u8", "s_ptr": "*fp32", "R": "i32", "K": "i32", "NB": "i32"}
    const = {"BLOCK": 128, "BLOCK_P2": block_p2, "BLOCK_R": block_r, "NBS": nbs, "UE8M0": ue8m0, "K16": True}
    sig.update({name: "constexpr" for name in const})
    return (label, _act_quant_kernel, sig, const, {"num_warps": 4})


# compile_check entries (fp8_linear's GEMM is grouped_gemm's kernel, checked there)
KERNELS = [
    _act_quant_spec("act_quant[bf16,1x128,ue8m0]", "*bf16", True),
    _act_quant_spec("act_quant[fp32,1x128]", "*fp32", False),
]
