"""The decode step a CUDA graph captures, proven on the CPU (issue 16 A.3).

`Batch.static_decode` builds a decode step from device tensors alone (shapes fixed by the batch size and
the block table's width); with the Triton providers (TRITON_INTERPRET=1 here) the whole model step then
runs inside `forbid_host_reads()`, which raises on any read of a tensor's values by the host. The step must
also give the logits of the ordinary `Batch.build` decode step, padding rows must not disturb real ones,
and the detector must catch real reads (the torch provider's indexer reads starts / ends on the host).
"""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.model_helpers import make_weights, tiny_config, token_ids
from dsa.hal import OpSet, registry
from dsa.hal.capture import HostReadError, forbid_host_reads, host_reads_allowed
from dsa.model.cache import Batch, PagedCache
from dsa.model.transformer import DeepseekV32

PAGE = 16
LENS = [20, 37]  # two prompts; the decode step adds one token to each
TABLES = [[0, 1], [2, 3, 4]]
SCRATCH = 11  # the padding row's block
NEXT = [5, 7]


def _model(provider: str, kv: str):
    cfg = tiny_config()
    model = DeepseekV32(cfg, OpSet.single(provider), dtype=torch.bfloat16, kv_cache_dtype=kv, fp8_weights=True)
    model.load_hf_state_dict(make_weights(cfg, 2, fp8=True, dtype=torch.bfloat16))
    cache = PagedCache(cfg, num_blocks=12, page_size=PAGE, kv_cache_dtype=kv, dtype=torch.bfloat16)
    ids = torch.cat([token_ids(cfg, n, s) for n, s in zip(LENS, [1, 2])])
    with torch.inference_mode():
        model(ids, Batch.build(LENS, [0, 0], TABLES, PAGE), cache, last_only=True)
    return model.eval(), cache


def _eager_decode(model, cache) -> torch.Tensor:
    batch = Batch.build([1, 1], LENS, TABLES, PAGE)
    return model(torch.tensor(NEXT), batch, cache, last_only=True)  # [2, vocab]


def _static_inputs():
    """Three rows: the two sequences (block tables padded to 4 blocks) and a padding row (1 token, scratch)."""
    table = torch.tensor([[0, 1, 0, 0], [2, 3, 4, 0], [SCRATCH, 0, 0, 0]], dtype=torch.int32)
    seq_lens = torch.tensor([LENS[0] + 1, LENS[1] + 1, 1], dtype=torch.int32)
    return torch.tensor(NEXT + [0]), seq_lens, table


def _have_triton() -> bool:
    try:
        registry.get("sparse_mla_decode", "triton")
    except Exception:
        return False
    from dsa.backends.triton.common import INTERPRETING

    return INTERPRETING


@pytest.mark.parametrize("kv", ["bf16", "fp8"])
def test_triton_decode_step_reads_nothing_back(kv):
    if not _have_triton():
        pytest.skip("needs the triton package with TRITON_INTERPRET=1 (kernels on CPU tensors)")
    model, cache = _model("triton", kv)
    with torch.inference_mode():
        eager = _eager_decode(model, cache)
        ids, seq_lens, table = _static_inputs()
        with forbid_host_reads():
            logits = model(ids, Batch.static_decode(seq_lens, table, PAGE), cache, last_only=True)  # [3, vocab]
    assert logits.shape == (3, eager.shape[1])
    # the same numbers as the ordinary step (the new tokens' cache writes are the same values again)
    torch.testing.assert_close(logits[:2], eager, atol=1e-3, rtol=1e-3)
    assert torch.equal(logits[:2].argmax(-1), eager.argmax(-1))


