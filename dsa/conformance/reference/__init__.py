"""Independent fp64 oracles from the contracts and docs/model-and-ops.md only, never from `dsa/backends/` or `model/`.

ops.py        every HAL op (dsa/hal/*.py contracts) in the plainest dense form: full score
              matrices, boolean masks built from indices, per-expert loops
fp8.py        float8_e4m3fn decoding and round-to-nearest-even by hand
kv_layout.py  the packed fp8 latent-cache token read byte by byte
compare.py    the docs/model-and-ops.md 7 comparison rules (assert_close, assert_topk_equivalent)
model_ref.py  the whole-model reference forward

fp8 values are inputs: they are decoded, never re-quantised, except by `ref_act_quant`, whose output
is fp8 by definition.
"""
