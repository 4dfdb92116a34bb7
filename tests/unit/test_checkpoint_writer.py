"""`write_checkpoint` / `dsa make-checkpoint`: exactly the HF layout (read back from the raw safetensors
headers), fp8 block scales incl. partial edge blocks, refusal to overwrite, atomic writes, CLI exit codes."""
import json
import math
import re
import struct

import pytest
import torch
from safetensors import safe_open

from dsa.cli import main
from dsa.configs import CONFIG_DIR
from dsa.errors import DsaError, OutputDirError
from dsa.io.checkpoint_writer import INDEX_FILE, QUANTIZATION_CONFIG, write_checkpoint
from dsa.model.config import ModelConfig
from dsa.model.weights import hf_tensor_specs, random_checkpoint

TINY = CONFIG_DIR / "models" / "tiny" / "config.json"
SAFETENSORS_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F32": torch.float32, "BF16": torch.bfloat16}
SHARD = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")


@pytest.fixture(scope="module")
def config():
    return ModelConfig.from_file(TINY)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{fp8: checkpoint dir} for the tiny config, seed 7, 3 shards."""
    base = tmp_path_factory.mktemp("ckpt")
    return {fp8: write_checkpoint("tiny", base / ("fp8" if fp8 else "bf16"), fp8=fp8, seed=7) for fp8 in (True, False)}


def read_header(path):
    """The JSON header of a safetensors file, parsed by hand (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def load_all(directory):
    out = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "bf16"])
def test_shards_hold_exactly_the_hf_layout(written, config, fp8):
    directory = written[fp8]
    specs = hf_tensor_specs(config, fp8)
    shards = sorted(p.name for p in directory.glob("*.safetensors"))
    assert len(shards) == 3 and all(SHARD.match(s) and SHARD.match(s).group(2) == "00003" for s in shards)
    seen: dict[str, str] = {}
    data_bytes = 0
    for shard in shards:
        header = read_header(directory / shard)
        assert header, f"{shard} is empty"
        for name, info in header.items():
            assert name not in seen, f"{name} in both {seen[name]} and {shard}"
            seen[name] = shard
            shape, dtype = specs[name]
            assert tuple(info["shape"]) == shape, name
            assert SAFETENSORS_DTYPES[info["dtype"]] == dtype, name
            begin, end = info["data_offsets"]
            data_bytes += end - begin
    assert set(seen) == set(specs)

    index = json.loads((directory / INDEX_FILE).read_text())
    assert index["weight_map"] == seen  # every tensor once, pointing at the shard that holds it
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == data_bytes
    for layer in range(config.num_hidden_layers):  # split by layer: a layer never spans two shards
        assert len({s for n, s in seen.items() if n.startswith(f"model.layers.{layer}.")}) == 1


@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "bf16"])
def test_config_and_side_files(written, fp8):
    directory = written[fp8]
    source = json.loads(TINY.read_text())
    raw = json.loads((directory / "config.json").read_text())
    assert raw.pop("quantization_config", None) == (QUANTIZATION_CONFIG if fp8 else None)
    assert raw == source
    assert ModelConfig.from_file(directory).fp8_weights == fp8
    gen = json.loads((directory / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["temperature"]) == (0, 1, 0.6)
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert tok_config["bos_token"]["content"] == "<｜begin▁of▁sentence｜>"
    assert tok_config["eos_token"]["content"] == "<｜end▁of▁sentence｜>"
    assert "<｜Assistant｜>" in tok_config["chat_template"]
    assert (directory / "tokenizer.json").is_file()


def test_quantization_config_is_dropped_when_not_fp8(tmp_path):
    source = json.loads(TINY.read_text())
    source["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (tmp_path / "src.json").write_text(json.dumps(source))
    out = write_checkpoint(tmp_path / "src.json", tmp_path / "out", fp8=False, num_shards=1)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert [p.name for p in out.glob("*.safetensors")] == ["model-00001-of-00001.safetensors"]


def test_weights_are_random_checkpoint_of_the_seed(written, config):
    for fp8, directory in written.items():
        expected = random_checkpoint(config, 7, fp8=fp8)
        got = load_all(directory)
        assert set(got) == set(expected)
        for name, t in expected.items():
            assert torch.equal(got[name].view(torch.uint8), t.contiguous().view(torch.uint8)), name


def expand(scale, shape, block=128):
    rows = torch.arange(shape[0]) // block
    cols = torch.arange(shape[1]) // block
    return scale[rows][:, cols]


def test_fp8_dequantised_weights_approximate_bf16(written, config):
    fp8, bf16 = load_all(written[True]), load_all(written[False])
    partial = 0
    for name, w in fp8.items():
        if name.endswith("_scale_inv"):
            continue
        if w.dtype != torch.float8_e4m3fn:
            assert torch.equal(w, bf16[name]), name  # non-quantised tensors are identical
            continue
        scale = fp8[name + "_scale_inv"]
        assert scale.dtype == torch.float32
        assert tuple(scale.shape) == (math.ceil(w.shape[0] / 128), math.ceil(w.shape[1] / 128)), name
        s = expand(scale, w.shape)
        deq = w.float() * s
        ref = bf16[name].float()
        # e4m3: 3 mantissa bits (half-ulp 2^-4 relative), subnormal step 2^-9 of the block scale; bf16 rounding of
        # the reference adds 2^-8 relative.
        bound = ref.abs() * (2**-4 + 2**-8) * 1.01 + s * 2**-9 + 1e-12
        assert ((deq - ref).abs() <= bound).all(), name
        # every block's largest value maps to 448 exactly: the scale is the block's own amax / 448, partial blocks too
        for bi in range(scale.shape[0]):
            for bj in range(scale.shape[1]):
                block = w[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128].float()
                assert block.abs().max().item() == 448.0, (name, bi, bj)
        if w.shape[0] % 128 or w.shape[1] % 128:
            partial += 1
    assert partial > 0  # tiny has 64/160/... dims: partial edge blocks are exercised


def test_edge_block_scales_example(written, config):
    """kv_a_proj_with_mqa is [kv_lora_rank + rope = 160, hidden 128]: two row blocks, the second 32 rows."""
    w = load_all(written[True])
    name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
    assert tuple(w[name].shape) == (160, 128)
    assert tuple(w[name + "_scale_inv"].shape) == (2, 1)


def test_different_seeds_differ(tmp_path, config):
    a = load_all(write_checkpoint(TINY, tmp_path / "a", fp8=False, seed=1, num_shards=1))
    b = load_all(write_checkpoint(TINY, tmp_path / "b", fp8=False, seed=2, num_shards=1))
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])


