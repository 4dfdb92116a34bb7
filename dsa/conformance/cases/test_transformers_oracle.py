"""Independent oracle: transformers' pure-PyTorch `DeepseekV32ForCausalLM` (transformers >= 5.24)
against our model, on the same tiny checkpoint directory.

Setup. One seeded random checkpoint is written as HF files: config.json (the tiny config plus the
overrides below) and model.safetensors in the HF layout with the real checkpoint's dtypes (bf16 linears,
embedding, lm_head; fp32 norms, k_norm bias, router bias). transformers loads the directory with
`from_pretrained(dir, dtype=float32)` (no remote code, offline); our model reads the same config.json and
the same tensors, upcast bf16 -> fp32 (exact), through `load_hf_state_dict`. Both sides therefore compute
in fp32 on bit-identical weights. (In bf16 both implementations move by up to ~2 on logits of magnitude
~4 against their own fp32 run, because a rounding difference flips an MoE routing or top-k decision, so a
bf16-vs-bf16 comparison could not be tight; fp32 compute on the bf16 checkpoint can.)

What is compared, with index_topk >= the sequence length ("dense": every past key) and < it ("sparse",
16 of up to 72 keys, so sparsity is real in every layer):
  * full-sequence logits of one forward over 72 tokens (docs/model-and-ops.md 7: atol 1e-4 / rtol 1e-4 per element,
    global difference 1e-8; observed max |diff| ~4e-6 on logits of magnitude ~4), and the keys the two
    indexers selected, per layer and query, as sets (must be identical);
  * greedy continuations: a 40-token prompt, then 32 tokens. Ours: prefill, then 31 single-token decode
    steps through the paged cache; theirs: `generate(do_sample=False)` with its DynamicCache. The 32 token
    ids must be identical and every step's logits close (same tolerances).

Known, legitimate differences (made not to matter here):
  * transformers skips the indexer's Hadamard rotation (orthonormal and applied to both q and k, so every
    q.k score is unchanged) and its fp8 rounding of q / k: we run with `indexer_fp8=False`.
  * Ties: ReLU makes exact-0 index scores common with tiny random weights (the 4-head tiny indexer has
    such ties at the top-k boundary for every seed tried), and tied keys may legally be selected either
    way (docs/model-and-ops.md 7), which then legally changes the logits. We use a config WITHOUT ties instead of a
    tie-aware comparison: 16 index heads (an all-zero score needs all 16 ReLUs to be 0) and a seed whose
    smallest relative gap between the k-th and (k+1)-th score, over every layer and every query of the
    final 72-token sequence (which covers the prefill and all decode queries, since scores are causal), is
    far above fp32 noise. Each sparse test asserts that premise first on the fp64 reference scores.
  * transformers' MLA rotary output is de-interleaved (pair i's two results land at i and i + r/2 instead
    of 2i, 2i+1); it does so for q_pe and k_pe alike, so the q.k scores equal those of interleaved RoPE.
  * transformers needs `num_key_value_heads` in config.json (its default is the 671B value 128, and
    `num_attention_heads // num_key_value_heads` = 0 breaks attention for fewer heads). The real
    config.json carries it (= num_attention_heads); the tiny config does not, so it is added here.

Conventions read from transformers' modeling_deepseek_v32.py, all agreeing with docs/model-and-ops.md 2.1 / 2.2 (pinned
by `test_conventions_agree` and, behaviourally, by the logits match): indexer RoPE rotate-half (NeoX) on
the FIRST qk_rope_head_dim dims of q and k ("rope part first"); MLA RoPE interleaved on the LAST dims;
k_norm = LayerNorm with bias, eps 1e-6; index score = sum_h w_h * ReLU(q_h . k) with w = weights_proj(x)
* n_heads^-0.5 * head_dim^-0.5; YaRN frequencies with floor/ceil correction range; softmax scale
qk_head_dim^-0.5 * (0.1 * mscale_all_dim * ln(factor) + 1)^2; router sigmoid + correction bias, top-2 group
scores, unbiased weights normalised and scaled.

Disagreements found (transformers differs from docs/model-and-ops.md; each documented by an explicit test below and kept
out of the comparison configs above):
  1. YaRN in force: transformers applies YaRN (frequencies and the softmax mscale^2) whenever
     rope_scaling is yarn. The demo applies it when the served context exceeds the original length (the
     demo's `max_seq_len > original_seq_len`, "always in practice"); our ModelConfig.yarn uses
     max_position_embeddings as that length. So with max_position_embeddings <= the original length the
     two differ; real checkpoints (163840 > 4096) and the tiny config (4096 > 1024) never do.
  2. cos / sin scaling: transformers multiplies cos and sin by mscale(factor, mscale) /
     mscale(factor, mscale_all_dim); docs/model-and-ops.md 2.1 says "no mscale on cos/sin". The ratio is exactly 1 when
     mscale == mscale_all_dim, as in every released config (both 1.0), so the two agree there.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

# transformers / huggingface_hub read these at import time; the oracle only ever reads local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", minversion="5.24",
    reason="the independent oracle needs transformers >= 5.24 (DeepseekV32ForCausalLM); pip install -e '.[test]'",
)
from safetensors.torch import load_file, save_file  # noqa: E402

from dsa.conformance.model_helpers import TINY, Runner, min_boundary_gap, token_ids  # noqa: E402
from dsa.conformance.reference.compare import assert_close, global_diff  # noqa: E402
from dsa.model.config import ModelConfig  # noqa: E402
from dsa.model.layers import RotaryEmbedding  # noqa: E402
from dsa.model.weights import random_checkpoint  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4, cos_eps=1e-8)
TIE_MARGIN = 1e-5  # relative top-k boundary gap required; fp32 noise of the scores is ~1e-7
LOGIT_MARGIN = 1e-3  # top-1 minus top-2 logit required for a meaningful greedy comparison (noise ~4e-6)
SEED = 7  # checkpoint + token seed: tie-free with 16 index heads (smallest relative boundary gap
# ~1.4e-4, top-1 minus top-2 greedy logit >= 4e-3); seeds 0-6 have smaller gaps or margins
PROMPT, NEW = 40, 32
LENGTH = PROMPT + NEW
INDEX_HEADS = 16
CASES = {
    "dense": dict(index_topk=128, index_n_heads=INDEX_HEADS),  # index_topk >= LENGTH: every past key
    "sparse": dict(index_topk=16, index_n_heads=INDEX_HEADS),  # index_topk < PROMPT: sparse everywhere
}


def write_checkpoint(directory: Path, seed: int = SEED, **overrides) -> None:
    """config.json (tiny config + overrides) and a single model.safetensors in the HF layout and dtypes."""
    raw = json.loads(TINY.read_text())
    raw.update(overrides)
    raw["num_key_value_heads"] = raw["num_attention_heads"]  # as in the real config.json (see docstring)
    raw["torch_dtype"] = "bfloat16"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(raw, indent=1))
    config = ModelConfig.from_dict(raw, str(directory / "config.json"))
    save_file(random_checkpoint(config, seed, dtype=torch.bfloat16), str(directory / "model.safetensors"))


class Pair:
    """The same checkpoint directory loaded by transformers and by our model (both computing in fp32)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.config = ModelConfig.from_file(directory)
        tensors = load_file(str(directory / "model.safetensors"))
        self.weights = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in tensors.items()}
        self.hf, self.loading_info = transformers.DeepseekV32ForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32, output_loading_info=True,
        )
        self.hf.eval()
        self.selected: list[torch.Tensor] = []  # transformers' indexer output per layer, last forward
        for layer in self.hf.model.layers:
            layer.self_attn.indexer.register_forward_hook(lambda _m, _a, out: self.selected.append(out))

    def runner(self) -> Runner:
        return Runner(self.config, self.weights, dtype=torch.float32, indexer_fp8=False, num_blocks=8)

    def hf_forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.selected.clear()
        with torch.no_grad():
            return self.hf(ids[None]).logits[0].float()


