"""`dsa make-checkpoint --seed / --shards`: seeds are integers in [0, 2**63) (as `dsa run --seed` and
EngineArgs.weights_seed), shards integers in [1, layers + 2]; anything else is one `error:` line, exit 2, and
nothing is written."""
import pytest

from dsa.cli import main
from dsa.errors import DsaError, InputError
from dsa.io.checkpoint_writer import write_checkpoint
from dsa.model.config import ModelConfig


@pytest.mark.parametrize("flags, words", [
    (["--seed", "-1"], ["--seed", "[0, 2**63)", "-1"]),
    (["--seed", str(2**63)], ["--seed", "[0, 2**63)"]),
    (["--seed", "1.5"], ["--seed", "invalid int"]),
    (["--seed", "x"], ["--seed"]),
    (["--shards", "0"], ["--shards must be in [1, 5]"]),
    (["--shards", "-2"], ["--shards"]),
    (["--shards", "1.5"], ["--shards", "invalid int"]),
    (["--shards", "two"], ["--shards"]),
])
def test_bad_values_are_one_error_line(tmp_path, capsys, flags, words):
    out = tmp_path / "ck"
    assert main(["make-checkpoint", "--config", "tiny", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), (words, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": -1}, r"\[0, 2\*\*63\)"), ({"seed": 2**63}, r"\[0, 2\*\*63\)"), ({"seed": True}, "--seed"),
    ({"seed": 1.0}, "--seed"), ({"seed": "3"}, "--seed"), ({"num_shards": 2.0}, "--shards must be an integer"),
    ({"num_shards": True}, "--shards must be an integer"), ({"num_shards": 0}, r"--shards must be in \[1, 5\]"),
])
def test_the_api_refuses_them_too(tmp_path, kwargs, match):
    with pytest.raises(DsaError, match=match) as info:
        write_checkpoint("tiny", tmp_path / "ck", fp8=False, **kwargs)
    assert isinstance(info.value, InputError) or "num_shards" in kwargs
    assert list(tmp_path.iterdir()) == []


def test_the_bounds_themselves_are_accepted(tmp_path):
    for seed in (0, 2**63 - 1):
        out = write_checkpoint("tiny", tmp_path / str(seed), fp8=False, seed=seed, num_shards=5)
        assert ModelConfig.from_file(out).num_hidden_layers == 3
