"""sparse_mla_prefill / sparse_mla_decode as one Triton kernel (CUDA, ROCm; CPU under TRITON_INTERPRET=1).

Design: one program per (query row, block of heads[, split of the selection]). A query row is a token
(prefill) or one of the s_q query tokens of a sequence (decode). The program keeps its heads' query
[BLOCK_H, Dqk] on chip and walks the row's K selected indices in tiles of BLOCK_K:

    indices -> validity mask (-1 / out of range skipped)
            -> (decode) logical position p -> block_table[b, p // page] -> cache row (block, p % page)
    gather BLOCK_K key rows: latent [BLOCK_K, d_v] and rope [BLOCK_K, Dqk - d_v]
            (packed fp8 rows: fp8 latent bytes x their fp32 group scale, bf16 rope; dsa.hal.kv_format)
    scores = q_lat . k_lat + q_rope . k_rope  (two MMAs, fp32 accumulation), scaled into log2 units
    online softmax in fp32 (running max m, running sum l), acc = acc * alpha + p @ k_lat

Loaded values are converted straight to the MMA operand type MMA_DTYPE: fp32 under the interpreter
(which mishandles bf16 arithmetic) and for fp32 inputs (exact "ieee" dots); bf16 on a GPU when that is
exact (q bf16, keys bf16, or fp8 times a power-of-two scale), so tensor cores run both products with
fp32 accumulation. Softmax statistics and the rescaling are fp32; only the probabilities are rounded
to bf16 before P @ V on a GPU, as FlashMLA does. Under the interpreter the output is stored in fp32 and
rounded by torch, because the interpreter truncates fp32 -> bf16 stores (a GPU rounds to nearest). Head
and feature dims are padded to powers of two (constexpr) and masked, so any H and any (kv_lora, rope)
pair works: 512 + 64 (671B), 128 + 32 (tiny).

Decode with few rows cannot fill a GPU with one program per (row, head block): the selection is then
split over NUM_SPLITS programs that each write a partial (out, lse) in fp32; `_combine` merges them
exactly (log-sum-exp weights). Prefill never needs splitting.

Indices and block-table entries are never trusted: a selected position whose page points outside the
cache is skipped like an invalid index (no out-of-bounds read), instead of raising as the torch
provider does (that check would cost a device sync per call).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from dsa.backends.triton.common import HIP_ARCHS, INTERPRETING, REQUIRES, tensors_reason
from dsa.hal import kv_format
from dsa.hal.sparse_mla_decode import check_args
from dsa.hal.sparse_mla_prefill import check_args as check_prefill_args

LOG2E = 1.4426950408889634


@triton.jit
def _sparse_mla_kernel(
    q_ptr, kv_ptr, idx_ptr, table_ptr, seq_lens_ptr, out_ptr, lse_ptr,
    sm_scale_log2,  # fp32: sm_scale * log2(e)
    H, K, n_rows_kv, num_blocks, page, s_q, k_per_split,
    stride_q_row, stride_q_h,
    stride_kv_blk, stride_kv_tok,
    stride_idx_row, stride_table_b,
    stride_o_split, stride_o_row, stride_o_h,
    stride_l_split, stride_l_row,
    D_V: tl.constexpr, D_ROPE: tl.constexpr, DV_PAD: tl.constexpr, DR_PAD: tl.constexpr,
    PAGED: tl.constexpr, FP8: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0)
    hb = tl.program_id(1)
    split = tl.program_id(2)
    row64 = row.to(tl.int64)

    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    offs_v = tl.arange(0, DV_PAD)
    offs_r = tl.arange(0, DR_PAD)
    # all-true masks when the dims are powers of two (671B: 512, 64): keeps the key loads' masks per row
    v_mask = (offs_v < D_V) if DV_PAD != D_V else tl.full((DV_PAD,), 1, tl.int1)
    r_mask = (offs_r < D_ROPE) if DR_PAD != D_ROPE else tl.full((DR_PAD,), 1, tl.int1)

    # this program's queries [BLOCK_H, DV_PAD] and [BLOCK_H, DR_PAD], loaded once, fp32 first
    q_base = q_ptr + row64 * stride_q_row + offs_h[:, None] * stride_q_h
    q_lat = tl.load(q_base + offs_v[None, :], mask=h_mask[:, None] & v_mask[None, :], other=0.0).to(MMA_DTYPE)
    q_rope = tl.load(q_base + D_V + offs_r[None, :], mask=h_mask[:, None] & r_mask[None, :], other=0.0).to(MMA_DTYPE)

    if PAGED:
        seq = row // s_q
        limit = tl.load(seq_lens_ptr + seq)
    else:
        limit = n_rows_kv

    m_i = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, DV_PAD), tl.float32)

    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        pos = tl.load(idx_ptr + row64 * stride_idx_row + offs_k, mask=offs_k < k_end, other=-1)
        valid = (pos >= 0) & (pos < limit)
        if PAGED:
            pos_ok = tl.where(valid, pos, 0)
            blk = tl.load(table_ptr + seq.to(tl.int64) * stride_table_b + pos_ok // page, mask=valid, other=0)
            valid = valid & (blk >= 0) & (blk < num_blocks)
            key_off = blk.to(tl.int64) * stride_kv_blk + (pos_ok % page).to(tl.int64) * stride_kv_tok
        else:
            key_off = tl.where(valid, pos, 0).to(tl.int64) * stride_kv_tok
        key_base = kv_ptr + key_off  # [BLOCK_K] row starts

        lat_mask = valid[:, None] & v_mask[None, :]
        rope_mask = valid[:, None] & r_mask[None, :]
        if FP8:
            # packed row: D_V fp8 bytes | D_V/128 fp32 scales | D_ROPE bf16 (dsa.hal.kv_format)
            # fp8 values and power-of-two scales are exact in bf16, so the product is too: dequantise
            # straight into the MMA type (fp32 under the interpreter)
            k_lat = tl.load(key_base[:, None] + offs_v[None, :], mask=lat_mask, other=0.0).to(MMA_DTYPE)
            NG: tl.constexpr = DV_PAD // 128
            offs_g = tl.arange(0, NG)
            scale_ptr = (key_base + D_V).to(tl.pointer_type(tl.float32))
            k_scale = tl.load(scale_ptr[:, None] + offs_g[None, :],
                              mask=valid[:, None] & (offs_g < D_V // 128)[None, :], other=0.0)
            k_lat = tl.reshape(tl.reshape(k_lat, (BLOCK_K, NG, 128)) * k_scale.to(MMA_DTYPE)[:, :, None],
                               (BLOCK_K, DV_PAD))
            rope_ptr = (key_base + D_V + 4 * (D_V // 128)).to(tl.pointer_type(tl.bfloat16))
            k_rope = tl.load(rope_ptr[:, None] + offs_r[None, :], mask=rope_mask, other=0.0).to(MMA_DTYPE)
        else:
            k_lat = tl.load(key_base[:, None] + offs_v[None, :], mask=lat_mask, other=0.0).to(MMA_DTYPE)
            k_rope = tl.load(key_base[:, None] + D_V + offs_r[None, :], mask=rope_mask, other=0.0).to(MMA_DTYPE)

        # scores [BLOCK_H, BLOCK_K] in log2 units
        s = tl.dot(q_lat, tl.trans(k_lat), input_precision=DOT_PRECISION)
        s = tl.dot(q_rope, tl.trans(k_rope), acc=s, input_precision=DOT_PRECISION)
        s = tl.where(valid[None, :], s * sm_scale_log2, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing valid yet: keep exp2 finite
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(MMA_DTYPE), k_lat, acc=acc, input_precision=DOT_PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = m_i * 0.6931471805599453 + tl.log(tl.where(empty, 1.0, l_i))
    if SPLIT:
        lse = tl.where(empty, float("-inf"), lse)  # a partial with nothing selected weighs 0
    else:
        lse = tl.where(empty, float("inf"), lse)  # the FlashMLA convention for a row with no valid index
    o_ptrs = (out_ptr + split.to(tl.int64) * stride_o_split + row64 * stride_o_row
              + offs_h[:, None] * stride_o_h + offs_v[None, :])
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=h_mask[:, None] & v_mask[None, :])
    tl.store(lse_ptr + split.to(tl.int64) * stride_l_split + row64 * stride_l_row + offs_h, lse, mask=h_mask)


# ---- launch configuration --------------------------------------------------------------------------

def interpreting() -> bool:
    """True when TRITON_INTERPRET=1 was set before this module was imported (kernels run on CPU tensors)."""
    return INTERPRETING


def _pow2(n: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(max(1, n)))


def gpu_config(num_heads: int, fp8: bool, backend: str, arch) -> dict:
    """Tiles and launch options on a GPU; compile_check builds exactly these (its table: regs, spills).

    backend "cuda" (arch = compute capability as an int, 90) or "hip" (arch = "gfx942"). The fp32
    accumulator [BLOCK_H, 512] dominates registers, so tiles are chosen per MMA family:
      sm90 / sm100, >= 64 heads: BLOCK_H 64 (warpgroup MMA, operands in shared memory), 8 warps,
        two-stage async gathers; the 128 heads of 671B take two programs per query row.
      AMD CDNA: BLOCK_H 64 (16 for fewer heads), 4 waves, one stage (512 VGPRs + AGPRs per lane).
      sm80 / sm89 / sm120 and head shards < 64 (register-operand MMA): BLOCK_H 32 (16 with an fp8
        cache, whose dequantised tile lives in registers), 8 warps; stays under sm120's 99 KB of smem.
    """
    if backend == "hip":
        return {"BLOCK_H": 64 if num_heads >= 64 else 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1}
    if 90 <= int(arch) < 120 and num_heads >= 64:
        return {"BLOCK_H": 64, "BLOCK_K": 16, "num_warps": 8, "num_stages": 2}
    block_h = 16 if fp8 else min(32, _pow2(num_heads, 16))
    return {"BLOCK_H": block_h, "BLOCK_K": 16 if fp8 else 32, "num_warps": 8, "num_stages": 2}


def _interp_config(num_heads: int, k: int) -> dict:
    # interpreter cost grows with the number of programs and loop trips: the largest tiles that fit
    return {"BLOCK_H": min(128, _pow2(num_heads, 16)), "BLOCK_K": min(128, _pow2(k, 16))}


_DEVICE: dict[int, tuple] = {}


def _device_info(device: torch.device) -> tuple:
    """(backend, arch, multiprocessor count) of a CUDA / ROCm device, cached."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _DEVICE:
        props = torch.cuda.get_device_properties(idx)
        if torch.version.hip:
            arch = str(getattr(props, "gcnArchName", "gfx942")).split(":")[0]
            _DEVICE[idx] = ("hip", arch, props.multi_processor_count)
        else:
            major, minor = torch.cuda.get_device_capability(idx)
            _DEVICE[idx] = ("cuda", 10 * major + minor, props.multi_processor_count)
    return _DEVICE[idx]


