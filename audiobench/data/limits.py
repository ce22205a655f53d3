"""The limits the data layer enforces on what it reads from files it did not write.

Shards, manifests, vocabularies and label files are things researchers download from each other.
Every size, count and rate read from one is checked against these limits, and against what the
file actually stores, *before* anything is allocated from it, so a small hostile file cannot make
audiobench allocate gigabytes or run for minutes. docs/data.md lists them (a test keeps the page
true) and says why each value was chosen.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from audiobench.errors import DataError
from audiobench.resample import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_sample_rate

#: Clips per dataset (and per shard). AudioSet's whole unbalanced set is about 2 M clips.
MAX_CLIPS = 100_000_000
#: Shards per manifest. PANNs packs AudioSet's unbalanced set into 41.
MAX_SHARDS = 10_000
#: Shortest clip, seconds: the models' front ends need several STFT frames (a 1-sample clip
#: cannot even be reflect-padded for the first one). 0.1 s is 3200 samples at 32 kHz.
MIN_CLIP_SECONDS = 0.1
#: Longest clip, seconds: one clip of a batch is held in memory as float32.
MAX_CLIP_SECONDS = 3600.0
#: Classes per vocabulary (AudioSet 527, FSD50K 200, ESC-50 50).
MAX_VOCAB_SIZE = 100_000
#: Characters of a clip id (they become file names of saved audio and rows of tables).
MAX_CLIP_ID_CHARS = 1024
#: Bytes of a manifest, a vocabulary CSV and an AST/JSON datafile read into memory.
MAX_MANIFEST_BYTES = 16 << 20
MAX_VOCAB_FILE_BYTES = 16 << 20
MAX_DATAFILE_BYTES = 512 << 20
#: Declared bytes of an HDF5 dataset per byte it stores. Contiguous datasets store exactly what
#: they declare; chunked, compressed ones less (audio and labels compress 1.1-50:1 with gzip; only
#: digital silence comes near gzip's 1000:1). A dataset declaring more than this, or with chunks
#: missing, is refused before anything is read from it, so reading a shard's clip ids and labels
#: never allocates more than this many times the file's size.
MAX_COMPRESSION_RATIO = 256
#: Peak of a decoded source file that ``data pack`` accepts. Lossy decoders (MP3) and
#: resamplers overshoot full scale by a few percent; such samples are clipped to [-1, 1] and
#: counted. Anything above +6 dBFS is not audio in [-1, 1] (unnormalised or garbage floats).
MAX_SOURCE_PEAK = 2.0

__all__ = [
    "MAX_CLIPS", "MAX_CLIP_ID_CHARS", "MAX_CLIP_SECONDS", "MAX_COMPRESSION_RATIO", "MAX_DATAFILE_BYTES",
    "MAX_MANIFEST_BYTES", "MAX_SAMPLE_RATE", "MAX_SHARDS", "MAX_SOURCE_PEAK", "MAX_VOCAB_FILE_BYTES",
    "MAX_VOCAB_SIZE", "MIN_CLIP_SECONDS", "MIN_SAMPLE_RATE", "check_clip_id", "check_count",
    "check_clip_seconds", "data_sample_rate", "has_control_chars",
]


def data_sample_rate(value, what: str) -> int:
    """A sample rate read from a data file, validated (:func:`audiobench.resample.check_sample_rate`)."""
    return check_sample_rate(value, what, DataError)


def check_count(value, what: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (JSON ``1e999``, ``16.5``, ``"12"`` and booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DataError(f"{what} must be a whole number, got {_shown(value)}")
    if not isinstance(value, Integral):
        if not math.isfinite(value) or value != int(value):
            raise DataError(f"{what} must be a whole number, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise DataError(f"{what} {value} is outside {lo}..{hi}")
    return value


def check_clip_seconds(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, Real) or not math.isfinite(seconds):
        raise DataError(f"{what}: clip length must be a finite number of seconds, got {_shown(seconds)}")
    seconds = float(seconds)
    if not MIN_CLIP_SECONDS <= seconds <= MAX_CLIP_SECONDS:
        raise DataError(
            f"{what}: clips of {seconds:.6g} s are outside the supported {MIN_CLIP_SECONDS:g}..{MAX_CLIP_SECONDS:g} s"
        )
    return seconds


def has_control_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_clip_id(clip_id: str, where: str) -> str:
    if not clip_id:
        raise DataError(f"{where}: a clip id is empty")
    if len(clip_id) > MAX_CLIP_ID_CHARS:
        raise DataError(f"{where}: a clip id is {len(clip_id)} characters long (limit {MAX_CLIP_ID_CHARS})")
    if has_control_chars(clip_id):
        raise DataError(f"{where}: clip id {clip_id[:60]!r} contains control characters (newline, NUL, ...)")
    return clip_id


def _shown(value) -> str:
    if isinstance(value, (str, bytes)):
        return repr(value[:40])
    if isinstance(value, (list, dict, tuple)):
        return f"a JSON {type(value).__name__}"
    return repr(value) if isinstance(value, (int, float, type(None))) else type(value).__name__
