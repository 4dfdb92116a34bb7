"""torch_npu (CANN) adapters: indexer_topk, sparse MLA (prefill + decode) and grouped_gemm on Ascend A2 / A3.

The op schemas are torch_npu 2.13's (docs/model-and-ops.md 8); the semantics come from the CANN ops-transformer
READMEs (LightningIndexer, SparseFlashAttention) and torch_npu's npu_grouped_matmul documentation.
What each documents and what the adapters do about it:

indexer_topk  npu_lightning_indexer(query [T, N1, D], key, weights [T, N1], actual_seq_lengths_query,
              actual_seq_lengths_key, block_table, layout_query="TND", layout_key="PA_BSND",
              sparse_count, sparse_mode=3) -> (indices [T, N2, sparse_count] int32, values):
              Top-k of sum_h w_h relu(q_h . k) over each query's keys; positions counted within the
              query's batch; -1 padding; N1 = 64 with TND, D = 128, bf16 / fp16 only, query / key /
              weights of one dtype; TND actual_seq_lengths_query are prefix sums; sparse_mode 3 is the
              bottom-right causal mask (query i of Lq sees keys [0, Lk - Lq + i]).
              The HAL gives a window [start, end) per query over packed keys. The adapter makes every
              query its own batch (Lq = 1, so mode 3 shows it keys [0, Lk) with Lk = end - start) and
              pages each distinct start's keys from that start (PAGE-token pages, copied once per
              distinct start: one per sequence in practice), so position i of a batch is key start + i;
              the result is shifted back by start. Heads are zero-padded to 64 (exact). Weights are cast
              to the query's dtype (the op wants one dtype): exact only for weights bf16 holds; the HAL's
              fp32 weights otherwise lose bits below bf16 precision, which can swap near-tied picks. No
              per-key scale exists in this op: k_scale must be all ones (the unquantised indexer; A2 / A3
              have no fp8). The batch structure is read on the host (one sync per call).
sparse MLA    npu_sparse_flash_attention(query [T, N, 512], key, value, sparse_indices [T, 1, K],
              scale_value, block_table, actual_seq_lengths_query, actual_seq_lengths_kv, query_rope
              [T, N, 64], key_rope, sparse_block_size=1, layout_query="TND", layout_kv, sparse_mode,
              attention_mode=2, return_softmax_lse=True) -> (out [T, N, 512], softmax_max, softmax_sum):
              MLA with the 576-wide query split into the 512 latent part and the 64 rope part (keys
              likewise; value = the latent part); valid indices first, -1 after; query heads N in
              {1, 2, ..., 128} (zero-padded to the next power of two, chunks of 128 above); paged keys
              in blocks of a multiple of 16 tokens up to 1024; bf16 / fp16.
              Prefill: one batch, kv as TND ([S, 1, 512] / [S, 1, 64]), indices = kv rows. Decode:
              layout PA_BSND over the paged cache; the cache row is one 576-wide tensor, CANN wants
              the latent and rope parts as two contiguous tensors, so the blocks the batch uses are
              split out (a copy of those blocks per call: a split cache layout on NPU would avoid it)
              and the block table is renumbered; indices stay logical positions (the op maps them
              through block_table); actual_seq_lengths_kv = seq_lens. sparse_mode 0 (no mask): the
              indices alone decide what is attended, as in the HAL. lse = softmax_max + log(softmax_sum)
              (flash-attention statistics of the scaled scores: natural log), read as [N2, T, N] (the
              layout CANN's grad op checks for TND); empty rows are set to out 0, lse +inf.
grouped_gemm  npu_grouped_matmul([x [M, K]], [w [E, K, N]], group_list=cumsum(m_sizes) (group_list_type 0),
              split_item=3, group_type=0) -> [y [M, N]]: rows of x split along M by group_list, group e
              times weight e. The HAL's w is [E, N, K]: passed as the transposed view. Rows after
              sum(m_sizes) are HAL padding: set to 0. No fp8 on A2 / A3 (bf16 / fp16 / fp32 only).
family        A2 (910B) vs A3 (910C) comes from torch_npu.npu.get_soc_version() (220-225 / 250-255).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from dsa.backends import adapt, vendor
from dsa.hal.capability import Requires
from dsa.hal.target import ascend_arch

MODULE = "torch_npu"
ARCHS = ("ascend910b", "ascend910_93")  # A2, A3
PAGE = 128  # index-key page size the indexer adapter builds
INDEX_HEADS, INDEX_DIM = 64, 128
SFA_HEADS = (1, 2, 4, 8, 16, 32, 64, 128)
D_V, D_ROPE = 512, 64
HALF = (torch.bfloat16, torch.float16)

# Every op: torch_npu importable, an A2 / A3 target (and `machine_reason`: this machine's NPU is that one).
REQUIRES = Requires(modules=(MODULE,), platforms=("npu",), archs=ARCHS, load=vendor.importer)
# Sparse decode: no fp8 on A2 / A3, so a bf16 cache; CANN sparse attention pages are multiples of 16 up to 1024.
DECODE = dataclasses.replace(REQUIRES, kv_cache_dtypes=("bf16",), page_sizes=range(16, 1025, 16))
INDEXER = dataclasses.replace(REQUIRES, max_index_heads=INDEX_HEADS)  # npu_lightning_indexer: <= 64 heads


def _lib():
    return vendor.load(MODULE)


# ---------------------------------------------------------------- checks beyond the declarations; per-call checks


def machine_reason(target) -> Optional[str]:
    """Beyond the declaration: the NPU of this machine (when one answers) is the target's A2 / A3."""
    try:
        here = ascend_arch(int(_lib().npu.get_soc_version()))
    except Exception:  # no device to ask: the profile's word stands
        return None
    return f"this machine's NPU is {here}, the target is {target.arch}" if here != target.arch else None


