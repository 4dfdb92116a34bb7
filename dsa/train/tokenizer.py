"""Training the tokenizer of the trained model: a byte-level BPE built with the `tokenizers` package.

Byte-level (ByteLevel pre-tokenizer and decoder, all 256 byte symbols in the alphabet): any text, code with
tabs and non-ASCII characters included, round-trips exactly, and the runtime's stream decoder
(dsa.io.tokenizer.HFStreamDecoder) holds back the bytes of an incomplete character. The pre-tokenizer splits
with the GPT-2 expression, so runs of indentation become tokens of their own.

Ids 0 and 1 are `<|begin_of_text|>` and `<|end_of_text|>`, the runtime's bos 0 / eos 1 (the built-in model's
config.json); no pad, no unk (byte-level needs none), no chat template: a raw-text model, whose prompts the
runtime sends as they are. Loading is dsa.io.tokenizer.load_tokenizer's job; this module only trains and saves.

Deterministic: the BPE trainer has no random state (pair counts, ties broken by the pair itself), so the same
texts give the same tokenizer.json bytes; the tests check it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from dsa.io.tokenizer_writer import write_files_around

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN)  # ids 0, 1
DEFAULT_VOCAB_SIZE = 2048


def _empty_tokenizer():
    """A BPE model with the byte-level pre-tokenizer and decoder, before training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """A `tokenizers.Tokenizer` of `vocab_size` tokens (the two specials, the 256 bytes, the merges) trained
    on `texts`. The specials come first, so bos is id 0 and eos id 1."""
    from tokenizers import AddedToken, pre_tokenizers, trainers

    special = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok = _empty_tokenizer()
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok, out_dir: str | Path, max_length: int) -> Path:
    """tokenizer.json, tokenizer_config.json and generation_config.json (bos 0 / eos 1, where load_tokenizer
    reads the ids first) into `out_dir`, created if missing; `max_length` is the model's context."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_files_around(out, tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, max_length=max_length)
    return out
