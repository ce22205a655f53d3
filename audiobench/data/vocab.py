"""Label vocabularies: class index ↔ AudioSet mid ↔ display name.

The 527-class AudioSet vocabulary (``class_labels_indices.csv``: ``index,mid,display_name``) is
CC BY-SA and is *not* shipped with audiobench. A vocabulary may therefore be *partial*: it knows
its size (527) and only some entries (e.g. the ten classes the toy set uses); unknown entries print
as ``"class <i>"``. A partial vocabulary carries the hash of the full one it was cut from, so a
dataset described by a partial vocabulary and a model trained on the full one agree on
:attr:`Vocabulary.hash`.

The full vocabulary is found by :func:`default_vocabulary`: an explicit path, env
``AUDIOBENCH_VOCAB``, the copy cached in ``AUDIOBENCH_HOME/vocab/`` (written by
``audiobench data pack --vocab`` with AudioSet's CSV), else the partial vocabulary of the toy set.

Any other ``index,mid,display_name`` CSV is a *custom* vocabulary (an ESC-50 style 10- or
50-class set, say); its indices must be dense (0..n-1) and below
:data:`~audiobench.data.limits.MAX_VOCAB_SIZE`. Manifests embed a custom vocabulary whole (it is
the user's own) and AudioSet's only for the classes a dataset uses (its CSV is not shipped).
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

from audiobench.data.limits import MAX_VOCAB_FILE_BYTES, MAX_VOCAB_SIZE, check_count, has_control_chars
from audiobench.errors import DataError
from audiobench.paths import audiobench_home

# sha256 of the 527 AudioSet mids in index order joined by "\n" (see Vocabulary.hash): lets a
# partial vocabulary name the full vocabulary it belongs to without shipping it.
AUDIOSET_VOCAB_HASH = "fbd94e8a38594c56e778359b1bf3c59f4c669023df8780e7a234d87b93f6e463"
AUDIOSET_SIZE = 527
VOCAB_FILE_NAME = "class_labels_indices.csv"

Entry = Tuple[int, str, str]  # (index, mid, display_name)
MAX_LABEL_CHARS = 256  # a mid or display name

# Ten AudioSet classes (index, mid, display_name, as in AudioSet's class_labels_indices.csv) that
# a few lines of numpy can synthesise: the classes of the embedded toy set, and what the default
# vocabulary knows by name when AudioSet's CSV is not available.
TOY_CLASSES: List[Entry] = [
    (407, "/m/07qjznt", "Tick"),
    (481, "/m/02fs_r", "Beep, bleep"),
    (491, "/m/07qc9xj", "Clicking"),
    (500, "/m/028v0c", "Silence"),
    (501, "/m/01v_m0", "Sine wave"),
    (503, "/m/0hdsk", "Chirp tone"),
    (505, "/m/07pt_g0", "Pulse"),
    (516, "/m/06xkwv", "Mains hum"),
    (520, "/m/0chx_", "White noise"),
    (521, "/m/0cj0r", "Pink noise"),
]


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
        where = f"vocabulary {source or '(embedded)'}"
        # validated before anything of that size is allocated
        self.size = check_count(size, f"{where}: size", 1, MAX_VOCAB_SIZE)
        self.source = source
        self._mids: List[str] = [""] * self.size
        self._names: List[Optional[str]] = [None] * self.size
        for idx, mid, name in entries:
            idx = check_count(idx, f"{where}: index", 0, self.size - 1)
            if self._names[idx] is not None:
                raise DataError(f"{where}: index {idx} listed twice")
            mid, name = str(mid), str(name)
            for text in (mid, name):
                if len(text) > MAX_LABEL_CHARS or has_control_chars(text):
                    raise DataError(f"{where}: entry {idx} has a label longer than {MAX_LABEL_CHARS} characters or with control characters")
            self._mids[idx] = mid
            self._names[idx] = name
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

    @property
    def is_audioset(self) -> bool:
        """True for AudioSet's 527-class vocabulary (full or partial)."""
        return self.hash == AUDIOSET_VOCAB_HASH

    def describe(self) -> str:
        """One readable line: which vocabulary, its size, how many names are known, its hash."""
        kind = "AudioSet" if self.is_audioset else "custom"
        where = f" from {self.source}" if self.source else ""
        if self.partial:
            known = len(self.entries())
            hint = " (pass --vocab class_labels_indices.csv for all names)" if self.is_audioset else ""
            return f"{kind}, {self.size} classes, {known} named{where}{hint}; hash {self.hash[:12]}"
        return f"{kind}, {self.size} classes{where}; hash {self.hash[:12]}"

    def csv_text(self) -> str:
        """The known entries as an ``index,mid,display_name`` CSV (canonical: minimal quoting, ``\\n``)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "mid", "display_name"])
        for e in self.entries():
            w.writerow(list(e))
        return buf.getvalue()

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_manifest(self, used: Optional[Iterable[int]] = None, source_sha256: Optional[str] = None) -> dict:
        """The embedded form used in manifests: size, vocabulary hash and entries.

        AudioSet's vocabulary is embedded only for ``used`` (its CSV is CC BY-SA and not shipped);
        a custom vocabulary is embedded whole, with the sha256 of the CSV it was read from.
        """
        d = {"size": self.size, "hash": self.hash}
        if self.is_audioset:
            d["entries"] = [list(e) for e in self.entries(used)]
        else:
            if self.partial:
                raise DataError(f"vocabulary {self.source or '(embedded)'}: a custom vocabulary must name every class")
            d["entries"] = [list(e) for e in self.entries()]
            if source_sha256:
                d["source_sha256"] = source_sha256
        return d

    @classmethod
    def from_manifest(cls, obj: dict, base_dir: Optional[Path] = None, source: str = "") -> "Vocabulary":
        """The vocabulary a manifest describes: embedded entries, or ``{"path": CSV}`` relative to
        the manifest's folder ``base_dir`` (and inside it: no absolute paths, no '..', no symlink
        leading out)."""
        where = source or "manifest"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: 'vocabulary' must be an object with 'path' or 'entries'")
        if "path" in obj:
            p = contained_vocabulary_path(obj["path"], base_dir, where)
            voc = load_vocabulary(p)
            if obj.get("hash") and obj["hash"] != voc.hash:
                raise DataError(f"{where}: vocabulary {p} has hash {voc.hash[:12]}…, manifest says {str(obj['hash'])[:12]}…")
            return voc
        size = check_count(obj.get("size"), f"{where}: vocabulary size", 1, MAX_VOCAB_SIZE)
        raw = obj.get("entries")
        if not isinstance(raw, list) or len(raw) > size:
            raise DataError(f"{where}: vocabulary 'entries' must be a list of at most {size} [index, mid, name] entries")
        entries = []
        for e in raw:
            if not isinstance(e, list) or len(e) != 3 or not isinstance(e[1], str) or not isinstance(e[2], str):
                raise DataError(f"{where}: malformed embedded vocabulary entry {str(e)[:60]!r} (expected [index, mid, name])")
            entries.append((check_count(e[0], f"{where}: vocabulary index", 0, size - 1), e[1], e[2]))
        full_hash = obj.get("hash")
        if full_hash is not None and not isinstance(full_hash, str):
            raise DataError(f"{where}: vocabulary 'hash' must be a string")
        return cls(size, entries, full_hash=full_hash, source=source)

    def __repr__(self) -> str:
        kind = "partial" if self.partial else "full"
        return f"Vocabulary({kind}, size={self.size}, hash={self.hash[:12]}, source={self.source!r})"


def contained_vocabulary_path(raw, base_dir: Optional[Path], where: str) -> Path:
    """A manifest's ``vocabulary.path``: relative to the manifest's folder and inside it."""
    if not isinstance(raw, str) or not raw or has_control_chars(raw) or len(raw) > 1024:
        raise DataError(f"{where}: vocabulary 'path' must be a non-empty relative path without control characters")
    from pathlib import PurePosixPath

    rel = PurePosixPath(raw.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or (len(raw) > 1 and raw[1] == ":") or raw.startswith("~"):
        raise DataError(f"{where}: vocabulary path {raw!r} must be relative to the manifest's folder, without '..'")
    if base_dir is None:
        raise DataError(f"{where}: vocabulary path {raw!r} needs the manifest's folder")
    full = Path(base_dir).joinpath(*rel.parts)
    real_base, real = os.path.realpath(base_dir), os.path.realpath(full)
    if os.path.commonpath([real_base, real]) != real_base:
        raise DataError(f"{where}: vocabulary path {raw!r} leads outside the manifest's folder")
    return full


def load_vocabulary(path: Union[str, Path]) -> Vocabulary:
    """Read an ``index,mid,display_name`` CSV (AudioSet's ``class_labels_indices.csv`` or any
    custom vocabulary). Indices must be dense, 0..n-1 in any order, with n <= MAX_VOCAB_SIZE;
    this is checked before anything of size n is allocated."""
    path = Path(path)
    try:
        if not path.is_file():
            raise FileNotFoundError
        size = path.stat().st_size
        if size > MAX_VOCAB_FILE_BYTES:
            raise DataError(f"vocabulary file {path} is {size} bytes (limit {MAX_VOCAB_FILE_BYTES})")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"vocabulary file {path} does not exist or is not a regular file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"vocabulary file {path} cannot be read ({type(exc).__name__})") from None
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    try:
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error:
        header = []
    if header[:3] != ["index", "mid", "display_name"]:
        # the file's own first line is not repeated: it may be any file the caller was pointed at
        raise DataError(f"vocabulary file {path}: the first line must be the header 'index,mid,display_name'")
    entries = []
    try:
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                entries.append((int(row[0]), row[1].strip(), row[2].strip()))
            except (IndexError, ValueError):
                raise DataError(f"vocabulary file {path}: malformed line {lineno} (expected index,mid,display_name)") from None
            if len(entries) > MAX_VOCAB_SIZE:
                raise DataError(f"vocabulary file {path} has more than {MAX_VOCAB_SIZE} entries (limit)")
    except csv.Error as exc:
        raise DataError(f"vocabulary file {path}: not a readable CSV ({exc})") from None
    if not entries:
        raise DataError(f"vocabulary file {path} has no entries")
    indices = [e[0] for e in entries]
    lo, hi = min(indices), max(indices)
    if lo < 0 or hi >= MAX_VOCAB_SIZE:
        raise DataError(f"vocabulary file {path}: indices must lie in 0..{MAX_VOCAB_SIZE - 1}, found {lo if lo < 0 else hi}")
    if hi + 1 != len(entries) or len(set(indices)) != len(entries):
        dup = len(set(indices)) != len(entries)
        what = "an index listed twice" if dup else f"{len(entries)} rows but largest index {hi}"
        raise DataError(f"vocabulary file {path}: indices are not contiguous 0..n-1 ({what})")
    return Vocabulary(hi + 1, entries, source=str(path))


def cached_vocabulary_path() -> Path:
    return audiobench_home() / "vocab" / VOCAB_FILE_NAME


def cache_vocabulary(path: Union[str, Path]) -> Path:
    """Copy a full vocabulary CSV into ``AUDIOBENCH_HOME/vocab/`` (atomically) for later runs."""
    voc = load_vocabulary(path)  # validate before caching
    if not voc.is_audioset:
        raise DataError(f"vocabulary file {path} is not AudioSet's class_labels_indices.csv (hash {voc.hash[:12]}…); only that one is cached")
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
    return toy_vocabulary()


def toy_vocabulary() -> Vocabulary:
    """The partial AudioSet vocabulary (size 527) knowing the toy classes only."""
    return Vocabulary(AUDIOSET_SIZE, TOY_CLASSES, full_hash=AUDIOSET_VOCAB_HASH, source="toy (partial AudioSet)")


def vocabulary_from_classes(classes: Dict[int, str], source: str) -> Vocabulary:
    """A custom vocabulary from ``{index: name}`` (ESC-50's ``target`` → ``category``); the name is
    both mid and display name. Indices must be dense 0..n-1."""
    if not classes:
        raise DataError(f"{source}: no classes")
    n = max(classes) + 1
    if min(classes) < 0 or n != len(classes) or n > MAX_VOCAB_SIZE:
        raise DataError(f"{source}: class indices must be 0..n-1 without gaps (found {len(classes)} classes, largest index {n - 1})")
    return Vocabulary(n, [(i, classes[i], classes[i]) for i in range(n)], source=source)