def test_accepts_a_model_config_object(tmp_path, config):
    out = write_checkpoint(config, tmp_path / "c", fp8=False, num_shards=2)
    assert ModelConfig.from_file(out) == config


# ---- refusing to overwrite, atomicity ---------------------------------------------------------------


def test_refuses_a_non_empty_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty.*--overwrite"):
        write_checkpoint("tiny", out, fp8=False)
    with pytest.raises(OutputDirError, match="holds keep.txt, which is not a checkpoint file"):  # never deleted
        write_checkpoint("tiny", out, fp8=False, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        write_checkpoint("tiny", tmp_path / "file", fp8=False)


def test_empty_directory_is_used_and_overwrite_replaces_a_checkpoint(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_checkpoint("tiny", out, fp8=False, num_shards=1)
    write_checkpoint("tiny", out, fp8=True, num_shards=2, overwrite=True)
    assert ModelConfig.from_file(out).fp8_weights
    assert len(list(out.glob("*.safetensors"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary siblings left


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    import dsa.io.tokenizer_writer as tw

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash after the shards")

    monkeypatch.setattr(tw, "write_tokenizer_files", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        write_checkpoint("tiny", tmp_path / "out", fp8=True)
    assert list(tmp_path.iterdir()) == []


def test_disk_error_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch as st

    out = write_checkpoint("tiny", tmp_path / "out", fp8=False, seed=3, num_shards=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save, calls = st.save_file, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(st, "save_file", fail_second)
    with pytest.raises(OutputDirError, match="No space left.*nothing was written"):
        write_checkpoint("tiny", out, fp8=True, num_shards=3, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(DsaError, match=r"--shards must be in \[1, 5\]"):
        write_checkpoint("tiny", tmp_path / "x", fp8=False, num_shards=6)
    with pytest.raises(DsaError, match="not found.*built-in model name"):
        write_checkpoint("no-such-model", tmp_path / "x", fp8=False)
    assert list(tmp_path.iterdir()) == []


# ---- CLI ----------------------------------------------------------------------------------------------


def test_cli_make_checkpoint(tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["make-checkpoint", "--config", "tiny", "--out", str(out), "--fp8", "--seed", "4",
                 "--shards", "2"]) == 0
    stdout = capsys.readouterr().out
    assert str(out) in stdout and "fp8" in stdout
    assert ModelConfig.from_file(out).fp8_weights and len(list(out.glob("*.safetensors"))) == 2

    for argv, words in (
        (["--config", "tiny", "--out", str(out)], ["not empty", "--overwrite"]),
        (["--config", "tiny", "--out", str(tmp_path / "n"), "--shards", "0"], ["--shards"]),
        (["--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "n")], ["not found"]),
        (["--config", "tiny"], ["--out"]),
    ):
        assert main(["make-checkpoint", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
        assert all(w in err for w in words), (words, err)
    assert main(["make-checkpoint", "--config", "tiny", "--out", str(out), "--overwrite"]) == 0
    assert not ModelConfig.from_file(out).fp8_weights
