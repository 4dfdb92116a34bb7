"""The fp8 MoE quantises its GEMM inputs in the 1 x 128 blocks the grouped GEMM reads their scales by
(docs/model-and-ops.md 3 and 4). A token whose first 128 features are tiny and whose next 128 are large
keeps its tiny features only if the block boundary is exactly there (a mutation run showed no other test
has K > 128 in an fp8 MoE)."""
from __future__ import annotations

import json

import torch

from dsa.configs import MODELS_DIR
from dsa.hal import OpSet
from dsa.model.config import ModelConfig
from dsa.model.moe import MoE


def test_moe_fp8_inputs_are_quantised_in_128_blocks():
    raw = json.loads((MODELS_DIR / "tiny" / "config.json").read_text())
    raw["hidden_size"] = 256
    moe = MoE(ModelConfig.from_dict(raw), OpSet.single("torch"), fp8=True, ue8m0=False, dtype=torch.float32)
    x = torch.cat([torch.full((1, 128), 1e-3), torch.full((1, 128), 100.0)], dim=1)
    q, scale = moe._quantise(x)
    assert scale.shape == (1, 2)
    back = (q.float().view(1, 2, 128) * scale[:, :, None]).view(1, 256)  # how the grouped GEMM reads it
    torch.testing.assert_close(back, x, rtol=0.07, atol=0.0)
