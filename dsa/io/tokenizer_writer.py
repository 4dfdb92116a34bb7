"""The tokenizer files of a generated checkpoint: tokenizer.json, tokenizer_config.json, generation_config.json.

tokenizer.json is a byte-level BPE without merges (built with the `tokenizers` package) whose ids equal
the built-in `ByteTokenizer`'s: 0 `<｜begin▁of▁sentence｜>`, 1 `<｜end▁of▁sentence｜>`, 2 pad, 3 unk,
byte b -> b + 4. When the model's vocabulary has room, `<｜User｜>` and `<｜Assistant｜>` follow as added
(non-special) tokens, as in DeepSeek's tokenizer; otherwise the chat markers are spelt out in bytes.

`write_files_around(out_dir, tokenizer, ...)` writes the same three files around any other tokenizer (the
trained one of dsa.train.tokenizer): its own bos / eos strings, ids looked up in it, optionally no chat template.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from dsa.errors import ConfigError
from dsa.io.tokenizer import BOS, EOS, OFFSET, VOCAB_SIZE

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
UNK_TOKEN = "<｜▁unk▁｜>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)  # ids 0..3
CHAT_TOKENS = ("<｜User｜>", "<｜Assistant｜>")  # ids 260, 261 when the vocabulary has room
DEFAULT_TEMPERATURE = 0.6  # the demo's default (docs/model-and-ops.md 2.4)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")  # what we write

# DeepSeek's chat layout: bos, the system text, then <｜User｜>content / <｜Assistant｜>content<eos> turns.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages if m['role'] == 'system' %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}{{ m['content'] }}"
    "{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}{{ eos_token }}"
    "{% elif m['role'] != 'system' %}{{ raise_exception('unknown role ' ~ m['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)


def _byte_chars() -> list[str]:
    """The printable character byte-level BPE uses for each byte 0..255 (printable Latin-1 bytes stand
    for themselves; the others are moved to U+0100 onwards, in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, moved = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + moved)
            moved += 1
    return [chars[b] for b in range(256)]


def build_tokenizer(vocab_size: int):
    """A `tokenizers.Tokenizer` with the ids above; `vocab_size` is the model's (>= 260)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if vocab_size < VOCAB_SIZE:
        raise ConfigError(f"vocab_size {vocab_size} is too small for the byte-level tokenizer; "
                          f"it needs >= {VOCAB_SIZE}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: b + OFFSET for b, ch in enumerate(_byte_chars())})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    if vocab_size >= VOCAB_SIZE + len(CHAT_TOKENS):
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CHAT_TOKENS])
    return tok


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


def tokenizer_config(max_length: int, *, bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN,
                     pad_token: Optional[str] = PAD_TOKEN, chat_template: Optional[str] = CHAT_TEMPLATE) -> dict:
    """tokenizer_config.json: the bos / eos / pad strings and the chat template (no `chat_template` key when
    None: a raw-text model, whose prompts the runtime sends as they are)."""
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token(bos_token),
        "eos_token": _added_token(eos_token),
        "pad_token": _added_token(pad_token) if pad_token is not None else None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template,
    }
    return config if chat_template is not None else {k: v for k, v in config.items() if k != "chat_template"}


def generation_config(bos_id: int = BOS, eos_id: int = EOS) -> dict:
    """generation_config.json: the bos / eos ids (what load_tokenizer reads first) and the sampling defaults."""
    return {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": True, "temperature": DEFAULT_TEMPERATURE}


def _write_json_files(out_dir: Path, tokenizer, config: dict, generation: dict) -> None:
    tokenizer_file, config_file, generation_file = TOKENIZER_FILES
    tokenizer.save(str(out_dir / tokenizer_file))
    for name, content in ((config_file, config), (generation_file, generation)):
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer_files(out_dir: Path, *, vocab_size: int, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and generation_config.json into `out_dir`."""
    _write_json_files(out_dir, build_tokenizer(vocab_size), tokenizer_config(max_length), generation_config())


def write_files_around(out_dir: Path, tokenizer, *, bos_token: str, eos_token: str, max_length: int,
                       chat_template: Optional[str] = None) -> None:
    """The three files of TOKENIZER_FILES for a given `tokenizers.Tokenizer` (e.g. a trained BPE): its
    tokenizer.json, and the json files naming `bos_token` / `eos_token` (which it must hold) and their ids, so
    `dsa.io.tokenizer.load_tokenizer(out_dir)` finds them. No pad token; no chat template unless given."""
    ids = [tokenizer.token_to_id(t) for t in (bos_token, eos_token)]
    missing = [t for t, i in zip((bos_token, eos_token), ids) if i is None]
    if missing:
        raise ConfigError(f"the tokenizer has no token {missing[0]!r}; bos and eos must be in its vocabulary")
    config = tokenizer_config(max_length, bos_token=bos_token, eos_token=eos_token, pad_token=None,
                              chat_template=chat_template)
    _write_json_files(out_dir, tokenizer, config, generation_config(*ids))
