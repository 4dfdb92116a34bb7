"""dsa.train's corpus, tokenizer training and token stream: on a small synthetic corpus, plus one check of the
real stdlib corpus and its pin."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsa.errors import InputError
from dsa.io.tokenizer import load_tokenizer
from dsa.train import corpus, data
from dsa.train.corpus import CorpusPin, check_pin, corpus_files, corpus_pin, read_text, split
from dsa.train.data import Batches, cached_stream, encode_corpus, eval_windows
from dsa.train.tokenizer import BOS_TOKEN, EOS_TOKEN, save_tokenizer, train_tokenizer

CODE = 'def f(x):\n\tif x:\n\t\treturn "héllo ✓ 日本語 🐍"  \r\n    # ünïcode\n\n\n' + "class A:\n    pass\n"
KEPT = ["a.py", "pkg/__init__.py", "pkg/mod.py", "pkg/testing_tools.py", "tkinter/dialog.py", "z.py"]
DROPPED = ["test/test_a.py", "pkg/tests/t.py", "idlelib/idle_test/t.py", "lib2to3/tests/data/bad.py",
           "site-packages/pip/x.py", "pkg/__pycache__/m.py", "_sysconfigdata__linux.py",
           "config-3.11-x86_64-linux-gnu/python-config.py", "big.py", "latin1.py", "notes.txt"]


def _write(root: Path, rel: str, content: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def stdlib(tmp_path) -> Path:
    """A small fake stdlib: kept files with code, and one of each kind of excluded file."""
    root = tmp_path / "lib"
    for i, rel in enumerate(KEPT + DROPPED):
        _write(root, rel, f"# {rel}\nimport os\n\ndef f{i}(a, b):\n    return a + b * {i}\n{CODE}".encode())
    _write(root, "big.py", b"x = 1\n" * (corpus.MAX_FILE_BYTES // 6 + 1))
    _write(root, "latin1.py", "s = 'caf\xe9'\n".encode("latin-1"))
    return root


@pytest.fixture
def tok_dir(stdlib, tmp_path) -> Path:
    tok = train_tokenizer([read_text(p) for p in corpus_files(stdlib)], vocab_size=300)
    return save_tokenizer(tok, tmp_path / "tok", max_length=512)


def test_exclusions_and_order(stdlib):
    files = corpus_files(stdlib)
    assert [p.relative_to(stdlib).as_posix() for p in files] == sorted(KEPT)


def test_split_is_by_path_deterministic_and_disjoint(stdlib, tmp_path):
    files = corpus_files(stdlib)
    train, heldout = split(files, stdlib)
    assert sorted(train + heldout) == sorted(files) and not set(train) & set(heldout)
    assert split(list(reversed(files)), stdlib) == (train[::-1], heldout[::-1])  # order kept, same sides
    copy = tmp_path / "copy"  # another root with the same relative names: the same split
    for p in files:
        _write(copy, p.relative_to(stdlib).as_posix(), b"different content\n")
    other = split(corpus_files(copy), copy)
    assert [[p.relative_to(copy) for p in side] for side in other] == \
        [[p.relative_to(stdlib) for p in side] for side in (train, heldout)]
    names = [f"m{i}.py" for i in range(400)]
    held = [n for n in names if corpus.is_heldout(stdlib / n, stdlib)]
    assert 8 <= len(held) <= 40  # about 1 in 20


def test_pin_mismatch_is_one_line_input_error(stdlib):
    files = corpus_files(stdlib)
    pin = corpus_pin(files, stdlib)
    check_pin(files, stdlib, pinned=pin)
    _write(stdlib, "a.py", b"changed = True\n")
    with pytest.raises(InputError) as err:
        check_pin(files, stdlib, pinned=CorpusPin("3.11.7", pin.files, pin.sha256))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"the training corpus is pinned to the Python 3.11.7 standard library ({len(files)} "
                              f"files, sha256 {pin.sha256[:16]}); this Python's stdlib differs ({len(files)} files")
    assert message.endswith("run the training under Python 3.11.7, or pass --any-corpus to train on this one "
                            "(the results will differ from the shipped model)")


def test_real_stdlib_corpus_matches_the_pin():
    files = corpus_files()
    assert len(files) > 500
    assert not any("/test/" in f"/{p.relative_to(corpus.default_stdlib_dir()).as_posix()}" for p in files)
    check_pin(files)


def test_tokenizer_round_trip_and_load(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert (tok.bos_token_id, tok.eos_token_ids, tok.vocab_size) == (0, (1,), 300)
    assert (tok.bos_token, tok.eos_token, tok.chat_template) == (BOS_TOKEN, EOS_TOKEN, None)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and config["model_max_length"] == 512
    text = CODE + "ĀāǅΩ\u00a0\x00\x7f end"
    ids = tok.encode(text, add_bos=False)
    assert tok.decode(ids) == text
    assert tok.encode(text)[0] == 0 and len(ids) < len(text.encode())  # bos prepended; merges learnt
    stream = tok.stream_decoder()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == text


def test_tokenizer_is_deterministic(stdlib, tmp_path):
    texts = [read_text(p) for p in corpus_files(stdlib)]
    outs = [save_tokenizer(train_tokenizer(texts, vocab_size=300), tmp_path / f"t{i}", 64) for i in range(2)]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_encode_corpus_and_stream_cache(stdlib, tok_dir, tmp_path, monkeypatch):
    from tokenizers import Tokenizer

    files = corpus_files(stdlib)
    tok_json = (tok_dir / "tokenizer.json").read_bytes()
    tok = Tokenizer.from_str(tok_json.decode())
    stream = encode_corpus(tok, files)
    assert stream.dtype == torch.int32 and stream.dim() == 1
    assert int((stream == 1).sum()) == len(files) and int(stream[-1]) == 1
    assert int((stream == 0).sum()) == len(files) and int(stream[0]) == 0
    first = tok.encode(read_text(files[0]), add_special_tokens=False).ids
    assert stream[:len(first) + 2].tolist() == [0, *first, 1]  # bos, the file, eos
    cache = tmp_path / "cache"
    assert torch.equal(cached_stream(cache, tok_json, files, stdlib), stream)
    assert len(list(cache.glob("*.safetensors"))) == 1 and not list(cache.glob(".*"))

    def fail(*args, **kwargs):
        raise AssertionError("re-encoded although cached")

    monkeypatch.setattr(data, "encode_corpus", fail)
    assert torch.equal(cached_stream(cache, tok_json, files, stdlib), stream)
    with pytest.raises(AssertionError, match="re-encoded"):  # other files: another key, encoded afresh
        cached_stream(cache, tok_json, files[:-1], stdlib)


def test_batches_reproducible_and_eval_windows():
    stream = torch.arange(1000, dtype=torch.int32)
    a, b = Batches(stream, 16, 4, seed=7), Batches(stream, 16, 4, seed=7)
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(x, next(b)) for x in first)
    assert not torch.equal(next(Batches(stream, 16, 4, seed=8)), first[0])
    batch = first[0]
    assert batch.shape == (4, 17) and batch.dtype == torch.int64
    assert torch.equal(batch[:, 1:] - batch[:, :-1], torch.ones(4, 16, dtype=torch.int64))  # contiguous windows
    windows = eval_windows(stream, 16, 5)
    assert windows.shape == (5, 17) and windows[0, 0] == 0 and windows[-1, -1] == 999
    assert torch.equal(windows, eval_windows(stream, 16, 5))
    with pytest.raises(InputError, match="too short"):
        Batches(stream[:10], 16, 4, seed=0)
