"""Decoding audio files to fixed-length mono float32 clips.

soundfile (libsndfile: WAV, FLAC, OGG and, from libsndfile 1.1, MP3) first; for other formats
(MP3 with an older libsndfile, M4A, ...) librosa (audioread / ffmpeg backends) as the fallback.
Channels are averaged to mono, the rate is changed with :func:`audiobench.resample.resample` (the
resampler inside every model, so a packed clip and the same file given to ``predict`` are
resampled identically), and the clip is zero-padded or trimmed at the end to ``num_samples``.

What a file header claims is checked before it is trusted: the sample rate must be a whole number
of Hz in the supported range (a 3 KB WAV claiming 1,000,000,007 Hz is refused, one claiming
44101 Hz is resampled at bounded cost), and only the frames the clip keeps are decoded. Sources
whose peak exceeds :data:`~audiobench.data.limits.MAX_SOURCE_PEAK` are refused.

libmpg123 (inside libsndfile) prints its warnings straight to the process's stderr; while an MP3
is opened they are captured and re-issued as a :class:`DecoderWarning` naming the file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from audiobench.data.limits import MAX_SOURCE_PEAK
from audiobench.errors import DataError
from audiobench.resample import check_sample_rate

# Formats libsndfile decodes itself (no fallback is tried for them).
SNDFILE_NATIVE = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aiff", ".aif")
# Decoded by libsndfile's libmpg123, which writes its own warnings to fd 2.
_MPG123_SUFFIXES = (".mp3", ".mp2", ".mp1")


class DecoderWarning(UserWarning):
    """A message a C decoder printed while decoding a file, attributed to that file."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_STDERR_LOCK = threading.Lock()


@contextmanager
def _decoder_messages(path: Path, enabled: bool):
    """Capture what C code writes to fd 2 while the block runs; libmpg123's lines become
    DecoderWarnings naming ``path``, anything else is written back to stderr unchanged."""
    if not enabled:
        yield
        return
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no usable fd 2: nothing to capture
            yield
            return
        captured: List[str] = []
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                captured = tmp.read(1 << 16).decode("utf-8", errors="replace").splitlines()
    others = []
    for line in captured:
        if "mpg123" in line:
            msg = line.split("] ", 1)[-1].strip()  # drop libmpg123's "[src/...:line]" prefix
            warnings.warn(f"audio file {path}: MP3 decoder: {msg}", DecoderWarning, stacklevel=4)
        elif line.strip():
            others.append(line)
    if others:
        os.write(2, ("\n".join(others) + "\n").encode("utf-8", errors="replace"))


def decode_audio(path: Union[str, Path], max_frames: Optional[Callable[[int], Optional[int]]] = None) -> Tuple[np.ndarray, int]:
    """``(samples float32 (frames, channels), sample_rate)`` of an audio file.

    ``max_frames(sample_rate)`` (optional) says how many frames are needed at the file's rate;
    only those are decoded. The rate is validated (:func:`audiobench.resample.check_sample_rate`)
    before any frame is read.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise DataError(f"audio file {path} does not exist")
    if not path.is_file():
        raise DataError(f"audio file {path} is not a regular file")
    where = f"audio file {path}"
    try:
        with _decoder_messages(path, path.suffix.lower() in _MPG123_SUFFIXES):
            with sf.SoundFile(str(path)) as f:
                sr = check_sample_rate(f.samplerate, where, DataError)
                limit = max_frames(sr) if max_frames is not None else None
                frames = -1 if limit is None else max(0, int(limit))
                data = f.read(frames=frames, dtype="float32", always_2d=True)
        return data, sr
    except DataError:
        raise
    except Exception as sf_exc:  # libsndfile raises several types
        first = _one_line(sf_exc)
    if path.suffix.lower() in SNDFILE_NATIVE:
        # libsndfile reads these completely; no other decoder would do better.
        raise DataError(f"audio file {path} cannot be decoded: {first}")
    try:
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns when it falls back to audioread
            sr = check_sample_rate(librosa.get_samplerate(str(path)), where, DataError)
            limit = max_frames(sr) if max_frames is not None else None
            duration = None if limit is None else max(limit, 1) / sr
            data, sr2 = librosa.load(str(path), sr=None, mono=False, dtype=np.float32, duration=duration)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"audio file {path} cannot be decoded: {first}; fallback: {_one_line(exc)}") from None
    if int(sr2) != sr:
        raise DataError(f"audio file {path}: decoders disagree on its sample rate ({sr} vs {sr2} Hz)")
    data = np.asarray(data, dtype=np.float32)
    data = data[:, None] if data.ndim == 1 else data.T
    if limit is not None:
        data = data[:limit]
    return data, sr


def load_clip(path: Union[str, Path], sample_rate: int, num_samples: Optional[int] = None) -> np.ndarray:
    """Decode ``path`` → mono float32 (num_samples,) at ``sample_rate``, padded/trimmed at the end.

    See :func:`decode_clip` (which also returns the file's own rate).
    """
    return decode_clip(path, sample_rate, num_samples)[0]


def decode_clip(path: Union[str, Path], sample_rate: int, num_samples: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """``(mono float32 clip at sample_rate, the file's sample rate)``.

    With ``num_samples``, only the source frames that determine the kept samples are decoded and
    resampled (:meth:`audiobench.resample.Resampler.input_needed`: the output is identical to
    resampling the whole file and trimming). Samples are not clipped: resampling a full-scale
    clip may overshoot 1.0 slightly, as the model's own resampler would.
    """
    import torch

    from audiobench.resample import resample, resampler_for

    target = check_sample_rate(sample_rate, "requested rate", DataError)

    def needed(sr: int) -> Optional[int]:
        if num_samples is None:
            return None
        return resampler_for(sr, target).input_needed(int(num_samples))

    data, sr = decode_audio(path, needed)
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} has no audio frames")
    if not np.all(np.isfinite(data)):
        raise DataError(f"audio file {path} contains NaN or infinite samples")
    peak = float(np.max(np.abs(data)))
    if peak > MAX_SOURCE_PEAK:
        raise DataError(
            f"audio file {path} has samples of magnitude {peak:.3g}, outside [-1, 1] (limit {MAX_SOURCE_PEAK:g}): not normalised audio"
        )
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != target:
        mono = resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, target).numpy()
    if num_samples is not None:
        if mono.shape[0] >= num_samples:
            mono = mono[:num_samples]
        else:
            mono = np.pad(mono, (0, num_samples - mono.shape[0]))
    return np.ascontiguousarray(mono, dtype=np.float32), sr
