"""Label vocabularies: class index ↔ AudioSet mid ↔ display name.

The 527-class AudioSet vocabulary (``class_labels_indices.csv``: ``index,mid,display_name``) is
CC BY-SA and is *not* shipped with audiobench. A vocabulary may therefore be *partial*: it knows
its size (527) and only some entries (e.g. the ten classes the toy set uses); unknown entries print
as ``"class <i>"``. A partial vocabulary carries the hash of the full one it was cut from, so a
dataset described by a partial vocabulary and a model trained on the full one agree on
:attr:`Vocabulary.hash`.

The full vocabulary is found by :func:`default_vocabulary`: an explicit path, env
``AUDIOBENCH_VOCAB``, the copy cached in ``AUDIOBENCH_HOME/vocab/`` (written by
``audiobench data pack --vocab``), else the partial vocabulary of the toy set.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from audiobench.errors import DataError
from audiobench.paths import audiobench_home

# sha256 of the 527 AudioSet mids in index order joined by "\n" (see Vocabulary.hash): lets a
# partial vocabulary name the full vocabulary it belongs to without shipping it.
AUDIOSET_VOCAB_HASH = "fbd94e8a38594c56e778359b1bf3c59f4c669023df8780e7a234d87b93f6e463"
AUDIOSET_SIZE = 527
VOCAB_FILE_NAME = "class_labels_indices.csv"

Entry = Tuple[int, str, str]  # (index, mid, display_name)


def mids_hash(mids: Sequence[str]) -> str:
    """sha256 hex of the ordered mids joined by newlines: the identity of a label order."""
    return hashlib.sha256("\n".join(mids).encode("utf-8")).hexdigest()


class Vocabulary:
    """An ordered label vocabulary, full or partial.

    ``mids[i]`` / ``names[i]`` are the AudioSet mid and display name of class ``i``; for an entry a
    partial vocabulary does not know, ``mids[i]`` is ``""`` and ``names[i]`` is ``"class <i>"``.
    """

    def __init__(
        self,
        size: int,
        entries: Iterable[Entry],
        *,
        full_hash: Optional[str] = None,
        source: str = "",
    ):
        if int(size) <= 0:
            raise DataError(f"vocabulary {source or '(embedded)'}: size must be positive, got {size}")
        self.size = int(size)
        self.source = source
        self._mids: List[str] = [""] * self.size
        self._names: List[Optional[str]] = [None] * self.size
        for idx, mid, name in entries:
            idx = int(idx)
            if not 0 <= idx < self.size:
                raise DataError(f"vocabulary {source or '(embedded)'}: index {idx} outside 0..{self.size - 1}")
            if self._names[idx] is not None:
                raise DataError(f"vocabulary {source or '(embedded)'}: index {idx} listed twice")
            self._mids[idx] = str(mid)
            self._names[idx] = str(name)
        self.partial = any(n is None for n in self._names)
        if self.partial:
            self.hash = full_hash or mids_hash([f"{i}:{m}" for i, m in enumerate(self._mids)])
        else:
            self.hash = mids_hash(self._mids)
            if full_hash and full_hash != self.hash:
                raise DataError(
                    f"vocabulary {source or '(embedded)'}: hash {self.hash[:12]}… differs from the declared {full_hash[:12]}…"
                )
        self._lookup: Dict[str, int] = {}
        for i, (m, n) in enumerate(zip(self._mids, self._names)):
            if m:
                self._lookup.setdefault(m, i)
            if n is not None:
                self._lookup.setdefault(n, i)
        self._lower = {k.lower(): v for k, v in self._lookup.items()}

    # -- lookups ------------------------------------------------------------------------------
    @property
    def mids(self) -> List[str]:
        return list(self._mids)

    @property
    def names(self) -> List[str]:
        return [self.name_of(i) for i in range(self.size)]

    def __len__(self) -> int:
        return self.size

    def name_of(self, i: int) -> str:
        n = self._names[int(i)]
        return n if n is not None else f"class {int(i)}"

    def mid_of(self, i: int) -> str:
        return self._mids[int(i)]

    def known(self, i: int) -> bool:
        return self._names[int(i)] is not None

    def index_of(self, label: str) -> int:
        """Class index of an AudioSet mid (``/m/03l9g``) or display name (``Hammer``)."""
        key = str(label).strip()
        if key in self._lookup:
            return self._lookup[key]
        if key.lower() in self._lower:
            return self._lower[key.lower()]
        close = difflib.get_close_matches(key, list(self._lookup), n=2, cutoff=0.75)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        where = f" {self.source}" if self.source else ""
        partial = (
            f" (partial vocabulary of {len(self.entries())}/{self.size} classes: pass --vocab class_labels_indices.csv or set AUDIOBENCH_VOCAB)"
            if self.partial
            else ""
        )
        raise DataError(f"unknown label {key!r}: not a mid or display name in vocabulary{where}{partial}{hint}")

    def entries(self, indices: Optional[Iterable[int]] = None) -> List[Entry]:
        """Known ``(index, mid, display_name)`` entries, optionally only ``indices``."""
        idx = range(self.size) if indices is None else sorted(set(int(i) for i in indices))
        return [(i, self._mids[i], self._names[i]) for i in idx if self._names[i] is not None]

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_manifest(self, used: Optional[Iterable[int]] = None) -> dict:
        """The embedded form used in manifests: size, full-vocabulary hash and some entries."""
        return {
            "size": self.size,
            "hash": self.hash,
            "entries": [list(e) for e in self.entries(used)],
        }

    @classmethod
    def from_manifest(cls, obj: dict, base_dir: Optional[Path] = None, source: str = "") -> "Vocabulary":
        if not isinstance(obj, dict):
            raise DataError(f"{source}: 'vocabulary' must be an object with 'path' or 'entries'")
        if "path" in obj:
            p = Path(os.path.expandvars(str(obj["path"]))).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            voc = load_vocabulary(p)
            if obj.get("hash") and obj["hash"] != voc.hash:
                raise DataError(f"{source}: vocabulary {p} has hash {voc.hash[:12]}…, manifest says {obj['hash'][:12]}…")
            return voc
        try:
            entries = [(int(i), str(m), str(n)) for i, m, n in obj["entries"]]
            size = int(obj["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: malformed embedded vocabulary ({exc})") from None
        return cls(size, entries, full_hash=obj.get("hash"), source=source)

    def __repr__(self) -> str:
        kind = "partial" if self.partial else "full"
        return f"Vocabulary({kind}, size={self.size}, hash={self.hash[:12]}, source={self.source!r})"


def load_vocabulary(path: Union[str, Path]) -> Vocabulary:
    """Read ``class_labels_indices.csv`` (header ``index,mid,display_name``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"vocabulary file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"vocabulary file {path} cannot be read: {exc}") from None
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    header = [h.strip().lower() for h in next(reader, [])]
    if header[:3] != ["index", "mid", "display_name"]:
        raise DataError(f"vocabulary file {path}: header must be 'index,mid,display_name', got {','.join(header)!r}")
    entries = []
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            entries.append((int(row[0]), row[1].strip(), row[2].strip()))
        except (IndexError, ValueError):
            raise DataError(f"vocabulary file {path}: malformed line {lineno}: {','.join(row)!r}") from None
    if not entries:
        raise DataError(f"vocabulary file {path} has no entries")
    size = max(e[0] for e in entries) + 1
    voc = Vocabulary(size, entries, source=str(path))
    if voc.partial:
        raise DataError(f"vocabulary file {path}: indices are not contiguous 0..{size - 1}")
    return voc


def cached_vocabulary_path() -> Path:
    return audiobench_home() / "vocab" / VOCAB_FILE_NAME


def cache_vocabulary(path: Union[str, Path]) -> Path:
    """Copy a full vocabulary CSV into ``AUDIOBENCH_HOME/vocab/`` (atomically) for later runs."""
    voc = load_vocabulary(path)  # validate before caching
    dest = cached_vocabulary_path()
    if dest.exists() and load_vocabulary(dest).hash == voc.hash:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".vocab-", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def default_vocabulary(path: Union[str, Path, None] = None) -> Vocabulary:
    """The best vocabulary available: ``path``, env ``AUDIOBENCH_VOCAB``, the cached copy in
    ``AUDIOBENCH_HOME/vocab/``, else the partial AudioSet vocabulary of the toy set."""
    if path is not None:
        return load_vocabulary(path)
    env = os.environ.get("AUDIOBENCH_VOCAB")
    if env:
        return load_vocabulary(Path(env).expanduser())
    cached = cached_vocabulary_path()
    if cached.exists():
        return load_vocabulary(cached)
    from audiobench.data.toy import toy_vocabulary

    return toy_vocabulary()
