"""`load_tokenizer` (tokenizer.json via `tokenizers`) and the sandboxed chat template: round trips,
streaming == full decode, DeepSeek chat layout, eos precedence, and the error for every broken file."""
import json
import random
import shutil

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dsa.configs import CONFIG_DIR
from dsa.errors import DsaError, InputError, TokenizerError
from dsa.io.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from dsa.io.tokenizer_writer import BOS_TOKEN, EOS_TOKEN, build_tokenizer, write_tokenizer_files

TEXTS = ["Hello, world!", "héllo wörld — ünïcode", "日本語のテキスト and 中文", "emoji 🙂🚀 mixed\nlines\t!", ""]


@pytest.fixture()
def tok_dir(tmp_path):
    """The tokenizer files make-checkpoint writes, next to the tiny config.json."""
    shutil.copy(CONFIG_DIR / "models" / "tiny" / "config.json", tmp_path / "config.json")
    write_tokenizer_files(tmp_path, vocab_size=260, max_length=4096)
    return tmp_path


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


@pytest.fixture()
def bpe_dir(tmp_path):
    """A trained byte-level BPE with merges, so tokens split multi-byte characters unevenly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS * 20, trainer=trainer)
    directory = tmp_path / "bpe"
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 7]}))
    return directory


def test_round_trip_and_same_ids_as_the_byte_tokenizer(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_token_id, tok.eos_token_id, tok.eos_token_ids, tok.vocab_size) == (0, 1, (1,), 260)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ByteTokenizer().encode(text)
        assert tok.decode(ids) == text
        assert tok.encode(text, add_bos=False) == ids[1:]
    assert tok.encode(BOS_TOKEN + "hi") == [0, 4 + ord("h"), 4 + ord("i")]  # bos text -> id 0, not doubled


def test_trained_bpe_round_trip_and_eos_list(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert tok.eos_token_ids == (1, 7) and tok.eos_token_id == 1
    for text in TEXTS:
        ids = tok.encode(text, add_bos=False)
        assert tok.decode(ids) == text
    assert len(tok.encode(TEXTS[2], add_bos=False)) < len(TEXTS[2].encode())  # merges are in use


@pytest.mark.parametrize("which", ["bytes", "bpe"])
def test_streaming_decoder_equals_full_decode(tok_dir, bpe_dir, which):
    tok = load_tokenizer(tok_dir if which == "bytes" else bpe_dir)
    for text in TEXTS:
        ids = tok.encode(text)
        stream = tok.stream_decoder()
        pieces = [stream.push(i) for i in ids]
        pieces.append(stream.flush())
        assert "".join(pieces) == tok.decode(ids) == text
        assert not any("\ufffd" in p for p in pieces)  # incomplete characters are held back, never emitted
        assert sum(1 for p in pieces if p) > 1 or len(text) <= 1  # incremental, not all at the end
    rng = random.Random(0)  # arbitrary ids (invalid UTF-8, special tokens): still equal to the full decode
    for _ in range(50):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 30))]
        stream = tok.stream_decoder()
        assert "".join([stream.push(i) for i in ids] + [stream.flush()]) == tok.decode(ids)


def test_chat_template_system_and_user(tok_dir):
    tok = load_tokenizer(tok_dir)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages)
    assert text == f"{BOS_TOKEN}You are terse.<｜User｜>Hi<｜Assistant｜>"
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == f"{BOS_TOKEN}You are terse.<｜User｜>Hi"
    turns = messages + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Más"}]
    assert tok.apply_chat_template(turns) == (
        f"{BOS_TOKEN}You are terse.<｜User｜>Hi<｜Assistant｜>Hello.{EOS_TOKEN}<｜User｜>Más<｜Assistant｜>")
    ids = tok.encode(text)
    assert ids[0] == 0 and ids[1] != 0 and ids[1:] == tok.encode(text, add_bos=False)[1:]
    with pytest.raises(InputError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(InputError, match="list of"):
        tok.apply_chat_template(["not a dict"])


def test_chat_tokens_are_single_ids_when_the_vocabulary_has_room():
    tok = build_tokenizer(262)
    assert tok.encode("<｜User｜>a<｜Assistant｜>", add_special_tokens=False).ids == [260, 4 + ord("a"), 261]
    assert build_tokenizer(260).get_vocab_size() == 260
    with pytest.raises(DsaError, match="too small"):
        build_tokenizer(100)


def test_missing_chat_template(tok_dir):
    edit_json(tok_dir / "tokenizer_config.json", chat_template=None)
    tok = load_tokenizer(tok_dir)
    with pytest.raises(TokenizerError, match=f"no chat template in {tok_dir}; use --raw"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    assert tok.encode("x") == [0, 4 + ord("x")]  # raw prompts still work
    with pytest.raises(TokenizerError, match="use --raw"):
        ByteTokenizer().apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_jinja_file_and_named_templates(tok_dir):
    edit_json(tok_dir / "tokenizer_config.json", chat_template=None)
    (tok_dir / "chat_template.jinja").write_text("{{ bos_token }}[{{ messages[0]['content'] }}]")
    assert load_tokenizer(tok_dir).apply_chat_template([{"role": "user", "content": "q"}]) == f"{BOS_TOKEN}[q]"
    edit_json(tok_dir / "tokenizer_config.json",
              chat_template=[{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}])
    assert load_tokenizer(tok_dir).apply_chat_template([]) == "D"


def test_deepseek_style_template_constructs(tok_dir):
    """namespace(), loop controls, tojson (non-ASCII kept), string methods, raise_exception: what real
    DeepSeek / HF templates use."""
    template = (
        "{% set ns = namespace(sys='') %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.sys = m['content'] %}{% break %}{% endif %}"
        "{% endfor %}{{ bos_token }}{{ ns.sys }}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{{ m['content'].split('</think>')[-1] | tojson }}{% endfor %}"
        "{% if not messages %}{{ raise_exception('empty conversation') }}{% endif %}"
    )
    edit_json(tok_dir / "tokenizer_config.json", chat_template=template)
    tok = load_tokenizer(tok_dir)
    msgs = [{"role": "system", "content": "S"}, {"role": "assistant", "content": "x</think>né"}]
    assert tok.apply_chat_template(msgs) == f'{BOS_TOKEN}S"né"'
    with pytest.raises(InputError, match="empty conversation"):
        tok.apply_chat_template([])


@pytest.mark.parametrize("template, words", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ("{% set _ = messages.append({'role': 'x'}) %}", "unsafe"),
    ("{% for %}", "not valid Jinja"),
])
def test_template_runs_sandboxed(tok_dir, template, words):
    edit_json(tok_dir / "tokenizer_config.json", chat_template=template)
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(TokenizerError, match=words):
        load_tokenizer(tok_dir).apply_chat_template(messages)
    assert messages == [{"role": "user", "content": "x"}]


def test_eos_precedence(tok_dir):
    edit_json(tok_dir / "generation_config.json", eos_token_id=[1, 2])
    assert load_tokenizer(tok_dir).eos_token_ids == (1, 2)  # generation_config wins, all of a list kept
    (tok_dir / "generation_config.json").unlink()
    edit_json(tok_dir / "config.json", eos_token_id=3)
    assert load_tokenizer(tok_dir).eos_token_ids == (3,)
    edit_json(tok_dir / "config.json", eos_token_id=None)
    assert load_tokenizer(tok_dir).eos_token_ids == (1,)  # tokenizer_config's eos_token string
    edit_json(tok_dir / "tokenizer_config.json", eos_token=None)
    with pytest.raises(TokenizerError, match="no eos token id"):
        load_tokenizer(tok_dir)


def test_missing_or_corrupt_files_name_the_file(tok_dir):
    (tok_dir / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid tokenizer\.json.*re-download"):
        load_tokenizer(tok_dir)
    (tok_dir / "tokenizer.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        load_tokenizer(tok_dir)
    (tok_dir / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match=rf"{tok_dir / 'tokenizer.json'} not found"):
        load_tokenizer(tok_dir)
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tok_dir / "no-such-dir")


def test_corrupt_tokenizer_config_and_vocab_mismatch(tok_dir):
    good = (tok_dir / "tokenizer_config.json").read_text()
    (tok_dir / "tokenizer_config.json").write_text("{ not json")
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: not valid JSON"):
        load_tokenizer(tok_dir)
    (tok_dir / "tokenizer_config.json").write_text(good)
    edit_json(tok_dir / "config.json", vocab_size=200)
    with pytest.raises(TokenizerError, match="vocab_size is 200"):
        load_tokenizer(tok_dir)