def indexer_args_reason(q, weights, k, k_scale, starts, ends, topk, max_visible=None) -> Optional[str]:
    if q.dtype not in HALF or k.dtype != q.dtype:
        return (f"npu_lightning_indexer takes bf16 / fp16 query and keys of one dtype (no fp8 on A2 / A3), "
                f"got {q.dtype} / {k.dtype}")
    if q.shape[1] > INDEX_HEADS or q.shape[2] != INDEX_DIM:
        return f"npu_lightning_indexer takes <= {INDEX_HEADS} heads of dim {INDEX_DIM}, got {q.shape[1]} x {q.shape[2]}"
    if not (1 <= topk <= 2048 or 3072 <= topk <= 8192):
        return f"npu_lightning_indexer's sparse_count is 1..2048 or 3072..8192, got {topk}"
    if not bool((k_scale == 1).all()):
        return "npu_lightning_indexer has no per-key scale: k_scale must be all ones"
    return None


def _sfa_args(q: Tensor, kv_dtype, d_v: int) -> Optional[str]:
    if q.dtype not in HALF or kv_dtype != q.dtype:
        return (f"npu_sparse_flash_attention takes a bf16 / fp16 query and cache of one dtype, "
                f"got {q.dtype} / {kv_dtype}")
    if d_v != D_V or q.shape[-1] != D_V + D_ROPE:
        return f"npu_sparse_flash_attention is built for a 512 latent + 64 rope split, got {q.shape[-1]} / {d_v}"
    return None


def prefill_args_reason(q, kv, indices, sm_scale, d_v) -> Optional[str]:
    return _sfa_args(q, kv.dtype, d_v)


def decode_args_reason(q, kv_cache, block_table, seq_lens, indices, sm_scale, d_v) -> Optional[str]:
    why = _sfa_args(q, kv_cache.dtype, d_v)
    if why:
        return why
    page = kv_cache.shape[1]
    if page % 16 or page > 1024:
        return f"npu_sparse_flash_attention takes pages of a multiple of 16 tokens up to 1024, got {page}"
    return None


