"""AudioSet HDF5 shards in the PANNs waveform layout.

One shard holds N clips::

    audio_name  (N,)            bytes, e.g. b"Y--BfvyPmVMo.wav"
    waveform    (N, samples)    int16 (value / 32767 → [-1, 1]) or float32 in [-1, 1]
    target      (N, n_classes)  bool, in the vocabulary's class order
    attrs["sample_rate"]        Hz (PANNs shards omit it; they are 32 kHz)

This is the layout written by qiuqiangkong/audioset_tagging_cnn (``utils/dataset.py
pack_waveforms_to_hdf5``) that AudioSet users already have. Shards written by audiobench are
contiguous (no chunking or compression: fastest for the slice reads the loader does) and byte-for-
byte deterministic (no timestamps), so their sha256 can be recorded in a manifest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from audiobench.data.limits import (
    MAX_CLIP_ID_CHARS,
    MAX_CLIPS,
    MAX_COMPRESSION_RATIO,
    MAX_VOCAB_SIZE,
    check_clip_id,
    check_clip_seconds,
    data_sample_rate,
)
from audiobench.errors import DataError

INT16_SCALE = 32767.0
PANNS_SAMPLE_RATE = 32000
WAVEFORM_DTYPES = (np.dtype(np.int16), np.dtype(np.float32))


def sha256_file(path: Union[str, Path], bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def clip_list_hash(clip_ids: Sequence[str]) -> str:
    """sha256 hex of the ordered clip ids joined by newlines."""
    return hashlib.sha256("\n".join(clip_ids).encode("utf-8")).hexdigest()


def labels_hash(targets: np.ndarray) -> str:
    """sha256 hex of a bool (clips, classes) target matrix: the text ``"<clips>,<classes>\\n"``
    followed by each row's bits packed little-endian (``np.packbits(targets, axis=1,
    bitorder="little")``). Identifies the labels of a dataset independently of its audio."""
    t = np.asarray(targets, dtype=bool)
    if t.ndim != 2:
        raise ValueError(f"targets must be 2-D, got shape {t.shape}")
    h = hashlib.sha256(f"{t.shape[0]},{t.shape[1]}\n".encode("ascii"))
    h.update(np.packbits(t, axis=1, bitorder="little").tobytes())
    return h.hexdigest()


def _open_h5(path: Path):
    import h5py

    if not path.exists():
        raise DataError(f"shard {path} does not exist")
    if path.is_dir():
        raise DataError(f"shard {path} is a directory, not an HDF5 file")
    if not path.is_file():
        raise DataError(f"shard {path} is not a regular file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        msg = " ".join(str(exc).split())
        raise DataError(f"shard {path} is not a readable HDF5 file (truncated or corrupt?): {msg}") from None


@dataclass
class ShardInfo:
    """What opening a shard learned, without reading the audio."""

    path: Path
    n_clips: int
    num_samples: int
    n_classes: int
    waveform_dtype: np.dtype
    sample_rate: Optional[int]  # None when the shard has no sample_rate attribute
    clip_ids: List[str]
    file_bytes: int = 0

    @property
    def effective_sample_rate(self) -> int:
        return self.sample_rate if self.sample_rate is not None else PANNS_SAMPLE_RATE


SHARD_KEYS = ("audio_name", "waveform", "target")


def _dataset(f, path: Path, key: str):
    """``f[key]`` if it is a dataset stored in this file (no links out, no virtual/external data)."""
    import h5py

    try:
        link = f.get(key, getlink=True)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"shard {path}: '{key}' cannot be read ({' '.join(str(exc).split())})") from None
    if link is None:
        raise DataError(f"shard {path}: dataset '{key}' is missing (PANNs layout needs audio_name, waveform, target)")
    if isinstance(link, h5py.ExternalLink):
        raise DataError(
            f"shard {path}: '{key}' is an external link to {link.filename!r}: refused (a shard's data must be stored in the shard itself)"
        )
    if isinstance(link, h5py.SoftLink):
        raise DataError(f"shard {path}: '{key}' is a soft link to {link.path!r}: refused (store the dataset itself)")
    try:
        obj = f[key]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"shard {path}: '{key}' cannot be read ({' '.join(str(exc).split())})") from None
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"shard {path}: '{key}' is a group, expected a dataset")
    return obj


def _check_storage(path: Path, key: str, ds, file_bytes: int) -> None:
    """Refuse data kept outside the file and sizes the file does not actually store."""
    from h5py import h5d

    if ds.is_virtual:
        raise DataError(f"shard {path}: '{key}' is a virtual dataset (its data lives in other files): refused")
    plist = ds.id.get_create_plist()
    if plist.get_external_count() > 0:
        raise DataError(f"shard {path}: '{key}' keeps its raw data in external files: refused (store it in the shard)")
    declared = int(np.prod([int(d) for d in ds.shape], dtype=object)) * int(ds.dtype.itemsize)
    if declared == 0:
        return
    layout = plist.get_layout()
    stored = int(ds.id.get_storage_size())
    if layout == h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None or stored < declared:
            raise DataError(
                f"shard {path}: '{key}' declares {declared} bytes (shape {tuple(ds.shape)}) but stores {stored}: never written or truncated"
            )
        if int(offset) + declared > file_bytes:
            raise DataError(f"shard {path}: '{key}' extends past the end of the file (truncated?)")
    elif layout == h5d.CHUNKED:
        chunks = ds.chunks
        expected = 1
        for size, chunk in zip(ds.shape, chunks):
            expected *= -(-int(size) // int(chunk))
        have = int(ds.id.get_num_chunks())
        if have < expected:
            raise DataError(
                f"shard {path}: '{key}' (shape {tuple(ds.shape)}) stores {have} of its {expected} chunks: declared data that was never written"
            )
        if declared > stored * MAX_COMPRESSION_RATIO:
            raise DataError(
                f"shard {path}: '{key}' declares {declared} bytes but stores {stored} (over {MAX_COMPRESSION_RATIO}:1): refused"
            )
    elif layout != h5d.COMPACT:
        raise DataError(f"shard {path}: '{key}' has an unsupported storage layout ({layout})")


def inspect_shard(path: Union[str, Path], handle=None) -> ShardInfo:
    """Open ``path`` and check the layout (datasets, ranks, dtypes, consistent N, storage); cheap.

    Every count, size and rate is validated against the limits of :mod:`audiobench.data.limits`
    and against what the file stores before anything is read from it. Raises
    :class:`DataError` naming the file on any problem.
    """
    path = Path(path)
    f = handle if handle is not None else _open_h5(path)
    try:
        file_bytes = os.path.getsize(path)
        names, wav, tgt = (_dataset(f, path, key) for key in SHARD_KEYS)
        if wav.ndim != 2:
            raise DataError(f"shard {path}: 'waveform' must be 2-D (clips, samples), has shape {wav.shape}")
        if tgt.ndim != 2:
            raise DataError(f"shard {path}: 'target' must be 2-D (clips, classes), has shape {tgt.shape}")
        if names.ndim != 1:
            raise DataError(f"shard {path}: 'audio_name' must be 1-D, has shape {names.shape}")
        if wav.dtype not in WAVEFORM_DTYPES:
            raise DataError(f"shard {path}: 'waveform' dtype is {wav.dtype}, expected int16 or float32")
        if tgt.dtype != np.bool_ and tgt.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
            raise DataError(f"shard {path}: 'target' dtype is {tgt.dtype}, expected bool")
        if names.dtype.kind not in ("S", "O"):
            raise DataError(f"shard {path}: 'audio_name' dtype is {names.dtype}, expected bytes")
        if names.dtype.kind == "S" and names.dtype.itemsize > 4 * MAX_CLIP_ID_CHARS:
            raise DataError(f"shard {path}: 'audio_name' holds {names.dtype.itemsize}-byte names (limit {4 * MAX_CLIP_ID_CHARS})")
        n = wav.shape[0]
        if n == 0:
            raise DataError(f"shard {path} has zero clips")
        if tgt.shape[0] != n or names.shape[0] != n:
            raise DataError(
                f"shard {path}: clip counts disagree (audio_name {names.shape[0]}, waveform {n}, target {tgt.shape[0]})"
            )
        if n > MAX_CLIPS:
            raise DataError(f"shard {path} declares {n} clips (limit {MAX_CLIPS})")
        if wav.shape[1] == 0:
            raise DataError(f"shard {path}: 'waveform' has zero samples per clip")
        if not 1 <= tgt.shape[1] <= MAX_VOCAB_SIZE:
            raise DataError(f"shard {path}: 'target' has {tgt.shape[1]} classes (limit {MAX_VOCAB_SIZE})")
        for key, ds in zip(SHARD_KEYS, (names, wav, tgt)):
            _check_storage(path, key, ds, file_bytes)
        try:
            raw_sr = f.attrs.get("sample_rate")
        except (OSError, TypeError, ValueError) as exc:
            raise DataError(f"shard {path}: attribute 'sample_rate' cannot be read ({' '.join(str(exc).split())})") from None
        sr = data_sample_rate(raw_sr, f"shard {path}") if raw_sr is not None else None
        seconds = wav.shape[1] / (sr if sr is not None else PANNS_SAMPLE_RATE)
        check_clip_seconds(seconds, f"shard {path} ({wav.shape[1]} samples per clip at {sr or PANNS_SAMPLE_RATE} Hz)")
        try:
            raw_names = names[()]
        except OSError as exc:
            raise DataError(f"shard {path}: 'audio_name' cannot be read (truncated?): {' '.join(str(exc).split())}") from None
        clip_ids = [_decode_name(x) for x in raw_names]
        empty = sum(1 for c in clip_ids if not c)
        if empty:
            raise DataError(
                f"shard {path}: {empty} of {n} rows have an empty audio_name (PANNs leaves such rows for audio files "
                "it could not find); audiobench needs every row to be a clip: repack with `audiobench data pack`"
            )
        for c in clip_ids:
            check_clip_id(c, f"shard {path}")
        return ShardInfo(
            path=path,
            n_clips=int(n),
            num_samples=int(wav.shape[1]),
            n_classes=int(tgt.shape[1]),
            waveform_dtype=np.dtype(wav.dtype),
            sample_rate=sr,
            clip_ids=clip_ids,
            file_bytes=int(file_bytes),
        )
    finally:
        if handle is None:
            f.close()


def first_duplicate(ids: Sequence[str]) -> Optional[str]:
    """The first id that occurs a second time in ``ids``, or None."""
    seen = set()
    for c in ids:
        if c in seen:
            return c
        seen.add(c)
    return None


def _decode_name(x) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace").rstrip("\x00")
    return str(x)


def default_sample_rate(info: ShardInfo) -> int:
    if info.sample_rate is None:
        warnings.warn(
            f"shard {info.path} has no 'sample_rate' attribute; assuming {PANNS_SAMPLE_RATE} Hz (PANNs convention)",
            stacklevel=3,
        )
        return PANNS_SAMPLE_RATE
    return info.sample_rate


def write_shard(
    path: Union[str, Path],
    clip_ids: Sequence[str],
    waveform: np.ndarray,
    targets: np.ndarray,
    sample_rate: int,
    attrs: Optional[dict] = None,
    dtype: str = "int16",
) -> Path:
    """Write a deterministic PANNs shard atomically (temp file in the same folder + rename).

    ``waveform`` may be float (clipped to [-1, 1]; for ``int16`` scaled by 32767 and rounded) or
    int16; ``dtype`` is the stored type (``int16``, the PANNs layout, or ``float32``).
    """
    path = Path(path)
    wav = np.asarray(waveform)
    tgt = np.asarray(targets).astype(bool, copy=False)
    n = len(clip_ids)
    if wav.ndim != 2 or wav.shape[0] != n or tgt.ndim != 2 or tgt.shape[0] != n:
        raise ValueError(f"inconsistent shapes: {n} ids, waveform {wav.shape}, targets {tgt.shape}")
    with ShardWriter(path, n, wav.shape[1], tgt.shape[1], sample_rate, clip_ids, attrs, dtype=dtype) as w:
        w.write(0, wav, tgt)
    return path


def _chmod_default(path) -> None:
    """mkstemp makes 0600 files; give the final file the usual permissions (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def float_to_int16(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * INT16_SCALE).astype(np.int16)


SHARD_DTYPES = {"int16": np.dtype(np.int16), "float32": np.dtype(np.float32)}


def float_to_float32(x: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)


class ShardWriter:
    """Write a shard of known size row-block by row-block into a temp file; ``commit`` renames.

    ``dtype`` is ``int16`` (the PANNs layout; float input is clipped, scaled by 32767 and rounded)
    or ``float32`` (clipped to [-1, 1]; twice the size, no quantisation). Used as a context
    manager: on an exception the temp file is removed and ``path`` is untouched. :meth:`finish`
    closes the temp file and returns its sha256 before anything is renamed, so a caller can
    validate and prepare everything else (a manifest) first.
    """

    def __init__(self, path, n_clips, num_samples, n_classes, sample_rate, clip_ids, attrs=None, dtype="int16"):
        import h5py

        if str(dtype) not in SHARD_DTYPES:
            raise ValueError(f"shard dtype must be one of {', '.join(SHARD_DTYPES)}, got {dtype!r}")
        self.dtype = SHARD_DTYPES[str(dtype)]
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        _chmod_default(tmp)
        self.tmp = Path(tmp)
        self.sha256: Optional[str] = None
        self._committed = False
        self._open = False
        try:
            names = [c.encode("utf-8") for c in clip_ids]
            width = max(1, max((len(b) for b in names), default=1))
            # Fixed libver bounds, no timestamps, no chunking: the same inputs give the same bytes.
            self.f = h5py.File(self.tmp, "w", libver=("earliest", "v110"))
            self._open = True
            self.f.attrs["sample_rate"] = np.int64(sample_rate)
            for k, v in sorted((attrs or {}).items()):
                self.f.attrs[k] = v
            self.f.create_dataset("audio_name", data=np.array(names, dtype=f"S{width}"), track_times=False)
            self.wav = self.f.create_dataset("waveform", shape=(n_clips, num_samples), dtype=self.dtype, track_times=False)
            self.tgt = self.f.create_dataset("target", shape=(n_clips, n_classes), dtype=np.bool_, track_times=False)
        except BaseException:
            self.abort()
            raise

    def write(self, start: int, waveform: np.ndarray, targets: np.ndarray) -> None:
        """Rows ``start:start + len(waveform)``; float input is converted to the shard's dtype."""
        wav = np.asarray(waveform)
        if wav.dtype != self.dtype:
            wav = float_to_int16(wav) if self.dtype == np.int16 else float_to_float32(wav)
        stop = start + len(wav)
        self.wav[start:stop] = wav
        self.tgt[start:stop] = np.asarray(targets, dtype=bool)

    def finish(self) -> str:
        """Close the temp file; return its sha256 (the shard's, once committed)."""
        if self._open:
            self.f.close()
            self._open = False
            self.sha256 = sha256_file(self.tmp)
        return self.sha256

    def commit(self) -> Path:
        self.finish()
        try:
            os.replace(self.tmp, self.path)
        except BaseException:  # e.g. disk full: never leave the temp file behind
            self.tmp.unlink(missing_ok=True)
            raise
        self._committed = True
        return self.path

    def abort(self) -> None:
        try:
            if self._open:
                self.f.close()
                self._open = False
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._committed:
            self.commit()
        elif exc_type is not None:
            self.abort()
        return False