def test_static_batch_matches_build():
    """Batch.static_decode's rows mean what Batch.build's do; only the packing stride differs (L per sequence)."""
    ids, seq_lens, table = _static_inputs()
    st = Batch.static_decode(seq_lens, table, PAGE)
    built = Batch.build([1, 1, 1], [int(n) - 1 for n in seq_lens], [[0, 1], [2, 3, 4], [SCRATCH]], PAGE)
    for name in ("positions", "seq_idx", "query_start", "context_lens", "seq_lens", "slots"):
        assert torch.equal(getattr(st, name), getattr(built, name)), name
    L = 4 * PAGE
    assert st.is_decode and st.max_seq_len == L and st.kv_start.tolist() == [0, L, 2 * L, 3 * L]
    starts, ends = st.visible_range()
    assert starts.tolist() == [0, L, 2 * L] and (ends - starts).tolist() == seq_lens.tolist()
    for b, n in enumerate(seq_lens.tolist()):  # the visible rows of each sequence are its cached slots
        lo, hi = built.kv_start[b], built.kv_start[b + 1]
        assert torch.equal(st.cached_slots[b * L:b * L + n], built.cached_slots[lo:hi])


def test_torch_provider_gives_the_same_step_but_reads_the_host():
    model, cache = _model("torch", "bf16")
    ids, seq_lens, table = _static_inputs()
    with torch.inference_mode():
        eager = _eager_decode(model, cache)
        logits = model(ids, Batch.static_decode(seq_lens, table, PAGE), cache, last_only=True)
        torch.testing.assert_close(logits[:2], eager, atol=1e-3, rtol=1e-3)
        with pytest.raises(HostReadError, match="host read inside a static region"):
            with forbid_host_reads():
                model(ids, Batch.static_decode(seq_lens, table, PAGE), cache, last_only=True)
    assert host_reads_allowed()  # the region ended with the error


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("read", [
    lambda x: x.max().item(), lambda x: int(x.max()), lambda x: bool((x > 2).any()), lambda x: float(x[0]),
    lambda x: x.tolist(), lambda x: x.numpy(), lambda x: x.nonzero(), lambda x: x[x > 2],
    lambda x: torch.repeat_interleave(x), lambda x: torch.bincount(x), lambda x: x.unique(),
    lambda x: torch.masked_select(x, x > 1),
], ids=["item", "int", "bool", "float", "tolist", "numpy", "nonzero", "bool-mask", "repeat_interleave",
        "bincount", "unique", "masked_select"])
def test_detector_catches_each_host_read(read, inference):
    x = torch.arange(5)
    with torch.inference_mode(inference):
        with pytest.raises(HostReadError):
            with forbid_host_reads():
                read(x)
    assert x.tolist() == [0, 1, 2, 3, 4] and int(x.max()) == 4  # restored afterwards


def test_detector_lets_static_code_run():
    x = torch.arange(6)
    with forbid_host_reads():
        assert not host_reads_allowed()
        y = x.topk(2).values + x.repeat_interleave(2, output_size=12)[:2] + x.shape[0]
        z = torch.zeros(3, dtype=torch.int64).scatter_add_(0, x % 3, torch.ones_like(x))
    assert y.tolist() == [11, 10] and z.tolist() == [2, 2, 2]


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_a_bound_below_the_visible_keys_is_refused(name):
    """Providers that read starts / ends anyway (torch; triton under the interpreter) check max_visible."""
    if name == "triton" and not _have_triton():
        pytest.skip("needs the triton package with TRITON_INTERPRET=1 (kernels on CPU tensors)")
    fn = registry.get("indexer_topk", name).fn
    q, w, k = torch.randn(2, 2, 16), torch.rand(2, 2), torch.randn(10, 16)
    starts, ends = torch.tensor([0, 0], dtype=torch.int32), torch.tensor([4, 10], dtype=torch.int32)
    assert fn(q, w, k, torch.ones(10), starts, ends, 3, 10).shape == (2, 3)
    with pytest.raises(ValueError, match="sees 10 keys, more than max_visible 9"):
        fn(q, w, k, torch.ones(10), starts, ends, 3, 9)
