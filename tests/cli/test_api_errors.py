"""The error contract of the Python API (README, "Errors"): every error is a DsaError, and its type is the
one the README names for its kind."""
import shutil
from pathlib import Path

import pytest

import dsa.configs
from dsa import LLM
from dsa.errors import CheckpointError, ConfigError, DsaError, InputError, ProfileError, TokenizerError


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad_config.json").write_text("{not json")
    (tmp_path / "bad_profile.yaml").write_text("name: [unclosed\n")
    (tmp_path / "ckpt").mkdir()  # a checkpoint directory without its tokenizer
    shutil.copy(Path(dsa.configs.__file__).parent / "models" / "tiny" / "config.json", tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("kwargs, kind", [
    (dict(dtype="fp64"), InputError),
    (dict(max_seq_len=1), InputError),
    (dict(max_seq_len=10**6), InputError),
    (dict(tp=2), InputError),
    (dict(nosuch=1), InputError),
    (dict(model="nosuch"), InputError),
    (dict(model="{tmp}/missing_dir"), InputError),
    (dict(device="h200"), InputError),  # a profile for other hardware
    (dict(device=""), InputError),
    (dict(device="nosuch"), ProfileError),
    (dict(device="{tmp}/bad_profile.yaml"), ProfileError),
    (dict(model="{tmp}/bad_config.json"), ConfigError),
    (dict(model="{tmp}/ckpt"), TokenizerError),
])
def test_llm_errors_have_the_documented_type(files, kwargs, kind):
    kwargs = {k: v.replace("{tmp}", str(files)) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(DsaError) as info:
        LLM(**kwargs)
    assert isinstance(info.value, kind), (type(info.value), info.value)
    if kind is InputError:
        assert type(info.value) is InputError
    assert issubclass(ProfileError, ConfigError) and issubclass(CheckpointError, ConfigError)
