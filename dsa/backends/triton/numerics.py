"""Number handling shared by the Triton indexer / grouped-GEMM / quantisation kernels.

Host side: how fp8 operands are fed to the tensor cores of a given device (`fp8_mode`), tile helpers.

Device side (@triton.jit helpers): exact, bit-level number conversions. They are written with integer
operations instead of `.to(...)` for two reasons: the Triton interpreter (TRITON_INTERPRET=1, our CPU
CI) truncates fp32 -> bf16 and rounds fp32 -> fp8 half-away-from-zero, and act_quant must match the
oracle bit for bit. The same code then runs on every GPU, so what CI checks is what ships.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

FP8 = torch.float8_e4m3fn

# How fp8 (OCP e4m3fn) operands reach tl.dot (a constexpr of the kernels):
FP8_NATIVE = 0  # tl.float8e4nv MMA: sm89+ (Ada, Hopper, Blackwell), gfx950
FP8_FNUZ = 1  # gfx942 MFMA takes e4m3 *fnuz* (bias 8): the same bits are half the value; -0 -> +0
FP8_FP16 = 2  # no fp8 MMA (sm80, sm86, gfx90a): decode the bits exactly into fp16 (a shift), fp16 MMA
FP8_F32 = 3  # the interpreter: decode exactly into fp32 (numpy's fp16 matmul is ~100x slower than fp32)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _gpu_fp8_mode(index: int) -> int:
    if getattr(torch.version, "hip", None):
        arch = str(getattr(torch.cuda.get_device_properties(index), "gcnArchName", "")).split(":")[0]
        if arch == "gfx950":
            return FP8_NATIVE
        return FP8_FNUZ if arch == "gfx942" else FP8_FP16
    return FP8_NATIVE if torch.cuda.get_device_capability(index) >= (8, 9) else FP8_FP16


def fp8_mode(device: torch.device) -> int:
    """How the fp8 operands of a tl.dot are fed on `device` (see FP8_* above)."""
    if device.type != "cuda":
        return FP8_F32  # the interpreter (CPU tensors)
    return _gpu_fp8_mode(device.index if device.index is not None else torch.cuda.current_device())


def fp8_dot_factor(mode: int) -> float:
    """What a dot of two fp8 operands loaded with `load_fp8_operand(.., mode)` must be multiplied by."""
    return {FP8_NATIVE: 1.0, FP8_FNUZ: 4.0, FP8_FP16: 65536.0, FP8_F32: 1.0}[mode]


# ---------------------------------------------------------------- device helpers


@triton.jit
def fp8_operand(bits, MODE: tl.constexpr):
    """uint8 e4m3fn bits -> a tl.dot operand whose value is the fp8 value times 1 / sqrt(fp8_dot_factor)."""
    if MODE == 0:
        return bits.to(tl.float8e4nv, bitcast=True)
    elif MODE == 1:
        # e4m3fnuz has bias 8 (value halves) and no -0 (0x80 is its NaN): map -0 to +0.
        bits = tl.where(bits == 0x80, 0, bits).to(tl.uint8)
        return bits.to(tl.float8e4b8, bitcast=True)
    elif MODE == 2:
        # e4m3fn sign|eeee|mmm shifted into fp16 sign|eeeee|mmmmmmmmmm is the value * 2^(7-15),
        # normals and subnormals alike (fp16 has the wider range), so the decode is exact.
        b = bits.to(tl.int32)
        h = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
        return h.to(tl.int16).to(tl.float16, bitcast=True)
    else:
        return bits.to(tl.float8e4nv, bitcast=True).to(tl.float32)  # the interpreter converts exactly


@triton.jit
def f32_to_bf16_bits(x):
    """fp32 -> bf16 bits (int16), round to nearest even; NaN stays NaN."""
    u = x.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = tl.where(x != x, 0x7FC0, r)
    return r.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def f32_to_e4m3_bits(x):
    """fp32 already clamped to [-448, 448] -> e4m3fn bits (uint8), round to nearest even, exactly.

    Normal targets (|x| >= 2^-6): round the fp32 mantissa to 3 bits, rebias the exponent (127 -> 7).
    Subnormal targets: the code is round(|x| * 2^9), computed from the fp32 mantissa by an integer
    right shift with round-half-even; a carry into 8 is the smallest normal, whose code is 8.
    """
    u = x.to(tl.uint32, bitcast=True)
    sign = ((u >> 24) & 0x80).to(tl.int32)
    a = (u & 0x7FFFFFFF).to(tl.int32)
    e = (a >> 23) - 127  # unbiased fp32 exponent (-127 for zero / fp32 subnormals)
    # normal path
    rn = (a + 0x7FFFF + ((a >> 20) & 1)) >> 20
    normal = rn - (120 << 3)
    # subnormal path: |x| = mant * 2^(e - 23); code = rne(mant * 2^(e - 14))
    mant = (a & 0x7FFFFF) | 0x800000
    s = tl.minimum(14 - e, 25)
    s = tl.maximum(s, 1)
    q = mant >> s
    rem = mant & ((1 << s) - 1)
    half = 1 << (s - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)
    q = tl.where(e <= -127, 0, q)
    code = tl.where(e >= -6, normal, q)
    return (code | sign).to(tl.uint8)
