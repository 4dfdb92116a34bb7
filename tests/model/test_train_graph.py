"""The training graph computes the serving graph's function: its logits match DeepseekV32's forward through
the HAL ops (fp32, provider torch, unquantised indexer) for whole sequences, in dense mode (top-k >= L) and
in sparse mode (top-k < L: the same keys selected), and gradients reach every trainable parameter.

Tolerance: the serving graph's own prefill-vs-decode tolerance (atol/rtol 1e-4, tests/model/test_prefill_decode.py):
the two differ only in how the same fp32 math is shaped (dense masked softmax vs gathered keys).
"""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.model_helpers import make_weights, tiny_config, token_ids
from dsa.hal import OpSet
from dsa.model.cache import Batch, PagedCache
from dsa.model.transformer import DeepseekV32
from dsa.train.graph import TrainGraph, indexer_parameters, topk_mask, trainable

SEED = 2  # test_prefill_decode's tie-free checkpoint and sequences


def _model(cfg):
    m = DeepseekV32(cfg, OpSet.single("torch"), dtype=torch.float32, kv_cache_dtype="bf16", indexer_fp8=False)
    m.load_hf_state_dict(make_weights(cfg, SEED))
    return m.eval()


def _serving_logits(model, ids):
    cfg = model.config
    cache = PagedCache(cfg, num_blocks=4, page_size=16, kv_cache_dtype="bf16", dtype=torch.float32, indexer_fp8=False)
    batch = Batch.build(new_lens=[len(ids)], context_lens=[0], block_tables=[[0, 1, 2, 3]], page_size=16)
    with torch.inference_mode():
        return model(ids, batch, cache)


@pytest.mark.parametrize("mode, topk", [("dense", 64), ("sparse", 16)])
def test_train_graph_matches_the_serving_graph(mode, topk):
    cfg = tiny_config(index_topk=topk)
    model = _model(cfg)
    a, b = token_ids(cfg, 48, 2), token_ids(cfg, 48, 4)
    with torch.no_grad():
        got = TrainGraph(model)(torch.stack([a, b]), mode=mode).logits
    for row, ids in enumerate((a, b)):
        torch.testing.assert_close(got[row], _serving_logits(model, ids), atol=1e-4, rtol=1e-4)


def test_sparse_differs_from_dense_when_topk_is_below_the_length():
    model = _model(tiny_config(index_topk=16))
    ids = token_ids(model.config, 48, 2)[None]
    with torch.no_grad():
        dense = TrainGraph(model)(ids, mode="dense").logits
        sparse = TrainGraph(model)(ids, mode="sparse").logits
    torch.testing.assert_close(dense[0, :16], sparse[0, :16])  # the first 16 rows see <= 16 keys: all of them
    assert (dense[0, 16:] - sparse[0, 16:]).abs().max() > 1e-3


def test_gradients_reach_every_parameter_and_detach_keeps_the_indexer_apart():
    model = _model(tiny_config(index_topk=16))
    trainable(model)
    ids = token_ids(model.config, 40, 2)[None]
    out = TrainGraph(model)(ids, mode="sparse", want_aux=True, detach_indexer=True)
    lm = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    lm.backward()
    index_ids = {id(p) for p in indexer_parameters(model)}
    for name, p in model.named_parameters():
        if id(p) in index_ids:
            assert p.grad is None or not p.grad.any(), f"{name}: the LM loss must not train the indexer"
        elif "e_score" not in name and p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
    model.zero_grad(set_to_none=True)
    out = TrainGraph(model)(ids, mode="sparse", want_aux=True, detach_indexer=True)
    out.aux[0].index_scores.masked_fill(~out.aux[0].selected, 0).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if id(p) not in index_ids and "layers.0." in n
               and "indexer" not in n), "the indexer's loss must not reach the main graph"


def test_topk_mask():
    scores = torch.tensor([[[3.0, 1.0, 1.0, 2.0]] * 4])  # [1, 4, 4]
    vis = torch.ones(4, 4, dtype=torch.bool).tril()
    m = topk_mask(scores, vis, 2)
    assert m[0, 3].tolist() == [True, False, False, True]
    assert m[0, 2].tolist() == [True, True, False, False]  # a tie at 1.0: the lower position
    assert m[0, 1].tolist() == [True, True, False, False]  # sees 2 <= k: all visible
