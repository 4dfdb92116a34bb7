"""The training corpus: the `.py` sources of Python's standard library.

Why the stdlib: it is on every machine of the project (they all run the same image, Python 3.11.7), needs no
download, and is real, varied code. Its license is the PSF License Agreement (the `LICENSE.txt` next to the
sources), which permits use, modification and redistribution of derived works, so a model trained on it may be
shipped with this project (Apache-2.0) like any other PSF-licensed material.

What is kept: every `.py` file under the stdlib directory except test suites and generated / oversized files
(the fixed lists below), sorted by relative path. The corpus is pinned (`PINNED`: file count and a sha256 over
the (relative path, sha256 of bytes) list), so a training run can tell that it reads exactly the corpus of the
shipped model. The held-out split is by file and by a hash of its relative path, never by random state.
"""
from __future__ import annotations

import fnmatch
import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from dsa.errors import InputError

# Directories left out wherever they appear (matched against each directory name of the relative path).
# On 3.11.7 the test-suite names are: test/ (the regression suite), ctypes/test, distutils/tests,
# idlelib/idle_test, lib2to3/tests (deliberately broken files among them), tkinter/test, unittest/test.
EXCLUDED_DIR_NAMES = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages"})
# Build-generated files (compiler flags and install paths of this build, not code anyone wrote): they differ
# between builds of the same version, so they would break the pin without adding anything to learn from.
EXCLUDED_DIR_PATTERNS = ("config-*",)  # config-3.11-x86_64-linux-gnu/python-config.py
EXCLUDED_FILE_PATTERNS = ("_sysconfigdata_*.py",)
MAX_FILE_BYTES = 256 * 1024  # larger files are data (pydoc_data/topics.py) or generated tables
HELDOUT_MODULUS = 20  # held-out: sha256(relative path) % 20 == 0, about 5 % of the files


@dataclass(frozen=True)
class CorpusPin:
    """What the shipped model was trained on: the Python version, the file count, the corpus digest."""

    python: str
    files: int
    sha256: str


# Computed once on Python 3.11.7 (this image) with corpus_pin(corpus_files()).
PINNED = CorpusPin(python="3.11.7", files=731,
                   sha256="aa2f7e56ca0787849bb2a2a990dfb3e38db9b634c09731787c92acec9fe0d1e5")


def default_stdlib_dir() -> Path:
    """The standard library directory of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def relative_name(path: Path, root: Optional[Path] = None) -> str:
    """`path` relative to `root` (the stdlib by default), with `/` separators: the file's name in the pin."""
    return path.relative_to(root or default_stdlib_dir()).as_posix()


def _excluded_dir(name: str) -> bool:
    return name in EXCLUDED_DIR_NAMES or any(fnmatch.fnmatchcase(name, p) for p in EXCLUDED_DIR_PATTERNS)


def _excluded_file(rel: Path) -> bool:
    """True when a directory of `rel` or its file name is on the exclude lists."""
    if any(_excluded_dir(part) for part in rel.parts[:-1]):
        return True
    return any(fnmatch.fnmatchcase(rel.name, p) for p in EXCLUDED_FILE_PATTERNS)


def _usable(path: Path) -> bool:
    """A file small enough and valid UTF-8 (the tokenizer sees text, not bytes of unknown encoding)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        return False
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def corpus_files(stdlib_dir: Optional[Path] = None) -> list[Path]:
    """The corpus: the `.py` files under `stdlib_dir` (default: this Python's stdlib) not excluded above,
    sorted by relative path (so the order, and every stream built from it, is the same on every machine)."""
    root = Path(stdlib_dir) if stdlib_dir is not None else default_stdlib_dir()
    found = [p for p in root.rglob("*.py") if p.is_file() and not _excluded_file(p.relative_to(root))]
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return [p for p in found if _usable(p)]


def corpus_pin(files: Sequence[Path], root: Optional[Path] = None) -> CorpusPin:
    """The pin of `files` (in their order): count and sha256 over "relative path TAB sha256 of bytes" lines."""
    digest = hashlib.sha256()
    for path in files:
        line = f"{relative_name(path, root)}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
        digest.update(line.encode("utf-8"))
    return CorpusPin(python=platform.python_version(), files=len(files), sha256=digest.hexdigest())


def check_pin(files: Sequence[Path], root: Optional[Path] = None, pinned: CorpusPin = PINNED) -> None:
    """InputError (one line) unless `files` are exactly the pinned corpus: a run on another stdlib would train
    a different model than the shipped one without saying so."""
    local = corpus_pin(files, root)
    if (local.files, local.sha256) == (pinned.files, pinned.sha256):
        return
    raise InputError(
        f"the training corpus is pinned to the Python {pinned.python} standard library ({pinned.files} files, "
        f"sha256 {pinned.sha256[:16]}); this Python's stdlib differs ({local.files} files, Python {local.python}, "
        f"sha256 {local.sha256[:16]}): run the training under Python {pinned.python}, or pass --any-corpus to "
        "train on this one (the results will differ from the shipped model)")


def is_heldout(path: Path, root: Optional[Path] = None) -> bool:
    """True for a held-out file: sha256 of its relative path, as an integer, is 0 mod HELDOUT_MODULUS."""
    digest = hashlib.sha256(relative_name(path, root).encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % HELDOUT_MODULUS == 0


def split(files: Sequence[Path], root: Optional[Path] = None) -> tuple[list[Path], list[Path]]:
    """(train, heldout), each in the order of `files`: by file, from the relative path alone, so the split is
    the same on every run and machine and a file never lands on both sides."""
    train, heldout = [], []
    for path in files:
        (heldout if is_heldout(path, root) else train).append(path)
    return train, heldout


def read_text(path: Path) -> str:
    """The file's text, exactly (UTF-8, no newline translation: a tokenizer round trip must give its bytes)."""
    return path.read_bytes().decode("utf-8")
