"""Folders of recordings used by corruptions: noise banks (``background``) and RIR banks (``reverb``).

A bank is a folder of audio files (any depth; the extensions :mod:`audiobench.data.audio`
decodes), listed in sorted order of their relative paths, so file ``i`` is the same file on
every machine. Its identity is a content hash (:func:`bank_sha256`: sha256 over every file's
relative path and the sha256 of its bytes, plus the labels CSV when there is one); runs record it,
and seeds use it instead of the folder's path, so a copy of the same bank elsewhere gives the
same perturbations.

Labels (optional): a CSV with a file column (``file``, ``filename`` or ``path``: the relative path
or the base name) and a label column (``label``, ``labels``, ``category`` or ``class``), given
explicitly or found as ``labels.csv`` at the bank's root. ESC-50's ``meta/esc50.csv``
(``filename``, ``category``) and the shared-clips ``labels.csv`` (``file``, ``labels``) both fit.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from audiobench.data.audio import AUDIO_EXTENSIONS, load_clip
from audiobench.errors import ConfigError, DataError

FILE_COLUMNS = ("file", "filename", "path")
LABEL_COLUMNS = ("label", "labels", "category", "class")
#: decoded bank clips kept in memory (per process), least recently used evicted first
CACHE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class AudioBank:
    """The sorted audio files of a folder and, when a labels CSV is known, each file's label."""

    root: str
    files: Tuple[str, ...]  # relative POSIX paths, sorted
    stats: Tuple[Tuple[int, int], ...]  # (size, mtime_ns) per file: detects a changed bank
    labels_csv: Optional[str]
    labels: Tuple[str, ...]  # per file; "" when unlabelled or no CSV

    @property
    def classes(self) -> Tuple[str, ...]:
        """Sorted distinct non-empty labels (the bank's own classes)."""
        return tuple(sorted({lb for lb in self.labels if lb}))

    def class_index(self, i: int) -> float:
        """Index of file ``i``'s label in :attr:`classes`, NaN when it has none."""
        lb = self.labels[i]
        return float(self.classes.index(lb)) if lb else float("nan")

    def path(self, i: int) -> Path:
        return Path(self.root) / self.files[i]

    def __len__(self) -> int:
        return len(self.files)


def open_bank(folder, *, what: str, option: str, labels_csv=None) -> AudioBank:
    """List the bank at ``folder``; a missing or empty folder is a one-line ConfigError naming
    ``what`` (e.g. "background noise bank") and the ``option`` that sets it."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{what} {str(root)!r} is not a folder (set {option} to a folder of audio files)")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            if fn.lower().endswith(AUDIO_EXTENSIONS) and not fn.startswith("."):
                files.append(Path(dirpath, fn).relative_to(root).as_posix())
    files.sort()
    if not files:
        raise ConfigError(f"{what} {str(root)!r} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    stats = tuple((st.st_size, st.st_mtime_ns) for st in (os.stat(root / f) for f in files))
    csv_path = Path(labels_csv).expanduser() if labels_csv else (root / "labels.csv")
    if labels_csv and not csv_path.is_file():
        raise ConfigError(f"{what} labels CSV {str(csv_path)!r} does not exist")
    labels: Tuple[str, ...] = ("",) * len(files)
    used_csv = None
    if csv_path.is_file():
        labels = _read_labels(csv_path, files, what)
        used_csv = str(csv_path)
    return AudioBank(str(root), tuple(files), stats, used_csv, labels)


def _read_labels(csv_path: Path, files, what: str) -> Tuple[str, ...]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        fcol = next((cols[c] for c in FILE_COLUMNS if c in cols), None)
        lcol = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
        if fcol is None or lcol is None:
            raise ConfigError(f"{what} labels CSV {str(csv_path)!r} needs a file column ({', '.join(FILE_COLUMNS)}) "
                              f"and a label column ({', '.join(LABEL_COLUMNS)}); it has {', '.join(cols) or 'none'}")
        by_name: Dict[str, str] = {}
        for row in reader:
            key = (row.get(fcol) or "").strip().replace("\\", "/")
            if key:
                by_name[key] = (row.get(lcol) or "").strip()
    return tuple(by_name.get(f, by_name.get(f.rsplit("/", 1)[-1], "")) for f in files)


@functools.lru_cache(maxsize=32)
def _hash_listing(root: str, files: Tuple[str, ...], stats, labels_csv: Optional[str]) -> str:
    h = hashlib.sha256()
    for rel in files:
        fh = hashlib.sha256()
        with open(Path(root) / rel, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        h.update(rel.encode("utf-8") + b"\x00" + fh.hexdigest().encode("ascii") + b"\n")
    if labels_csv:
        h.update(b"labels\x00" + Path(labels_csv).read_bytes())
    return h.hexdigest()


def bank_sha256(bank: AudioBank) -> str:
    """Content hash of the bank (files' relative paths and bytes, labels CSV); cached per listing."""
    return _hash_listing(bank.root, bank.files, bank.stats, bank.labels_csv)


class _ByteLRU:
    """A small thread-safe least-recently-used cache bounded by the bytes of its numpy values."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return value


_CLIPS = _ByteLRU(CACHE_BYTES)


def load_bank_clip(bank: AudioBank, index: int, sample_rate: int) -> np.ndarray:
    """File ``index`` of the bank as mono float32 at ``sample_rate`` (decoded and resampled with
    :func:`audiobench.data.audio.load_clip`; cached in memory)."""
    key = (bank.root, bank.files[index], bank.stats[index], int(sample_rate))

    def make():
        try:
            return load_clip(bank.path(index), int(sample_rate))
        except DataError as exc:
            raise DataError(f"bank file {bank.files[index]!r} of {bank.root!r}: {exc}") from None

    return _CLIPS.get(key, make)