_PAIRS: dict = {}


def pair(tmp_path_factory, name: str, **overrides) -> Pair:
    if name not in _PAIRS:
        directory = tmp_path_factory.mktemp(f"hf-{name}")
        write_checkpoint(directory, **overrides)
        _PAIRS[name] = Pair(directory)
    return _PAIRS[name]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The shapes here are tiny (hundreds of small ops per step): one intra-op thread is as fast as two on
    an idle machine and ~10x faster on a busy one (OpenMP threads spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    return pair(tmp_path_factory, request.param, **CASES[request.param])


def assert_tie_free(p: Pair, ids: torch.Tensor) -> None:
    if p.config.index_topk >= ids.numel():
        return  # dense: every past key is selected, the scores' order does not matter
    gap = min_boundary_gap(p.directory / "config.json", p.weights, ids, indexer_fp8=False)  # the oracle reads it
    assert gap > TIE_MARGIN, (
        f"premise: the top-k boundary of seed {SEED} has a (near-)tie (relative gap {gap:.3g}), where both "
        "selections are legal; pick another seed")


def hf_selection_masks(p: Pair, T: int) -> list[torch.Tensor]:
    """transformers' indexer outputs of the last full forward -> [T, T] masks of causally visible picks.
    For a query t < index_topk it returns min(index_topk, T) indices, the surplus being masked (future)
    positions; from t >= index_topk on, every pick must be visible."""
    masks = []
    for layer, idx in enumerate(p.selected):
        idx = idx[0].long()  # [T, min(topk, T)]
        mask = torch.zeros(T, T, dtype=torch.bool)
        for t in range(T):
            picks = idx[t]
            if t >= p.config.index_topk:
                assert (picks <= t).all(), f"transformers layer {layer}: query {t} selected a future key"
            mask[t, picks[picks <= t]] = True
        masks.append(mask)
    return masks


# ---- the comparison --------------------------------------------------------------------------------
def test_checkpoint_loads_fully_in_both(case):
    info = case.loading_info
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert case.runner().model.config == case.config  # ours is strict: every tensor present and shaped


def test_conventions_agree(case):
    cfg, hf = case.config, case.hf
    assert hf.config.num_key_value_heads == cfg.num_attention_heads
    rot = hf.model.rotary_emb
    assert rot.attention_scaling == 1.0  # mscale == mscale_all_dim: no cos/sin scaling (docs/model-and-ops.md 2.1)
    torch.testing.assert_close(rot.inv_freq.double(), RotaryEmbedding(cfg).inv_freq.double(), rtol=1e-6, atol=0)
    for layer in hf.model.layers:
        attn = layer.self_attn
        assert attn.scaling == pytest.approx(cfg.softmax_scale, rel=1e-12)
        k_norm = attn.indexer.k_norm
        assert isinstance(k_norm, torch.nn.LayerNorm) and k_norm.bias is not None and k_norm.eps == 1e-6
        assert attn.indexer.qk_rope_head_dim == cfg.qk_rope_head_dim  # rope part = the first qk_rope dims


def test_full_sequence_logits_and_selection_match(case):
    cfg = case.config
    ids = token_ids(cfg, LENGTH, SEED)
    assert_tie_free(case, ids)
    r = case.runner()
    ours = r.step({"s": ids})["s"]
    theirs = case.hf_forward(ids)
    assert_close(ours, theirs, name=f"logits, ours vs transformers (index_topk {cfg.index_topk})", **TOL)
    theirs_sel = hf_selection_masks(case, LENGTH)
    assert len(theirs_sel) == cfg.num_hidden_layers
    visible = torch.arange(LENGTH) + 1
    want = visible.clamp(max=cfg.index_topk)
    for layer in range(cfg.num_hidden_layers):
        mine = r.selection_mask("s", layer, LENGTH)
        rows = (mine != theirs_sel[layer]).any(1).nonzero().flatten().tolist()
        assert not rows, f"layer {layer}: the indexers selected different keys for queries {rows}"
        assert mine.sum(1).tolist() == want.tolist()
    if cfg.index_topk < LENGTH:  # sparsity is real: later queries see strictly fewer keys than the prefix
        assert int((want < visible).sum()) == LENGTH - cfg.index_topk


def test_greedy_continuation_matches_for_32_steps(case):
    cfg = case.config
    prompt = token_ids(cfg, PROMPT, SEED)
    out = case.hf.generate(
        prompt[None], max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0,
        output_logits=True, return_dict_in_generate=True,
    )
    theirs_tokens = out.sequences[0, PROMPT:].tolist()
    assert len(theirs_tokens) == NEW and len(out.logits) == NEW
    theirs_logits = torch.stack([step[0].float() for step in out.logits])  # [NEW, V]
    top2 = theirs_logits.topk(2, dim=-1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > LOGIT_MARGIN, "premise: a near-tie in the greedy logits"
    assert_tie_free(case, out.sequences[0])  # covers the prefill and every decode query

    r = case.runner()
    logits = [r.step({"s": prompt})["s"][-1]]
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < NEW:  # decode: one token per step through the paged cache
        logits.append(r.step({"s": torch.tensor([tokens[-1]])})["s"][-1])
        tokens.append(int(logits[-1].argmax()))
    assert len(r.selections) == NEW  # 1 prefill + 31 decode forwards
    if cfg.index_topk < PROMPT:  # every decode query attends to exactly index_topk of its > 40 keys
        for step in r.selections[1:]:
            for layer_sel in step:
                _, sel = layer_sel["s"]
                assert int((sel >= 0).sum()) == cfg.index_topk
    assert tokens == theirs_tokens, f"greedy continuations differ: ours {tokens} vs transformers {theirs_tokens}"
    assert_close(torch.stack(logits), theirs_logits, name="per-step logits, ours vs transformers generate", **TOL)


# ---- documented transformers differences -----------------------------------------------------------
def test_yarn_below_the_original_length_is_a_transformers_difference(tmp_path_factory):
    """Disagreement 1 of the module docstring. With max_position_embeddings == the original length,
    docs/model-and-ops.md 2.1 (and ours) use plain RoPE and the plain softmax scale; transformers still applies YaRN.
    Its logits there equal OURS WITH YaRN IN FORCE (same checkpoint, max_position_embeddings raised, which
    changes nothing else in either model), and differ clearly from ours without it."""
    dense = CASES["dense"]
    original = ModelConfig.from_file(TINY).rope_scaling.original_max_position_embeddings
    short = pair(tmp_path_factory, "yarn-short", max_position_embeddings=original, **dense)
    long = pair(tmp_path_factory, "dense", **dense)
    assert short.config.yarn is None and long.config.yarn is not None
    assert short.hf.model.rotary_emb.rope_type == "yarn"
    assert short.hf.model.layers[0].self_attn.scaling == pytest.approx(long.config.softmax_scale)
    assert short.config.softmax_scale == pytest.approx(short.config.qk_head_dim**-0.5)
    ids = token_ids(short.config, 24, SEED)
    theirs = short.hf_forward(ids)
    ours_plain = short.runner().step({"s": ids})["s"]
    ours_yarn = long.runner().step({"s": ids})["s"]
    assert_close(ours_yarn, theirs, name="transformers (YaRN always) vs ours with YaRN in force", **TOL)
    assert global_diff(ours_plain, theirs) > 1e-4  # a real difference, not noise (noise ~1e-13)


def test_cos_sin_mscale_is_a_transformers_difference():
    """Disagreement 2 of the module docstring: with mscale != mscale_all_dim transformers scales cos/sin by
    mscale(f, mscale) / mscale(f, mscale_all_dim); docs/model-and-ops.md 2.1: no mscale on cos/sin, and ours has none.
    (Every released config has mscale == mscale_all_dim, where the ratio is exactly 1.)"""
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32RotaryEmbedding

    raw = json.loads(TINY.read_text())
    rope = dict(raw.pop("rope_scaling"), mscale=2.0, mscale_all_dim=1.0)
    factor = rope["factor"]
    ours = ModelConfig.from_dict(raw | {"rope_scaling": rope})
    theirs = transformers.DeepseekV32Config(**{
        k: v for k, v in raw.items() if k not in ("architectures", "model_type", "torch_dtype", "rope_theta")
    } | {"num_key_value_heads": raw["num_attention_heads"],
         "rope_parameters": {**{k: v for k, v in rope.items() if k != "type"}, "rope_type": "yarn",
                             "rope_theta": raw["rope_theta"]}})
    rot = DeepseekV32RotaryEmbedding(theirs)
    ratio = (0.1 * 2.0 * math.log(factor) + 1) / (0.1 * 1.0 * math.log(factor) + 1)
    assert rot.attention_scaling == pytest.approx(ratio) and ratio > 1.1
    positions = torch.arange(5)
    cos, _ = RotaryEmbedding(ours)(positions)
    torch.testing.assert_close(cos, torch.cos(positions[:, None].float() * RotaryEmbedding(ours).inv_freq))  # unscaled
    their_cos, _ = rot(torch.zeros(1), positions[None])
    torch.testing.assert_close(their_cos[0, :, : cos.shape[1]], cos * ratio, rtol=1e-5, atol=1e-6)