def grouped_args_reason(x, x_scale, w, w_scale, m_sizes) -> Optional[str]:
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or x_scale is not None:
        return f"npu_grouped_matmul here takes bf16 / fp16 / fp32 (no fp8 on Ascend A2 / A3), got {x.dtype}"
    return None


# ---------------------------------------------------------------- indexer


def _paged_windows(k: Tensor, starts: list[int], ends: list[int]) -> tuple[Tensor, Tensor]:
    """Page each distinct start's keys: (key [blocks, PAGE, 1, D], block_table [T, max_blocks] int32)."""
    device, D = k.device, k.shape[-1]
    first_end: dict[int, int] = {}
    for s, e in zip(starts, ends):
        first_end[s] = max(first_end.get(s, s), e)
    segments, tables, next_block = [], {}, 0
    for s, e in first_end.items():
        n = max(e - s, 0)
        nblocks = max(1, -(-n // PAGE))
        segments.append(adapt.pad_dim(k[s : s + n], 0, nblocks * PAGE))
        tables[s] = list(range(next_block, next_block + nblocks))
        next_block += nblocks
    width = max(len(b) for b in tables.values())
    group_table = {s: b + [b[0]] * (width - len(b)) for s, b in tables.items()}
    block_table = torch.tensor([group_table[s] for s in starts], dtype=torch.int32, device=device)
    key = torch.cat(segments).view(next_block, PAGE, 1, D)
    return key, block_table


def indexer_topk(
    q: Tensor, weights: Tensor, k: Tensor, k_scale: Tensor, starts: Tensor, ends: Tensor, topk: int,
    max_visible: Optional[int] = None,
) -> Tensor:
    """HAL indexer_topk on npu_lightning_indexer (one single-query batch per token, paged per start)."""
    lib = _lib()
    T = q.shape[0]
    out = torch.full((T, topk), -1, dtype=torch.int32, device=q.device)
    if T == 0:
        return out
    st, en = starts.tolist(), ends.tolist()
    key, block_table = _paged_windows(k.contiguous(), st, en)
    query = adapt.pad_dim(q, 1, INDEX_HEADS).contiguous()
    w = adapt.pad_dim(weights.to(q.dtype), 1, INDEX_HEADS).contiguous()
    lens_q = torch.arange(1, T + 1, dtype=torch.int32, device=q.device)  # TND: prefix sums, 1 query each
    lens_k = (ends.long() - starts.long()).clamp_min(0).to(torch.int32)
    idx, _ = lib.npu_lightning_indexer(
        query, key, w, actual_seq_lengths_query=lens_q, actual_seq_lengths_key=lens_k, block_table=block_table,
        layout_query="TND", layout_key="PA_BSND", sparse_count=topk, sparse_mode=3,
    )
    local = idx.reshape(T, topk).long()
    valid = (local >= 0) & (local < lens_k.long()[:, None])
    return torch.where(valid, local + starts.long()[:, None], -1).to(torch.int32)


# ---------------------------------------------------------------- sparse MLA


def _lse(smax: Tensor, ssum: Tensor, T: int, N: int) -> Tensor:
    """softmax_max / softmax_sum ([N2, T, N], or with a replicated trailing axis) -> lse [T, N]."""
    def rows(x):
        x = x.float()
        return x.reshape(T, N) if x.numel() == T * N else x.reshape(T, N, -1)[..., 0]
    return rows(smax) + torch.log(rows(ssum))


def _sfa(query: Tensor, indices: Tensor, valid: Tensor, sm_scale: float, *, key, key_rope, block_table,
         lens_q, lens_kv, layout_kv: str) -> tuple[Tensor, Tensor]:
    """query [T, H, 576], indices [T, K] with `valid` -> out [T, H, 512], lse [T, H] (empty rows fixed)."""
    fn = _lib().npu_sparse_flash_attention
    T, H, _ = query.shape
    sparse = adapt.valid_first(indices, valid).unsqueeze(1).contiguous()  # [T, 1, K], valid first
    outs, lses = [], []
    for start, count, padded in adapt.head_chunks(H, SFA_HEADS):
        qc = adapt.pad_dim(query[:, start : start + count], 1, padded)
        out, smax, ssum = fn(
            qc[..., :D_V].contiguous(), key, key, sparse, sm_scale,
            block_table=block_table, actual_seq_lengths_query=lens_q, actual_seq_lengths_kv=lens_kv,
            query_rope=qc[..., D_V:].contiguous(), key_rope=key_rope, sparse_block_size=1,
            layout_query="TND", layout_kv=layout_kv, sparse_mode=0, attention_mode=2, return_softmax_lse=True,
        )[:3]
        outs.append(out[:, :count])
        lses.append(_lse(smax, ssum, T, padded)[:, :count])
    out, lse = torch.cat(outs, dim=1).to(query.dtype), torch.cat(lses, dim=1)
    return adapt.empty_rows_to_convention(out, lse, ~valid.any(-1))


def sparse_mla_prefill(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """HAL sparse_mla_prefill on npu_sparse_flash_attention, one TND batch over the contiguous kv."""
    T, S = q.shape[0], kv.shape[0]
    valid = adapt.prefill_valid(indices, S)
    one = lambda n: torch.tensor([n], dtype=torch.int32, device=q.device)  # noqa: E731  (B = 1: prefix sum = length)
    return _sfa(q, indices, valid, sm_scale, key=kv[..., :D_V].contiguous(), key_rope=kv[..., D_V:].contiguous(),
                block_table=None, lens_q=one(T), lens_kv=one(S), layout_kv="TND")


def sparse_mla_decode(q: Tensor, kv_cache: Tensor, block_table: Tensor, seq_lens: Tensor, indices: Tensor,
                      sm_scale: float, d_v: int) -> tuple[Tensor, Tensor]:
    """HAL sparse_mla_decode on npu_sparse_flash_attention over the used blocks of the paged cache (PA_BSND)."""
    B, s_q, H, D = q.shape
    page = kv_cache.shape[1]
    pages = (seq_lens.long() + page - 1) // page  # [B] blocks each sequence uses
    width = max(1, int(pages.max()) if B else 1)
    table = block_table.long()[:, :width]
    used = torch.arange(width, device=q.device)[None, :] < pages[:, None]
    blocks = torch.unique(torch.where(used, table, table[:, :1]).flatten())  # every referenced block, sorted
    renumbered = torch.searchsorted(blocks, torch.where(used, table, blocks[0]).contiguous()).to(torch.int32)
    rows = kv_cache[blocks]  # [n, page, 1, 576]: the blocks this batch uses
    valid = adapt.decode_valid(indices, seq_lens).reshape(B * s_q, -1)
    lens_q = torch.arange(1, B + 1, dtype=torch.int32, device=q.device) * s_q  # prefix sums of s_q per sequence
    out, lse = _sfa(q.reshape(B * s_q, H, D), indices.reshape(B * s_q, -1), valid, sm_scale,
                    key=rows[..., :D_V].contiguous(), key_rope=rows[..., D_V:].contiguous(), block_table=renumbered,
                    lens_q=lens_q, lens_kv=seq_lens.to(torch.int32), layout_kv="PA_BSND")
    return out.view(B, s_q, H, d_v), lse.view(B, s_q, H)


# ---------------------------------------------------------------- grouped GEMM


def grouped_gemm(x: Tensor, x_scale: Optional[Tensor], w: Tensor, w_scale: Optional[Tensor], m_sizes: Tensor) -> Tensor:
    """HAL grouped_gemm on npu_grouped_matmul (split M by the cumulative group sizes)."""
    group_list = m_sizes.to(torch.int64).cumsum(0)
    (y,) = _lib().npu_grouped_matmul([x], [w.transpose(1, 2)], group_list=group_list, split_item=3,
                                     group_type=0, group_list_type=0)
    total = group_list[-1] if group_list.numel() else torch.zeros((), dtype=torch.int64, device=x.device)
    padding = torch.arange(x.shape[0], device=x.device) >= total
    return y.masked_fill(padding[:, None], 0.0)

