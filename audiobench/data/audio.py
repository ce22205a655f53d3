"""Decoding audio files to fixed-length mono float32 clips.

soundfile (libsndfile: WAV, FLAC, OGG and, from libsndfile 1.1, MP3) first; for other formats
(MP3 with an older libsndfile, M4A, ...) librosa (audioread / ffmpeg backends) as the fallback. Channels are averaged to mono,
the rate is changed with ``torchaudio.functional.resample`` (the same resampler the models use),
and the clip is zero-padded or trimmed at the end to ``num_samples``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from audiobench.errors import DataError

# Formats libsndfile decodes itself (no fallback is tried for them).
SNDFILE_NATIVE = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aiff", ".aif")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_audio(path: Union[str, Path]) -> Tuple[np.ndarray, int]:
    """``(samples float32 (frames, channels), sample_rate)`` of an audio file."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise DataError(f"audio file {path} does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return data, int(sr)
    except Exception as sf_exc:  # libsndfile raises several types
        first = _one_line(sf_exc)
    if path.suffix.lower() in SNDFILE_NATIVE:
        # libsndfile reads these completely; no other decoder would do better.
        raise DataError(f"audio file {path} cannot be decoded: {first}")
    try:
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns when it falls back to audioread
            data, sr = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"audio file {path} cannot be decoded: {first}; fallback: {_one_line(exc)}") from None
    data = np.asarray(data, dtype=np.float32)
    data = data[:, None] if data.ndim == 1 else data.T
    return data, int(sr)


def load_clip(path: Union[str, Path], sample_rate: int, num_samples: Optional[int] = None) -> np.ndarray:
    """Decode ``path`` → mono float32 (num_samples,) at ``sample_rate``, padded/trimmed at the end."""
    data, sr = decode_audio(path)
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} has no audio frames")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise DataError(f"audio file {path} contains NaN or infinite samples")
    if sr != sample_rate:
        import torch
        import torchaudio.functional as AF

        if num_samples is not None:
            # Resample only what the clip keeps (plus a margin for the filter's edge).
            keep = int(np.ceil(num_samples * sr / sample_rate)) + 64
            mono = mono[:keep]
        mono = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, int(sample_rate)).numpy()
    if num_samples is not None:
        if mono.shape[0] >= num_samples:
            mono = mono[:num_samples]
        else:
            mono = np.pad(mono, (0, num_samples - mono.shape[0]))
    return np.ascontiguousarray(mono, dtype=np.float32)
