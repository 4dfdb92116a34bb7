"""dsa.io.checkpoint_loader: HF checkpoints are checked from their headers before any data is read, every bad input
is one clear error naming the tensor or file, and a loaded checkpoint computes exactly what
`load_hf_state_dict` of the same tensors computes (fp8 kept, fp8 dequantised, bf16)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest
import torch

from dsa.configs import CONFIG_DIR
from dsa.errors import CheckpointError, ConfigError, DsaError
from dsa.hal import OpSet
from dsa.io.checkpoint_loader import FULL, load_model, open_checkpoint, read_header
from dsa.model.cache import Batch, PagedCache
from dsa.model.config import ModelConfig
from dsa.model.layers import dequantize_blocks
from dsa.model.transformer import DeepseekV32
from tests.unit.ckpt_fixtures import (
    all_tensors,
    copy_checkpoint,
    edit_config,
    edit_shard,
    edit_tensor,
    make_checkpoint,
    shard_of,
    weight_map,
    write_weight_map,
)

OPS = OpSet.single("torch")
IDS = [0, 17, 99, 4, 250, 31, 8, 77, 140, 3, 66, 200, 12, 45, 180, 9, 23, 101, 7, 255]
SCALED = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"  # [160, 128]: a partial edge block
EXPERT = "model.layers.2.mlp.experts.5.down_proj.weight"


def tiny_config() -> ModelConfig:
    return ModelConfig.from_file(CONFIG_DIR / "models" / "tiny")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"bf16": make_checkpoint(root / "bf16", seed=3), "fp8": make_checkpoint(root / "fp8", fp8=True, seed=3)}


@pytest.fixture
def bad(ckpts, tmp_path):
    """A fresh copy of a checkpoint to damage."""
    return lambda kind="bf16": copy_checkpoint(ckpts[kind], tmp_path / kind)


def full_logits(model, ids=IDS, page=16) -> torch.Tensor:
    blocks = list(range(-(-len(ids) // page)))
    cache = PagedCache(model.config, num_blocks=len(blocks), page_size=page, kv_cache_dtype=model.kv_cache_dtype,
                       dtype=model.dtype, indexer_fp8=model.indexer_fp8)
    batch = Batch.build(new_lens=[len(ids)], context_lens=[0], block_tables=[blocks], page_size=page)
    with torch.inference_mode():
        return model(torch.tensor(ids), batch, cache)


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k].view(torch.uint8), sb[k].view(torch.uint8)), k


def reference(config, tensors, *, fp8_weights, dtype=torch.float32):
    """load_hf_state_dict of the tensors, each cast to the dtype the model holds it in."""
    model = DeepseekV32(config, OPS, dtype=dtype, fp8_weights=fp8_weights)
    layout = model.hf_layout()
    model.load_hf_state_dict({k: v.to(layout[k][1]) if k in layout else v for k, v in tensors.items()})
    return model.eval()


# ---- a loaded checkpoint == load_hf_state_dict of the same tensors -----------------------------

@pytest.mark.parametrize("kind, weights", [("bf16", "bf16"), ("fp8", "fp8"), ("fp8", "bf16")])
def test_loaded_logits_equal_load_hf_state_dict(ckpts, kind, weights):
    d = ckpts[kind]
    model = load_model(d, OPS, dtype=torch.float32, weights=weights)
    tensors = all_tensors(d)
    keep = weights == "fp8"
    if kind == "fp8" and not keep:  # the reference dequantises the same way: fp8 value x its block's scale
        tensors = {k: dequantize_blocks(v, tensors[k + "_scale_inv"]) if v.dtype == torch.float8_e4m3fn else v
                   for k, v in tensors.items() if not k.endswith("_scale_inv")}
    ref = reference(model.config, tensors, fp8_weights=keep)
    assert not any(p.is_meta for p in model.parameters())
    assert model.model.layers[2].mlp.experts.down_proj.dtype == (torch.float8_e4m3fn if keep else torch.float32)
    torch.testing.assert_close(full_logits(model), full_logits(ref), rtol=0, atol=0)


def test_fp8_dequantised_matches_bf16_weights_within_fp8_error(tmp_path):
    """The fp8 and bf16 checkpoints of one seed hold the same weights up to 128x128 block quantisation
    (e4m3: 3 mantissa bits, ~3 % rms per weight). A dense config whose indexer keeps every token, so no
    routing or top-k decision can flip and amplify the difference."""
    config = dataclasses.replace(tiny_config(), first_k_dense_replace=3, index_topk=64)
    fp8 = load_model(make_checkpoint(tmp_path / "f", fp8=True, seed=3, config=config), OPS, dtype=torch.float32)
    bf16 = load_model(make_checkpoint(tmp_path / "b", seed=3, config=config), OPS, dtype=torch.float32)
    a, b = fp8.state_dict(), bf16.state_dict()
    for name, w in b.items():
        if w.dim() == 2 and name not in ("model.embed_tokens.weight", "lm_head.weight") and "weights_proj" not in name:
            assert 0 < ((a[name] - w).norm() / w.norm()) < 0.05, name  # every linear: dequantised, within fp8 error
    err = (full_logits(fp8) - full_logits(bf16)).norm() / full_logits(bf16).norm()
    assert 0 < err < 0.12, err  # ~3 % per linear, ~20 linears in series through the residual


def test_dequantised_edge_blocks_and_experts(ckpts):
    model = load_model(ckpts["fp8"], OPS, dtype=torch.float32, weights="bf16")
    t = all_tensors(ckpts["fp8"])
    w, s = t[SCALED], t[SCALED + "_scale_inv"]
    assert s.shape == (2, 1)  # rows 128..159 form a partial block
    got = model.model.layers[0].self_attn.kv_a_proj_with_mqa.weight
    torch.testing.assert_close(got[128:], w[128:].float() * s[1, 0], rtol=0, atol=0)
    torch.testing.assert_close(got[:128], w[:128].float() * s[0, 0], rtol=0, atol=0)
    expert = model.model.layers[2].mlp.experts.down_proj[5]
    torch.testing.assert_close(expert, dequantize_blocks(t[EXPERT], t[EXPERT + "_scale_inv"]), rtol=0, atol=0)


def test_slicer_is_asked_for_every_tensor_and_explicit_full_slices_load_the_same(ckpts):
    asked = []

    def whole(name, shape):
        asked.append(name)
        return tuple(slice(0, n) for n in shape)

    for weights in ("fp8", "bf16"):
        asked.clear()
        model = load_model(ckpts["fp8"], OPS, dtype=torch.float32, weights=weights, slicer=whole)
        plain = load_model(ckpts["fp8"], OPS, dtype=torch.float32, weights=weights, slicer=FULL)
        weights_only = {n for n in weight_map(ckpts["fp8"]) if weights == "fp8" or not n.endswith("_scale_inv")}
        assert weights_only <= set(asked)
        assert_same_weights(model, plain)


def test_slice_that_does_not_fit_the_model_is_reported(ckpts):
    def half_rows(name, shape):
        return (slice(0, shape[0] // 2),) if name == "lm_head.weight" else None

    with pytest.raises(ConfigError, match=r"lm_head.weight.*\[130, 128\].*needs \[260, 128\]"):
        load_model(ckpts["bf16"], OPS, slicer=half_rows)


def test_single_file_checkpoint_without_index(ckpts, tmp_path):
    d = copy_checkpoint(ckpts["bf16"], tmp_path / "single")
    tensors = all_tensors(d)
    for shard in set(weight_map(d).values()):
        (d / shard).unlink()
    (d / "model.safetensors.index.json").unlink()
    from safetensors.torch import save_file
    save_file(tensors, str(d / "model.safetensors"))
    ckpt = open_checkpoint(d)
    assert ckpt.shards == ["model.safetensors"]
    assert_same_weights(load_model(ckpt, OPS), load_model(ckpts["bf16"], OPS))


def test_mtp_layer_is_skipped_logged_once_and_its_shard_not_opened(bad, caplog):
    d = bad()
    edit_config(d, num_nextn_predict_layers=1)  # as in the 671B release: layer num_hidden_layers is MTP
    wm = weight_map(d)
    mtp = {"model.layers.3.eh_proj.weight": torch.zeros(128, 256, dtype=torch.bfloat16),
           "model.layers.3.enorm.weight": torch.ones(128)}
    edit_shard(d, shard_of(d, "model.norm.weight"), lambda t: t | {"model.layers.3.hnorm.weight": torch.ones(128)})
    (d / "mtp.safetensors").write_bytes(b"garbage: never opened")  # a shard holding only MTP tensors
    write_weight_map(d, weight_map(d) | {name: "mtp.safetensors" for name in mtp})
    assert len(weight_map(d)) == len(wm) + 3
    with caplog.at_level(logging.INFO, logger="dsa.loader"):
        ckpt = open_checkpoint(d)
        load_model(ckpt, OPS)
    assert sorted(ckpt.skipped) == sorted([*mtp, "model.layers.3.hnorm.weight"])
    assert "mtp.safetensors" not in ckpt.shards
    notes = [r.getMessage() for r in caplog.records if "multi-token-prediction" in r.getMessage()]
    assert len(notes) == 1 and "3 tensors" in notes[0] and "layer 3" in notes[0]


@pytest.mark.parametrize("nextn", [0, 1, 2])
def test_mtp_layers_are_the_same_in_the_loader_and_load_hf_state_dict(bad, nextn):
    """ModelConfig.is_mtp_layer is the one rule: layers num_hidden_layers .. + num_nextn_predict_layers - 1.
    Both load paths skip exactly those; with num_nextn_predict_layers 0 there is no MTP layer, so a tensor of
    layer num_hidden_layers is unexpected in both (a layer past the MTP layers too)."""
    config = dataclasses.replace(tiny_config(), num_nextn_predict_layers=nextn)
    n = config.num_hidden_layers
    assert [i for i in range(n + 3) if config.is_mtp_layer(i)] == list(range(n, n + nextn))
    extra = {f"model.layers.{i}.enorm.weight": torch.ones(128) for i in (n, n + 1)}
    d = bad()
    edit_config(d, num_nextn_predict_layers=nextn)
    edit_tensor(d, "model.norm.weight", lambda t: t | extra)
    tensors = all_tensors(d)
    mtp = sorted(f"model.layers.{i}.enorm.weight" for i in range(n, n + min(nextn, 2)))
    ckpt = open_checkpoint(d)
    assert ckpt.config.num_nextn_predict_layers == nextn and ckpt.skipped == mtp
    unexpected = sorted(set(extra) - set(mtp))
    if unexpected:
        with pytest.raises(CheckpointError, match=f"unexpected tensor {unexpected[0]}"):
            load_model(ckpt, OPS)
        with pytest.raises(ConfigError, match=f"unexpected tensor {unexpected[0]}"):
            reference(config, tensors, fp8_weights=False)
    else:
        assert_same_weights(load_model(ckpt, OPS), reference(config, tensors, fp8_weights=False, dtype=torch.bfloat16))


def test_errors_are_raised_from_headers_before_any_data_is_read(bad, monkeypatch):
    import safetensors

    def no_reads(*a, **k):
        raise AssertionError("tensor data was read before the checkpoint was validated")

    monkeypatch.setattr(safetensors, "safe_open", no_reads)
    d = bad()
    edit_tensor(d, "model.norm.weight", lambda t: t | {"model.norm.weight": torch.ones(7)})
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        load_model(d, OPS)


# ---- bad inputs: one clear error each, naming the tensor or file ------------------------------

def _missing_dir(d):
    return d.parent / "nowhere", ["nowhere", "not found"]


def _no_config(d):
    (d / "config.json").unlink()
    return d, ["config.json", "not found"]


def _other_model_type(d):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"model_type": "llama"}))
    return d, ["llama", "deepseek_v32"]


def _missing_shard(d):
    shard = shard_of(d, "lm_head.weight")
    (d / shard).unlink()
    return d, [shard, "does not exist", "lm_head.weight"]


def _truncated_shard(d):
    shard = shard_of(d, EXPERT)
    size = (d / shard).stat().st_size
    os.truncate(d / shard, size - 100)
    return d, [shard, "truncated", f"{size - 100} bytes"]


def _corrupt_header(d):
    shard = shard_of(d, EXPERT)
    data = bytearray((d / shard).read_bytes())
    data[8:12] = b"}{x!"
    (d / shard).write_bytes(bytes(data))
    return d, [shard, "corrupt"]


def _huge_header_length(d):
    shard = shard_of(d, "model.embed_tokens.weight")
    data = bytearray((d / shard).read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    (d / shard).write_bytes(bytes(data))
    return d, [shard, "corrupt"]


def _tensor_missing(d):
    edit_tensor(d, EXPERT, lambda t: {k: v for k, v in t.items() if k != EXPERT})
    return d, ["missing tensor", EXPERT, "[128, 64]"]


def _index_points_at_wrong_shard(d):
    wm = weight_map(d)
    other = next(s for s in sorted(set(wm.values())) if s != wm["model.norm.weight"])
    write_weight_map(d, wm | {"model.norm.weight": other})
    return d, ["model.norm.weight", other, "does not hold it"]


def _unexpected_tensor(d):
    name = "model.layers.1.self_attn.rotary.inv_freq"
    shard = edit_tensor(d, "model.norm.weight", lambda t: t | {name: torch.ones(16)})
    return d, ["unexpected tensor", name, shard]


def _wrong_shape(d):
    name = "model.layers.1.self_attn.q_b_proj.weight"
    shard = edit_tensor(d, name, lambda t: t | {name: torch.zeros(250, 64, dtype=torch.bfloat16)})
    return d, [name, shard, "[250, 64]", "expected [256, 64]"]


def _impossible_dtype(d):
    name = "model.layers.0.input_layernorm.weight"
    shard = edit_tensor(d, name, lambda t: t | {name: torch.ones(128, dtype=torch.int32)})
    return d, [name, shard, "I32", "F32 or BF16 or F16"]


def _fp8_without_scale(d):
    scale = SCALED + "_scale_inv"
    shard = edit_tensor(d, scale, lambda t: {k: v for k, v in t.items() if k != scale})
    return d, [SCALED, scale, shard, "[2, 1]"]


def _fp8_weight_in_bf16_checkpoint(d):
    name = "model.layers.0.mlp.up_proj.weight"
    edit_tensor(d, name, lambda t: t | {name: t[name].to(torch.float8_e4m3fn)})
    return d, [name, "F8_E4M3", "no fp8 quantization_config"]


BAD_INPUTS = {
    "directory missing": ("bf16", _missing_dir),
    "config.json missing": ("bf16", _no_config),
    "another model_type": ("bf16", _other_model_type),
    "index names a missing shard": ("bf16", _missing_shard),
    "truncated shard": ("bf16", _truncated_shard),
    "corrupt header": ("bf16", _corrupt_header),
    "header length beyond the file": ("bf16", _huge_header_length),
    "tensor missing": ("bf16", _tensor_missing),
    "index entry the shard lacks": ("bf16", _index_points_at_wrong_shard),
    "unexpected tensor": ("bf16", _unexpected_tensor),
    "wrong shape": ("bf16", _wrong_shape),
    "impossible dtype": ("bf16", _impossible_dtype),
    "fp8 weight without its scale": ("fp8", _fp8_without_scale),
    "fp8 weight, bf16 config": ("bf16", _fp8_weight_in_bf16_checkpoint),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_checkpoint_is_one_clear_error(bad, case):
    kind, damage = BAD_INPUTS[case]
    d, words = damage(bad(kind))
    with pytest.raises(DsaError) as err:
        load_model(d, OPS)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("case", ["index names a missing shard", "truncated shard", "tensor missing",
                                  "unexpected tensor", "wrong shape", "fp8 weight without its scale",
                                  "another model_type"])
def test_bad_checkpoint_through_the_cli(bad, capsys, case):
    from dsa.cli import main

    kind, damage = BAD_INPUTS[case]
    d, words = damage(bad(kind))
    code = main(["run", "--device", "cpu", "--model", str(d), "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_cli_missing_directory_and_config(bad, capsys):
    from dsa.cli import main

    d = bad()
    for model, words in [(d.parent / "nowhere", ["nowhere", "not found"]), (d, ["config.json", "not found"])]:
        if model == d:
            (d / "config.json").unlink()
        code = main(["run", "--device", "cpu", "--model", str(model)])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err


def test_read_header_rejects_inconsistent_offsets(tmp_path):
    body = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    f = tmp_path / "bad.safetensors"
    f.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"bad.safetensors.*tensor x.*16 bytes.*span 8"):
        read_header(f)


def test_progress_line_on_a_terminal_only(ckpts, monkeypatch):
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, progress, shown in [(Tty(), True, True), (Tty(), None, False), (io.StringIO(), True, False)]:
        monkeypatch.setattr(sys, "stderr", stream)
        load_model(ckpts["bf16"], OPS, progress=progress)  # None: only for loads over 256 MiB
        text = stream.getvalue()
        assert ("loading shard 3/3 model-00003-of-00003.safetensors" in text and "100%" in text) == shown, text
        assert text.endswith("\n") == shown


def test_pickled_weights_are_refused(ckpts, tmp_path):
    from dsa.io.model_source import resolve_model

    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((ckpts["bf16"] / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(DsaError, match="pytorch_model.bin.*only safetensors"):
        resolve_model(str(d))
