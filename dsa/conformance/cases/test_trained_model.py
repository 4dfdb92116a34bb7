"""The shipped trained model (dsa/configs/models/mini, `dsa train`) through the provider's ops.

With random weights (test_oracle.py) the logits are nearly flat, so tokens flip between dtypes and only fp32
logits can be compared. The trained model's next-token choice has a clear margin, so here greedy tokens are
the check, in the dtypes users run:

- fp32 compute, bf16 latent cache: logits against the independent fp64 reference (run with the model's own
  selection, which must be a correct top-k of the reference's index scores) and the greedy argmax at every
  position of a prompt longer than top-k plus 32 generated tokens, teacher-forced through the reference;
- bf16 compute (the CPU profile's), fp8 latent cache: greedy tokens against the fp32 run, within the
  agreement stated in AGREEMENT (measured on the shipped checkpoint; docs/model-and-ops.md 7).
"""
from __future__ import annotations

import json

import pytest
import torch

from dsa.configs import MODELS_DIR
from dsa.conformance.model_helpers import PAGE, Runner
from dsa.conformance.reference.compare import assert_close, assert_topk_equivalent
from dsa.conformance.reference.model_ref import reference_logits
from dsa.model.config import ModelConfig

MINI = MODELS_DIR / "mini"
NEW_TOKENS = 32
TOL = dict(atol=1e-3, rtol=1e-3, cos_eps=1e-8)  # fp32 model vs fp64 reference; trained logits reach ~20
# Greedy tokens (of NEW_TOKENS, after the prompt) identical to the fp32 / bf16-cache run before the first
# difference, at least. Measured on the shipped checkpoint (torch provider, 2 CPU threads): 32 of 32 for all three;
# the floor leaves room for one near-tie late in the generation under another machine's bf16 / fp8 kernels.
AGREEMENT = {"bf16 compute": 24, "fp8 kv cache": 24, "bf16 compute + fp8 kv cache": 24}
PROMPT = '''import os
import sys


def read_lines(path, encoding="utf-8"):
    """Return the lines of the file at path, without their line endings."""
    with open(path, encoding=encoding) as f:
        return [line.rstrip("\\n") for line in f]


class Counter:
    """Count how often each key is seen."""

    def __init__(self):
        self.counts = {}

    def add(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1

    def most_common(self, n=None):
        items = sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)
        return items if n is None else items[:n]


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    counter = Counter()
    for name in argv:
        for line in read_lines(name):
'''


@pytest.fixture(scope="module")
def mini():
    if not (MINI / "model.safetensors.index.json").is_file():
        pytest.skip(f"no trained checkpoint in {MINI} (rebuild it with `dsa train --out {MINI}`)")
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    weights = {}
    for shard in sorted(MINI.glob("*.safetensors")):
        weights.update({k: v.float() for k, v in load_file(shard).items()})
    raw = json.loads((MINI / "config.json").read_text())
    tok = Tokenizer.from_file(str(MINI / "tokenizer.json"))
    ids = torch.tensor([raw["bos_token_id"]] + tok.encode(PROMPT, add_special_tokens=False).ids)
    assert ids.numel() > 2 * raw["index_topk"], "the prompt must reach beyond top-k"
    return ModelConfig.from_file(MINI / "config.json"), raw, weights, ids


def _as(cfg, w: dict, dtype: torch.dtype) -> dict:
    """The weights as a `dtype` model holds them: the compute-dtype tensors cast, the fp32 ones (norms, router
    bias) kept."""
    from dsa.model.weights import hf_tensor_specs

    if dtype == torch.float32:
        return w
    specs = hf_tensor_specs(cfg, fp8=False)
    return {k: v.to(dtype) if specs[k][1] == torch.bfloat16 else v for k, v in w.items()}


def _greedy(cfg, w, ids, **kw) -> list[int]:
    """NEW_TOKENS greedy tokens through prefill + one-token decodes."""
    blocks = -(-(ids.numel() + NEW_TOKENS) // PAGE) + 1
    r = Runner(cfg, _as(cfg, w, kw.get("dtype", torch.float32)), num_blocks=blocks, **kw)
    logits = r.step({"s": ids})["s"].float()
    out = [int(logits[-1].argmax())]
    while len(out) < NEW_TOKENS:
        out.append(int(r.step({"s": torch.tensor([out[-1]])})["s"][-1].float().argmax()))
    return out


@pytest.fixture(scope="module")
def fp32_run(mini):
    cfg, _, w, ids = mini
    return _greedy(cfg, w, ids)


def test_prompt_logits_equal_the_fp64_reference(mini):
    cfg, raw, w, ids = mini
    T = ids.numel()
    r = Runner(cfg, w, num_blocks=-(-T // PAGE))
    got = r.step({"s": ids})["s"]
    masks = [r.selection_mask("s", layer, T) for layer in range(cfg.num_hidden_layers)]
    ref, aux = reference_logits(raw, w, ids, sparse=True, selections=masks, return_aux=True)
    k_valid = torch.clamp(torch.arange(T) + 1, max=cfg.index_topk)
    for layer in range(cfg.num_hidden_layers):
        assert_topk_equivalent(r.selections[0][layer]["s"][1], aux["scores"][layer], k_valid, tie_tol=1e-4)
    assert (masks[0].sum(1) < torch.arange(T) + 1).any(), "the prompt must be long enough to be sparse"
    assert_close(got, ref, name="trained model vs fp64 reference (the model's selection)", **TOL)
    assert torch.equal(got.argmax(-1), ref.argmax(-1)), "greedy argmax differs from the fp64 reference"


def test_greedy_generation_equals_the_fp64_reference(mini, fp32_run):
    """The 32 generated tokens fed back through the reference in one pass: at every generated position the
    reference's argmax is the token the model chose next (the reference's own greedy sequence)."""
    cfg, raw, w, ids = mini
    tokens = fp32_run
    full = torch.cat([ids, torch.tensor(tokens)])
    ref = reference_logits(raw, w, full, sparse=True)
    T = ids.numel()
    want = ref[T - 1:-1].argmax(-1).tolist()
    first = next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), None)
    assert first is None, f"greedy tokens differ from the fp64 reference's at generated token {first}"


@pytest.mark.parametrize("name, kw", [
    ("bf16 compute", dict(dtype=torch.bfloat16)),
    ("fp8 kv cache", dict(kv_cache_dtype="fp8")),
    ("bf16 compute + fp8 kv cache", dict(dtype=torch.bfloat16, kv_cache_dtype="fp8")),
])
def test_reduced_precision_greedy_agrees(mini, fp32_run, name, kw):
    cfg, _, w, ids = mini
    want = fp32_run
    got = _greedy(cfg, w, ids, **kw)
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), NEW_TOKENS)
    assert same >= AGREEMENT[name], f"{name}: {same} of {NEW_TOKENS} greedy tokens agree with fp32 before the first " \
                                    f"difference (stated: at least {AGREEMENT[name]})"
