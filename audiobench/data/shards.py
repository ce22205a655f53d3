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


def _open_h5(path: Path):
    import h5py

    if not path.exists():
        raise DataError(f"shard {path} does not exist")
    if path.is_dir():
        raise DataError(f"shard {path} is a directory, not an HDF5 file")
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


def inspect_shard(path: Union[str, Path], handle=None) -> ShardInfo:
    """Open ``path`` and check the layout (datasets, ranks, dtypes, consistent N); cheap.

    Raises :class:`DataError` naming the file on any problem.
    """
    path = Path(path)
    f = handle if handle is not None else _open_h5(path)
    try:
        for key in ("audio_name", "waveform", "target"):
            if key not in f:
                raise DataError(f"shard {path}: dataset '{key}' is missing (PANNs layout needs audio_name, waveform, target)")
            if not hasattr(f[key], "shape"):
                raise DataError(f"shard {path}: '{key}' is a group, expected a dataset")
        wav, tgt, names = f["waveform"], f["target"], f["audio_name"]
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
        if names.dtype.kind not in ("S", "O", "U"):
            raise DataError(f"shard {path}: 'audio_name' dtype is {names.dtype}, expected bytes")
        n = wav.shape[0]
        if n == 0:
            raise DataError(f"shard {path} has zero clips")
        if tgt.shape[0] != n or names.shape[0] != n:
            raise DataError(
                f"shard {path}: clip counts disagree (audio_name {names.shape[0]}, waveform {n}, target {tgt.shape[0]})"
            )
        if wav.shape[1] == 0:
            raise DataError(f"shard {path}: 'waveform' has zero samples per clip")
        sr = f.attrs.get("sample_rate")
        try:
            raw_names = names[()]
        except OSError as exc:
            raise DataError(f"shard {path}: 'audio_name' cannot be read (truncated?): {' '.join(str(exc).split())}") from None
        clip_ids = [_decode_name(x) for x in raw_names]
        return ShardInfo(
            path=path,
            n_clips=int(n),
            num_samples=int(wav.shape[1]),
            n_classes=int(tgt.shape[1]),
            waveform_dtype=np.dtype(wav.dtype),
            sample_rate=int(sr) if sr is not None else None,
            clip_ids=clip_ids,
        )
    finally:
        if handle is None:
            f.close()


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
) -> Path:
    """Write a deterministic int16 PANNs shard atomically (temp file in the same folder + rename).

    ``waveform`` may be float (clipped to [-1, 1], scaled by 32767 and rounded) or int16.
    """
    path = Path(path)
    wav = np.asarray(waveform)
    if wav.dtype != np.int16:
        wav = float_to_int16(wav)
    tgt = np.asarray(targets).astype(bool, copy=False)
    n = len(clip_ids)
    if wav.ndim != 2 or wav.shape[0] != n or tgt.ndim != 2 or tgt.shape[0] != n:
        raise ValueError(f"inconsistent shapes: {n} ids, waveform {wav.shape}, targets {tgt.shape}")
    with ShardWriter(path, n, wav.shape[1], tgt.shape[1], sample_rate, clip_ids, attrs) as w:
        w.write(0, wav, tgt)
    return path


def _chmod_default(path) -> None:
    """mkstemp makes 0600 files; give the final file the usual permissions (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def float_to_int16(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * INT16_SCALE).astype(np.int16)


class ShardWriter:
    """Write an int16 shard of known size row-block by row-block into a temp file; ``commit`` renames.

    Used as a context manager: on an exception the temp file is removed and ``path`` is untouched.
    """

    def __init__(self, path, n_clips, num_samples, n_classes, sample_rate, clip_ids, attrs=None):
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        _chmod_default(tmp)
        self.tmp = Path(tmp)
        names = [c.encode("utf-8") for c in clip_ids]
        width = max(1, max((len(b) for b in names), default=1))
        # Fixed libver bounds, no timestamps, no chunking: the same inputs give the same bytes.
        self.f = h5py.File(self.tmp, "w", libver=("earliest", "v110"))
        self.f.attrs["sample_rate"] = np.int64(sample_rate)
        for k, v in sorted((attrs or {}).items()):
            self.f.attrs[k] = v
        self.f.create_dataset("audio_name", data=np.array(names, dtype=f"S{width}"), track_times=False)
        self.wav = self.f.create_dataset("waveform", shape=(n_clips, num_samples), dtype=np.int16, track_times=False)
        self.tgt = self.f.create_dataset("target", shape=(n_clips, n_classes), dtype=np.bool_, track_times=False)
        self._committed = False

    def write(self, start: int, waveform_int16: np.ndarray, targets: np.ndarray) -> None:
        stop = start + len(waveform_int16)
        self.wav[start:stop] = waveform_int16
        self.tgt[start:stop] = np.asarray(targets, dtype=bool)

    def commit(self) -> Path:
        self.f.close()
        try:
            os.replace(self.tmp, self.path)
        except BaseException:  # e.g. disk full: never leave the temp file behind
            self.tmp.unlink(missing_ok=True)
            raise
        self._committed = True
        return self.path

    def abort(self) -> None:
        try:
            self.f.close()
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