def _mma(q_dtype: torch.dtype, key_dtype: torch.dtype, interp: bool):
    """MMA operand type: bf16/fp16 when converting q and the keys to it is exact, else fp32 ieee."""
    if not interp and q_dtype in (torch.bfloat16, torch.float16) and key_dtype in (q_dtype, torch.float8_e4m3fn):
        return (tl.bfloat16 if q_dtype == torch.bfloat16 else tl.float16), "ieee"
    return tl.float32, "ieee"


def _combine(out_part: Tensor, lse_part: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Merge split partials: out_part [n, R, H, d_v] fp32 (each normalised), lse_part [n, R, H] (-inf = empty)."""
    top = lse_part.amax(0)  # [R, H]
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lse_part - top)  # [n, R, H]; 0 for empty partials
    total = w.sum(0)
    has = total > 0
    out = (w.unsqueeze(-1) * out_part).sum(0) / torch.where(has, total, torch.ones_like(total)).unsqueeze(-1)
    lse = torch.where(has, torch.log(torch.where(has, total, torch.ones_like(total))) + top,
                      torch.full_like(total, float("inf")))
    return out.to(dtype), lse


def _launch(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int, *, paged: bool, fp8: bool,
            stride_blk: int, stride_tok: int, n_rows_kv: int, num_blocks: int, page: int,
            table: Optional[Tensor], seq_lens: Optional[Tensor], s_q: int,
            block_h: Optional[int], block_k: Optional[int], num_splits: Optional[int]) -> tuple[Tensor, Tensor]:
    """q [R, H, D] (last dim contiguous), indices [R, K] int32 contiguous -> out [R, H, d_v], lse [R, H]."""
    R, H, D = q.shape
    K = indices.shape[1]
    d_rope = D - d_v
    interp = interpreting()
    if interp:
        cfg = _interp_config(H, K)
        opts = {}
    else:
        backend, arch, sms = _device_info(q.device)
        cfg = gpu_config(H, fp8, backend, arch)
        opts = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    BLOCK_H = block_h or cfg["BLOCK_H"]
    BLOCK_K = block_k or cfg["BLOCK_K"]
    n_hb = triton.cdiv(H, BLOCK_H)
    tiles = triton.cdiv(K, BLOCK_K) if K else 0
    if num_splits is None:
        num_splits = 1
        if not interp and paged and tiles > 4:  # decode: few rows; spread the selection over the GPU
            num_splits = max(1, min(tiles // 4, sms // max(1, R * n_hb)))
    num_splits = max(1, min(num_splits, max(1, tiles)))
    k_per_split = triton.cdiv(triton.cdiv(K, num_splits), BLOCK_K) * BLOCK_K if K else BLOCK_K
    num_splits = triton.cdiv(K, k_per_split) if K else 1
    split = num_splits > 1

    if split:
        out = torch.empty(num_splits, R, H, d_v, dtype=torch.float32, device=q.device)
        lse = torch.empty(num_splits, R, H, dtype=torch.float32, device=q.device)
    else:
        # The interpreter truncates fp32 -> bf16 on store (a GPU rounds to nearest): there the kernel
        # stores fp32 and torch rounds. Same kernel code; only where the final rounding happens differs.
        store_dtype = torch.float32 if interp else q.dtype
        out = torch.empty(1, R, H, d_v, dtype=store_dtype, device=q.device)
        lse = torch.empty(1, R, H, dtype=torch.float32, device=q.device)
    if R and H:
        mma, prec = _mma(q.dtype, kv.dtype, interp)
        dummy = indices  # any int32 tensor: unused pointer for prefill
        _sparse_mla_kernel[(R, n_hb, num_splits)](
            q, kv, indices, table if paged else dummy, seq_lens if paged else dummy, out, lse,
            float(sm_scale) * LOG2E,
            H, K, n_rows_kv, num_blocks, page, s_q, k_per_split,
            q.stride(0), q.stride(1),
            stride_blk, stride_tok,
            indices.stride(0), table.stride(0) if paged else 0,
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1),
            D_V=d_v, D_ROPE=d_rope, DV_PAD=_pow2(d_v, 16), DR_PAD=_pow2(d_rope, 16),
            PAGED=paged, FP8=fp8, SPLIT=split, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
            MMA_DTYPE=mma, DOT_PRECISION=prec, **opts,
        )
    if split:
        return _combine(out, lse, q.dtype)
    return out[0].to(q.dtype), lse[0]


def _rows_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def sparse_mla_prefill(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int, *,
                       block_h: Optional[int] = None, block_k: Optional[int] = None,
                       num_splits: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """q [T, H, Dqk], kv [S, 1, Dqk], indices [T, K] -> out [T, H, d_v] (q.dtype), lse [T, H] fp32."""
    check_prefill_args(q, kv, indices, d_v)
    q = _rows_contiguous(q)
    kv = _rows_contiguous(kv)
    idx = indices.to(torch.int32).contiguous()
    return _launch(q, kv, idx, sm_scale, d_v, paged=False, fp8=False, stride_blk=0, stride_tok=kv.stride(0),
                   n_rows_kv=kv.shape[0], num_blocks=0, page=1, table=None, seq_lens=None, s_q=1,
                   block_h=block_h, block_k=block_k, num_splits=num_splits)


def sparse_mla_decode(q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor,
                      sm_scale: float, d_v: int, *, block_h: Optional[int] = None, block_k: Optional[int] = None,
                      num_splits: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Sparse MLA over the paged cache (bf16/fp32 or packed fp8 uint8). See dsa.hal.sparse_mla_decode."""
    check_args(q, kv_cache, block_table, seq_lens, indices, d_v)
    B, s_q, H, D = q.shape
    num_blocks, page = kv_cache.shape[:2]
    fp8 = kv_cache.dtype == torch.uint8
    kv_cache = _rows_contiguous(kv_cache)
    if fp8:
        kv_cache = kv_cache.view(torch.float8_e4m3fn)  # same bytes; typed fp8 pointer
    q2 = _rows_contiguous(q.reshape(B * s_q, H, D))
    idx = indices.reshape(B * s_q, -1).to(torch.int32).contiguous()
    out, lse = _launch(q2, kv_cache, idx, sm_scale, d_v, paged=True, fp8=fp8,
                       stride_blk=kv_cache.stride(0), stride_tok=kv_cache.stride(1), n_rows_kv=0,
                       num_blocks=num_blocks, page=page, table=block_table.to(torch.int32).contiguous(),
                       seq_lens=seq_lens.to(torch.int32).contiguous(), s_q=s_q,
                       block_h=block_h, block_k=block_k, num_splits=num_splits)
    return out.view(B, s_q, H, d_v), lse.view(B, s_q, H)


# ---- what the provider needs (declared) and takes (per-call checks) ----------------------------------

MAX_D_V = 512  # the fp32 accumulator [BLOCK_H, d_v] lives in registers
MAX_ROPE = 128
_FLOATS = (torch.bfloat16, torch.float16, torch.float32)


# Any head count (heads are tiled in blocks of 16..64 and masked), any page size, a bf16 or packed fp8
# cache; the fp8 cache needs fp8 e4m3 conversions: sm89+ on NVIDIA. (Prefill and decode alike.)
SPARSE_MLA = dataclasses.replace(REQUIRES, kv_cache_dtypes={"bf16": None, "fp8": ("sm89+", *HIP_ARCHS)})


def _dims_reason(d: int, d_v: int, dtype: torch.dtype) -> Optional[str]:
    if dtype not in _FLOATS:
        return f"q must be bf16, fp16 or fp32, got {dtype}"
    if not 0 < d_v <= min(d, MAX_D_V) or d - d_v > MAX_ROPE:
        return f"needs 0 < d_v <= {MAX_D_V} and a rope part <= {MAX_ROPE} (got d_v {d_v}, head dim {d})"
    return None


def prefill_args(q, kv, indices, sm_scale, d_v) -> Optional[str]:
    reason = tensors_reason(q, kv, indices) or _dims_reason(q.shape[-1], d_v, q.dtype)
    if reason:
        return reason
    if kv.dtype != q.dtype:
        return f"kv dtype {kv.dtype} differs from q dtype {q.dtype}"
    return None


def decode_args(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v) -> Optional[str]:
    reason = tensors_reason(q, kv_cache, block_table, seq_lens, indices) or _dims_reason(q.shape[-1], d_v, q.dtype)
    if reason:
        return reason
    if kv_cache.dtype == torch.uint8:
        if d_v % kv_format.GROUP:
            return f"a packed fp8 cache needs d_v divisible by {kv_format.GROUP}, got {d_v}"
        if kv_cache.shape[-1] % 4:
            return (f"packed fp8 rows of {kv_cache.shape[-1]} bytes leave the fp32 scales misaligned "
                    "(need a multiple of 4)")
    elif kv_cache.dtype not in _FLOATS:
        return f"cache dtype {kv_cache.dtype} is neither a float type nor the packed fp8 layout (uint8)"
    return None


# ---- what compile_check builds: the 671B shapes (H 128 per rank, 576 = 512 + 64) -----------------------

def _kernel_spec(label: str, num_heads: int, paged: bool, fp8: bool, split: bool):
    sig = {
        "q_ptr": "*bf16", "kv_ptr": "*fp8e4nv" if fp8 else "*bf16", "idx_ptr": "*i32", "table_ptr": "*i32",
        "seq_lens_ptr": "*i32", "out_ptr": "*fp32" if split else "*bf16", "lse_ptr": "*fp32", "sm_scale_log2": "fp32",
    }
    for name in ("H", "K", "n_rows_kv", "num_blocks", "page", "s_q", "k_per_split", "stride_q_row", "stride_q_h",
                 "stride_kv_blk", "stride_kv_tok", "stride_idx_row", "stride_table_b", "stride_o_split",
                 "stride_o_row", "stride_o_h", "stride_l_split", "stride_l_row"):
        sig[name] = "i32"
    const = {"D_V": 512, "D_ROPE": 64, "DV_PAD": 512, "DR_PAD": 64, "PAGED": paged, "FP8": fp8, "SPLIT": split,
             "MMA_DTYPE": tl.bfloat16, "DOT_PRECISION": "ieee", "BLOCK_H": "per target", "BLOCK_K": "per target"}
    sig.update({name: "constexpr" for name in const})

    def constexprs(target) -> dict:
        c = gpu_config(num_heads, fp8, target.backend, target.arch)
        return dict(const, BLOCK_H=c["BLOCK_H"], BLOCK_K=c["BLOCK_K"])

    def options(target) -> dict:
        c = gpu_config(num_heads, fp8, target.backend, target.arch)
        return {"num_warps": c["num_warps"], "num_stages": c["num_stages"]}

    divisible = ("stride_q_row", "stride_q_h", "stride_kv_blk", "stride_kv_tok", "stride_idx_row", "stride_table_b",
                 "stride_o_split", "stride_o_row", "stride_o_h", "stride_l_split", "stride_l_row")
    return (label, _sparse_mla_kernel, sig, constexprs, options, divisible)


KERNELS = [
    _kernel_spec("sparse_mla_prefill[H128,bf16]", 128, paged=False, fp8=False, split=False),
    _kernel_spec("sparse_mla_decode[H128,bf16 cache,split]", 128, paged=True, fp8=False, split=True),
    _kernel_spec("sparse_mla_decode[H128,fp8 cache,split]", 128, paged=True, fp8=True, split=True),
    _kernel_spec("sparse_mla_decode[H16,fp8 cache]", 16, paged=True, fp8=True, split=False),
]
