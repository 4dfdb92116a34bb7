"""The built-in byte-level tokenizer used with the built-in (random-weight) model.

Ids 0..3 are special (0 <bos>, 1 <eos>, 2 <pad>, 3 <unk>, matching DeepSeek's bos 0 / eos 1); byte b is
id b + 4, so the vocabulary has 260 entries. Any text round-trips.

Real checkpoints bring their own tokenizer.json: `load_tokenizer(DIR)` wraps it (through the `tokenizers`
package) in an `HFTokenizer` with the same interface, plus the directory's chat template, rendered in a
jinja2 sandbox (dsa.io.chat_template). No Python shipped with a checkpoint is executed.
"""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any, Optional, Sequence

from dsa.errors import TokenizerError
from dsa.model.fields import int_problem, is_int, read_json_object

BOS, EOS, PAD, UNK = 0, 1, 2, 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET


def clean_text(text: str) -> str:
    """Valid Unicode from user input: Python hands undecodable bytes of argv / stdin over as lone
    surrogates (surrogateescape); turn them back into their bytes and decode those with replacement."""
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        raw = text.encode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


class ByteTokenizer:
    bos_token_id = BOS
    eos_token_id = EOS
    eos_token_ids = (EOS,)
    vocab_size = VOCAB_SIZE
    chat_template = None

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        raise TokenizerError("the built-in byte tokenizer has no chat template; use --raw")

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [b + OFFSET for b in text.encode("utf-8")]
        return [BOS, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i - OFFSET for i in ids if OFFSET <= i < VOCAB_SIZE).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder()


class StreamDecoder:
    """Turns ids into text one at a time, holding back incomplete UTF-8 sequences."""

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if OFFSET <= token_id < VOCAB_SIZE:
            return self._utf8.decode(bytes([token_id - OFFSET]))
        return ""

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# ---- real checkpoints: tokenizer.json -------------------------------------------------------------


class HFTokenizer:
    """A checkpoint's tokenizer.json with ByteTokenizer's interface, its eos ids and chat template."""

    def __init__(self, tokenizer, *, bos_token_id: Optional[int], eos_token_ids: Sequence[int],
                 bos_token: str = "", eos_token: str = "", chat_template: Optional[str] = None, source: str = ""):
        self._tok = tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.eos_token_id = self.eos_token_ids[0]
        self.bos_token, self.eos_token = bos_token, eos_token
        self.chat_template = chat_template
        self.source = source
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. from a chat template) map to their ids.
        `add_bos` prepends bos unless the text already starts with it."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def stream_decoder(self) -> "HFStreamDecoder":
        return HFStreamDecoder(self)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation (bos included when the template adds it: encode it with
        add_bos=False, or rely on encode not doubling it)."""
        from dsa.io.chat_template import render_chat_template

        if self.chat_template is None:
            raise TokenizerError(f"no chat template in {self.source}; use --raw")
        return render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                    source=self.source, bos_token=self.bos_token, eos_token=self.eos_token)


class HFStreamDecoder:
    """Text of a growing id list, piece by piece: decodes a short window (the last emitted ids plus the
    new ones) and emits the new suffix once it does not end in an incomplete character."""

    def __init__(self, tokenizer: HFTokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: the ids emitted last time (context for decoders that strip spaces)
        self._read = 0  # ids before this index are emitted

    def _pending(self) -> str:
        done = self._tokenizer.decode(self._ids[self._prefix:self._read])
        text = self._tokenizer.decode(self._ids[self._prefix:])
        return text[len(done):] if len(text) > len(done) and text.startswith(done) else ""

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        new = self._pending()
        if not new or new.endswith("\ufffd"):
            return ""  # nothing new, or an incomplete character: wait for more ids
        self._prefix, self._read = self._read, len(self._ids)
        return new

    def flush(self) -> str:
        new = self._pending()
        self._prefix = self._read = len(self._ids)
        return new


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    return read_json_object(path, TokenizerError, "re-download it")


def _token_text(value: Any) -> Optional[str]:
    """tokenizer_config's bos/eos entries are a string or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


