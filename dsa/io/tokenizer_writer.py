"""The tokenizer files of a generated checkpoint: tokenizer.json, tokenizer_config.json, generation_config.json.

tokenizer.json is a byte-level BPE without merges (built with the `tokenizers` package) whose ids equal
the built-in `ByteTokenizer`'s: 0 `<｜begin▁of▁sentence｜>`, 1 `<｜end▁of▁sentence｜>`, 2 pad, 3 unk,
byte b -> b + 4. When the model's vocabulary has room, `<｜User｜>` and `<｜Assistant｜>` follow as added
(non-special) tokens, as in DeepSeek's tokenizer; otherwise the chat markers are spelt out in bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

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


def tokenizer_config(max_length: int) -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token(BOS_TOKEN),
        "eos_token": _added_token(EOS_TOKEN),
        "pad_token": _added_token(PAD_TOKEN),
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }


def generation_config() -> dict:
    return {"bos_token_id": BOS, "eos_token_id": EOS, "do_sample": True, "temperature": DEFAULT_TEMPERATURE}


def write_tokenizer_files(out_dir: Path, *, vocab_size: int, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and generation_config.json into `out_dir`."""
    tokenizer_file, config_file, generation_file = TOKENIZER_FILES
    build_tokenizer(vocab_size).save(str(out_dir / tokenizer_file))
    for name, content in ((config_file, tokenizer_config(max_length)), (generation_file, generation_config())):
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
