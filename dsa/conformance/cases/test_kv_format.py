"""dsa.hal.kv_format (shared code, no provider) against the oracle's own byte-level reading."""
from __future__ import annotations

import pytest
import torch

from dsa.conformance.inputs import randn, rng
from dsa.conformance.reference.fp8 import DECODE_TABLE, decode
from dsa.conformance.reference.kv_layout import f32_from_bits, little_endian_words, unpack_tokens
from dsa.conformance.tolerances import KV_LATENT_REL, KV_LATENT_SUBNORMAL_ABS, KV_ROPE_REL
from dsa.hal import kv_format

DIMS = [(512, 64, 656), (128, 32, 196), (256, 0, 264)]  # (d_v, rope, packed bytes); 656 = 671B


@pytest.mark.parametrize("d_v,rope,nbytes", DIMS)
def test_packed_bytes(d_v, rope, nbytes):
    assert kv_format.packed_bytes(d_v, rope) == nbytes


def test_packed_bytes_rejects_partial_groups():
    with pytest.raises(ValueError):
        kv_format.packed_bytes(500, 64)


def test_known_token_bytes():
    """Pin the byte layout: fp8 latent, little-endian fp32 scales, bf16 rope."""
    latent = torch.zeros(1, 128 + 2)
    latent[0, 0], latent[0, 1], latent[0, 2] = 448.0, 1.0, -2.0  # amax 448 -> scale exactly 1.0
    latent[0, 128], latent[0, 129] = 1.0, -3.5
    packed = kv_format.pack(latent, 128)[0]
    assert packed.dtype == torch.uint8 and packed.shape == (128 + 4 + 4,)
    assert packed[:4].tolist() == [0x7E, 0x38, 0xC0, 0x00]  # 448, 1.0, -2.0, 0 in e4m3fn
    assert packed[128:132].tolist() == [0x00, 0x00, 0x80, 0x3F]  # fp32 1.0
    assert packed[132:].tolist() == [0x80, 0x3F, 0x60, 0xC0]  # bf16 1.0, -3.5


@pytest.mark.parametrize("d_v,rope,nbytes", DIMS)
def test_unpack_matches_oracle(d_v, rope, nbytes):
    g = rng(d_v + rope)
    latent = randn((3, 5, d_v + rope), g, scale=2.0)
    latent[0, 0, :128] = 0  # all-zero group: scale from the 1e-4 floor
    latent[1, 2, :128] *= 1e-6
    packed = kv_format.pack(latent, d_v)
    assert packed.shape == (3, 5, nbytes)
    ours = unpack_tokens(packed, d_v)
    for dtype in (torch.float32, torch.float64):
        theirs = kv_format.unpack(packed, d_v, dtype)
        assert theirs.dtype == dtype
        assert torch.equal(theirs.double(), ours), "kv_format.unpack disagrees with the byte layout"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_error_bound(dtype):
    g = rng(1)
    d_v, rope = 512, 64
    latent = randn((9, d_v + rope), g, dtype, scale=3.0)
    latent[0, :128] = 0
    latent[1, 128:256] *= 1e-5
    latent[2, ::11] = 1e3  # outliers make the rest of their group fp8 subnormal
    packed = kv_format.pack(latent, d_v)
    back = unpack_tokens(packed, d_v)
    x = latent.double()

    # [9, 4], read from the bytes
    scales = f32_from_bits(little_endian_words(packed[:, d_v : d_v + 4 * (d_v // 128)], 4))
    assert torch.equal(torch.exp2(torch.log2(scales).round()), scales), "scales must be powers of two"
    amax = x[:, :d_v].reshape(9, -1, 128).abs().amax(-1).clamp_min(1e-4)
    assert (amax / scales <= 448).all(), "a scale clips its group"
    assert (amax / scales > 224).all(), "a scale is not the smallest power of two that fits"

    s = scales.repeat_interleave(128, dim=-1)
    err = (back[:, :d_v] - x[:, :d_v]).abs()
    bound = torch.maximum(x[:, :d_v].abs() * KV_LATENT_REL, s * KV_LATENT_SUBNORMAL_ABS)
    assert (err <= bound).all(), f"latent round-trip error {float((err - bound).max()):.3g} above bound"
    rope_err = (back[:, d_v:] - x[:, d_v:]).abs()
    assert (rope_err <= x[:, d_v:].abs() * KV_ROPE_REL).all(), "rope round-trip error above the bf16 bound"


def test_oracle_fp8_decode_table():
    """Self-check of the oracle's hand-written e4m3fn decoder against torch for all 256 codes."""
    codes = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    theirs = codes.view(torch.float8_e4m3fn).double()
    ours = decode(codes)
    nan = torch.isnan(theirs)
    assert torch.equal(nan, torch.isnan(ours)) and nan.sum() == 2
    assert torch.equal(theirs[~nan], ours[~nan]) and DECODE_TABLE[0x7E] == 448