MAX_TOKEN_ID = (1 << 24) - 1  # ModelConfig's largest vocab_size, minus one


def _ids(data: dict, key: str, path: Path, vocab_size: Optional[int] = None) -> list[int]:
    """The token id(s) of `key` (bos_token_id / eos_token_id: an id or a list of ids; null or absent = none):
    TokenizerError naming the file and the field for anything but integers in [0, vocab_size)."""
    value = data.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    hi = vocab_size - 1 if vocab_size is not None else MAX_TOKEN_ID
    for i, v in enumerate(values):
        problem = int_problem(v, 0, hi)
        if problem:
            where = f"{key}[{i}]" if isinstance(value, list) else key
            big = vocab_size is not None and is_int(v) and v > hi
            why = f" (the vocabulary has {vocab_size} tokens)" if big else ""
            raise TokenizerError(f"{path}: {where} {problem}{why}; a token id is an integer, or a list of them")
    return values


def read_generation_config(path: Path, vocab_size: Optional[int] = None) -> tuple[list[int], list[int]]:
    """bos and eos ids of a generation_config.json (each [] when absent or null; eos may list several).
    No file: ([], []). Malformed JSON or ids that are not integers in [0, vocab_size): TokenizerError."""
    data = _read_json(path) or {}
    return _ids(data, "bos_token_id", path, vocab_size), _ids(data, "eos_token_id", path, vocab_size)


def _chat_template(model_dir: Path, tok_config: dict) -> Optional[str]:
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template.strip():
        return template
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    return None


def load_tokenizer(model_dir: str | Path) -> HFTokenizer:
    """The tokenizer of a checkpoint directory: tokenizer.json (required), tokenizer_config.json (bos/eos
    strings, chat template), generation_config.json and config.json (bos/eos ids; generation_config wins,
    its eos may be a list)."""
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{path} not found; a checkpoint directory needs its tokenizer.json (re-download it)")
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - a core dependency
        raise TokenizerError("the `tokenizers` package is missing; pip install tokenizers") from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a plain Exception for any parse problem
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({str(err).splitlines()[0][:200]}); "
                             "re-download it") from None
    tok_config = _read_json(model_dir / "tokenizer_config.json") or {}
    model_config = _read_json(model_dir / "config.json") or {}
    limit = model_config.get("vocab_size")
    limit = limit if is_int(limit) and 0 < limit <= MAX_TOKEN_ID + 1 else None  # else ModelConfig reports it
    gen_bos, gen_eos = read_generation_config(model_dir / "generation_config.json", limit)
    model_path = model_dir / "config.json"

    def token_id(text: Optional[str]) -> list[int]:
        found = tok.token_to_id(text) if text else None
        return [] if found is None else [found]

    bos_text, eos_text = _token_text(tok_config.get("bos_token")), _token_text(tok_config.get("eos_token"))
    bos = gen_bos or _ids(model_config, "bos_token_id", model_path, limit) or token_id(bos_text)
    eos = gen_eos or _ids(model_config, "eos_token_id", model_path, limit) or token_id(eos_text)
    if not eos:
        raise TokenizerError(f"{model_dir}: no eos token id in generation_config.json, config.json or "
                             "tokenizer_config.json; add eos_token_id to generation_config.json")
    vocab = tok.get_vocab(with_added_tokens=True)
    if limit is not None and vocab and max(vocab.values()) >= limit:
        raise TokenizerError(f"{path}: token ids reach {max(vocab.values())} but the model's vocab_size is {limit}; "
                             "the tokenizer does not belong to this model")
    bos_id = bos[0] if bos else None
    return HFTokenizer(
        tok, bos_token_id=bos_id, eos_token_ids=eos,
        bos_token=bos_text or (tok.id_to_token(bos_id) if bos_id is not None else None) or "",
        eos_token=eos_text or tok.id_to_token(eos[0]) or "",
        chat_template=_chat_template(model_dir, tok_config), source=str(model_dir),
    )
