"""torch_npu stand-ins written from the op schemas torch_npu 2.13 declares (docs/model-and-ops.md 8) and the CANN
ops-transformer READMEs (LightningIndexer, SparseFlashAttention) and npu_grouped_matmul's documentation.

Documented facts modelled here: TND layouts with prefix-sum actual_seq_lengths_query; PA_BSND keys
[blocks, block_size, 1, D] read through block_table with per-batch actual_seq_lengths_key/_kv; the
lightning indexer's score sum_h w_h relu(q_h . k), its N1 = 64 (TND), D = 128, one dtype for query /
key / weights, output positions within the batch with -1 padding; sparse_mode 3 = bottom-right causal
(query i of Lq sees keys [0, Lk - Lq + i]), 0 = no mask; sparse flash attention's 512 + 64 query / key
split, value = the latent, valid indices first and -1 after, N in {1, 2, ..., 128}, block_size a
multiple of 16 up to 1024, and flash-attention statistics softmax_max / softmax_sum ([N2, T, N] for TND,
the layout CANN's grad op checks); npu_grouped_matmul splitting x along M by a cumulative group_list
(split_item 3, group_type 0) with weight [E, K, N]. What the docs leave open (a row with no valid
index) is modelled the way a plain formula would behave (0 / 0), so the adapter has to handle it.

Every argument is checked and used: actual_seq_lengths_* int32 on the query's device, [B] (one per
batch, B from the query's prefix sums, which end at T); PA_BSND block_table [B, max_blocks] int32 whose
entries for the first actual_seq_lengths_key/_kv[b] tokens are blocks of the key tensor (a negative or
too-large entry is rejected, never wrapped) with that many tokens within the table's capacity; TND kv
prefix sums within the kv rows; scale_value a positive number; query_rope / key_rope in the query's /
key's dtype and contiguous; pre_tokens / next_tokens / sinks only at their defaults (not modelled;
sparse_mode 0 / 3 never read them). npu_grouped_matmul: group_list int64 [E] cumulative within M; bias,
scale, offset, antiquant / per-token / activation arguments None, act_type 0, output_dtype None or x's.
Where the CANN READMEs leave a detail open (dtype of the length tensors, which table entries are read)
the stand-in asserts what our adapter passes, so a change there is at least noticed.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

HALF = (torch.bfloat16, torch.float16)
NO_LIMIT = 2**63 - 1


def _same_device(*tensors):
    devices = {t.device for t in tensors if t is not None}
    assert len(devices) == 1, f"all tensors on one device, got {sorted(map(str, devices))}"


def _lengths(t, n: int, name: str):
    assert t is not None and t.dtype == torch.int32 and tuple(t.shape) == (n,), (
        f"{name} [{n}] int32, got {None if t is None else (tuple(t.shape), t.dtype)}")
    assert bool((t >= 0).all()), f"{name} are lengths (>= 0)"


def _check_table(block_table, B: int, blocks: int, bs: int, lens):
    assert block_table.dtype == torch.int32 and block_table.dim() == 2 and block_table.shape[0] == B, (
        f"block_table [B={B}, max_blocks] int32, got {tuple(block_table.shape)} {block_table.dtype}")
    for b, n in enumerate(lens):
        assert n <= block_table.shape[1] * bs, f"batch {b}: {n} tokens beyond the table's {block_table.shape[1]} x {bs}"
        used = block_table[b, : -(-n // bs)].long()
        assert bool(((used >= 0) & (used < blocks)).all()), (
            f"block_table[{b}] names blocks {used.tolist()} outside the key's {blocks}")


def _batches(lens_q):
    """Prefix sums [B] -> list of (first query row, count)."""
    ends = [int(v) for v in lens_q]
    assert all(b >= a for a, b in zip([0] + ends, ends)), "actual_seq_lengths_query must be prefix sums (TND)"
    return [(a, b - a) for a, b in zip([0] + ends[:-1], ends)]


def _paged(key, table_row, n):
    """The first n tokens of one batch from a PA_BSND tensor [blocks, bs, 1, D]."""
    bs = key.shape[1]
    assert n <= table_row.numel() * bs
    p = torch.arange(n)
    return key[table_row.long()[p // bs], p % bs, 0].float()


def module(soc_version: int = 223) -> SimpleNamespace:
    def npu_lightning_indexer(query, key, weights, *, actual_seq_lengths_query=None, actual_seq_lengths_key=None,
                              block_table=None, layout_query="BSND", layout_key="BSND", sparse_count=2048,
                              sparse_mode=3, pre_tokens=2**63 - 1, next_tokens=2**63 - 1, return_value=False):
        assert layout_query == "TND" and layout_key == "PA_BSND", "this stand-in models TND + PA_BSND"
        assert query.dtype in HALF and key.dtype == query.dtype and weights.dtype == query.dtype, "one half dtype"
        T, N1, D = query.shape
        assert N1 == 64 and D == 128, f"TND takes 64 heads of dim 128, got {N1} x {D}"
        assert key.dim() == 4 and key.shape[2] == 1 and key.shape[3] == D and tuple(weights.shape) == (T, N1)
        assert 1 <= sparse_count <= 2048 or 3072 <= sparse_count <= 8192
        assert sparse_mode in (0, 3) and block_table is not None and block_table.dtype == torch.int32
        assert actual_seq_lengths_query.dtype == torch.int32 and int(actual_seq_lengths_query[-1]) == T
        assert pre_tokens == NO_LIMIT and next_tokens == NO_LIMIT and isinstance(return_value, bool), "not modelled"
        _same_device(query, key, weights, actual_seq_lengths_query, actual_seq_lengths_key, block_table)
        assert query.is_contiguous() and key.is_contiguous() and weights.is_contiguous()
        batches = _batches(actual_seq_lengths_query)
        _lengths(actual_seq_lengths_key, len(batches), "actual_seq_lengths_key")
        _check_table(block_table, len(batches), key.shape[0], key.shape[1], [int(v) for v in actual_seq_lengths_key])
        idx = torch.full((T, 1, sparse_count), -1, dtype=torch.int32)
        vals = torch.full((T, 1, sparse_count), -math.inf)
        for b, (q0, lq) in enumerate(batches):
            lk = int(actual_seq_lengths_key[b])
            assert lk >= 0 and block_table.shape[1] * key.shape[1] >= lk
            keys = _paged(key, block_table[b], lk)  # [lk, D]
            for i in range(lq):
                t = q0 + i
                visible = lk - lq + i + 1 if sparse_mode == 3 else lk
                if visible <= 0:
                    continue
                s = (torch.relu(query[t].float() @ keys[:visible].t()) * weights[t].float()[:, None]).sum(0)
                order = sorted(range(visible), key=lambda j: (-float(s[j]), j))[:sparse_count]
                idx[t, 0, : len(order)] = torch.tensor(order, dtype=torch.int32)
                vals[t, 0, : len(order)] = s[order]
        return idx, (vals.to(query.dtype) if return_value else torch.empty(0))

    def npu_sparse_flash_attention(query, key, value, sparse_indices, scale_value, *, block_table=None,
                                   actual_seq_lengths_query=None, actual_seq_lengths_kv=None, query_rope=None,
                                   key_rope=None, sparse_block_size=1, layout_query="BSND", layout_kv="BSND",
                                   sparse_mode=3, pre_tokens=2**63 - 1, next_tokens=2**63 - 1, attention_mode=0,
                                   return_softmax_lse=False, sinks=None):
        assert layout_query == "TND" and layout_kv in ("TND", "PA_BSND")
        assert query.dtype in HALF and key.dtype == query.dtype and query.is_contiguous() and key.is_contiguous()
        T, N, D = query.shape
        assert D == 512 and N in (1, 2, 4, 8, 16, 32, 64, 128), f"query N {N} / D {D}"
        assert query_rope is not None and tuple(query_rope.shape) == (T, N, 64) and query_rope.is_contiguous()
        assert value is key or torch.equal(value, key), "MLA: the value is the latent key"
        assert key_rope is not None and key_rope.shape[:-1] == key.shape[:-1] and key_rope.shape[-1] == 64
        assert sparse_block_size == 1 and sparse_mode in (0, 3) and attention_mode == 2
        assert pre_tokens == NO_LIMIT and next_tokens == NO_LIMIT and sinks is None, "not modelled"
        assert isinstance(scale_value, float) and scale_value > 0, f"scale_value a positive float, got {scale_value!r}"
        assert query_rope.dtype == query.dtype and key_rope.dtype == key.dtype and key_rope.is_contiguous()
        assert isinstance(return_softmax_lse, bool)
        _same_device(query, key, value, sparse_indices, block_table, actual_seq_lengths_query, actual_seq_lengths_kv,
                     query_rope, key_rope)
        assert actual_seq_lengths_query.dtype == torch.int32 and int(actual_seq_lengths_query[-1]) == T, (
            "actual_seq_lengths_query: int32 prefix sums ending at T")
        assert sparse_indices.dtype == torch.int32 and sparse_indices.shape[:2] == (T, 1)
        idx = sparse_indices[:, 0].long()
        after_invalid = (idx < 0).long().cummax(-1).values.bool()
        assert bool((idx[after_invalid] == -1).all()), "valid indices first, -1 after"
        batches = _batches(actual_seq_lengths_query)
        _lengths(actual_seq_lengths_kv, len(batches), "actual_seq_lengths_kv")
        if layout_kv == "PA_BSND":
            assert key.dim() == 4 and key.shape[2] == 1, f"PA_BSND key [blocks, block_size, 1, 512], got {key.shape}"
            assert key.shape[1] % 16 == 0 and key.shape[1] <= 1024 and block_table is not None
            lens_kv = [int(v) for v in actual_seq_lengths_kv]
            _check_table(block_table, len(batches), key.shape[0], key.shape[1], lens_kv)
            starts_kv = [0] * len(lens_kv)
        else:  # TND: prefix sums as for the query
            assert block_table is None and key.dim() == 3 and key.shape[1] == 1
            ends_kv = [int(v) for v in actual_seq_lengths_kv]
            assert ends_kv == sorted(ends_kv) and (not ends_kv or ends_kv[-1] <= key.shape[0]), (
                f"TND actual_seq_lengths_kv are prefix sums within the {key.shape[0]} kv rows")
            starts_kv, lens_kv = [0] + ends_kv[:-1], [e - s for s, e in zip([0] + ends_kv[:-1], ends_kv)]
        assert len(lens_kv) == len(batches)
        out = torch.empty(T, N, 512)
        smax, ssum = torch.empty(1, T, N), torch.empty(1, T, N)
        for b, (q0, lq) in enumerate(batches):
            lk = lens_kv[b]
            if layout_kv == "PA_BSND":
                nope, rope = _paged(key, block_table[b], lk), _paged(key_rope, block_table[b], lk)
            else:
                nope = key[starts_kv[b] : starts_kv[b] + lk, 0].float()
                rope = key_rope[starts_kv[b] : starts_kv[b] + lk, 0].float()
            for i in range(lq):
                t = q0 + i
                sel = idx[t][idx[t] >= 0]
                assert bool((sel < lk).all()), f"index past the batch's kv length {lk}"
                if sparse_mode == 3:
                    sel = sel[sel <= lk - lq + i]
                s = (query[t].float() @ nope[sel].t() + query_rope[t].float() @ rope[sel].t()) * scale_value  # [N, n]
                m = s.amax(-1) if sel.numel() else torch.full((N,), -math.inf)
                e = torch.exp(s - m[:, None])
                out[t] = (e @ nope[sel]) / e.sum(-1, keepdim=True)  # 0 / 0 when nothing is selected
                smax[0, t], ssum[0, t] = m, e.sum(-1)
        if not return_softmax_lse:
            smax, ssum = torch.empty(0), torch.empty(0)
        return out.to(query.dtype), smax, ssum

    def npu_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None, antiquant_scale=None,
                           antiquant_offset=None, per_token_scale=None, group_list=None, activation_input=None,
                           activation_quant_scale=None, activation_quant_offset=None, split_item=0, group_type=None,
                           group_list_type=0, act_type=0, output_dtype=None, tuning_config=None):
        assert split_item == 3 and group_type == 0 and group_list_type == 0 and len(x) == 1 and len(weight) == 1
        unmodelled = (bias, scale, offset, antiquant_scale, antiquant_offset, per_token_scale, activation_input,
                      activation_quant_scale, activation_quant_offset, tuning_config)
        assert all(v is None for v in unmodelled) and act_type == 0, "quantisation / bias / activation: not modelled"
        assert output_dtype in (None, x[0].dtype), f"output_dtype {output_dtype} for {x[0].dtype} inputs"
        _same_device(x[0], weight[0], group_list)
        (a,), (w,) = x, weight
        assert a.dtype in (torch.bfloat16, torch.float16, torch.float32) and w.dtype == a.dtype
        M, K = a.shape
        E, K2, N = w.shape
        assert K2 == K and group_list.dtype == torch.int64 and group_list.numel() == E
        cuts = [0] + [int(v) for v in group_list]
        assert all(b >= c for c, b in zip(cuts, cuts[1:])) and cuts[-1] <= M, "cumulative group_list within M"
        y = torch.full((M, N), math.nan, dtype=a.dtype)  # rows past the last group: not computed
        for e in range(E):
            if cuts[e + 1] > cuts[e]:
                y[cuts[e] : cuts[e + 1]] = (a[cuts[e] : cuts[e + 1]].float() @ w[e].float()).to(a.dtype)
        return [y]

    return SimpleNamespace(
        npu_lightning_indexer=npu_lightning_indexer,
        npu_sparse_flash_attention=npu_sparse_flash_attention,
        npu_grouped_matmul=npu_grouped_matmul,
        npu=SimpleNamespace(get_soc_version=lambda: soc_version),
    )
