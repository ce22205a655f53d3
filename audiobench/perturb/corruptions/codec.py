"""Lossy codec round trip: ``mp3`` at a constant bitrate.

Encoder and decoder: libsndfile (>= 1.1) through ``soundfile``, which audiobench already depends
on; its wheels bundle LAME (encoder) and mpg123 (decoder). Setting the bitrate needs soundfile
>= 0.13 (``compression_level`` / ``bitrate_mode``): ``pip install 'audiobench[corruptions]'``.
libsndfile keeps the output rate equal to the input rate and sets LAME's constant bitrate from
its "compression level" c in [0, 1] as ``int(max - c·(max - min))`` kbps over the MPEG version's range (MPEG-1: 32..320 at 32 / 44.1 /
48 kHz, MPEG-2: 8..160 at 16 / 22.05 / 24 kHz, MPEG-2.5: 8..64 at 8 / 11.025 / 12 kHz), so the
exact bitrate is reachable. The stream's frame headers are parsed back (:func:`mp3_frames`), so
the realised bitrate is measured from the bitstream, not assumed.

Alignment: when LAME can write its Info tag (the first frame is large enough) the decoder trims
the codec delay itself; at low bitrates it cannot, and the decoded audio starts 1105 samples late
(LAME's 576-sample encoder delay + mpg123's 529-sample decoder delay), which is removed here.
Clips of a batch are coded in threads (cffi releases the GIL around libsndfile's calls).
"""

from __future__ import annotations

import functools
import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.corruptions.base import Corruption, Prepared, as_bool, straight_through

#: severity -> constant bitrate in kbps (legal at 16 to 48 kHz): near-transparent down to the
#: lowest MPEG-1 rate
MP3_BITRATE_KBPS = {1: 128, 2: 96, 3: 64, 4: 48, 5: 32}
#: LAME encoder delay + mpg123 decoder delay, removed when the stream has no Info tag
CODEC_DELAY_SAMPLES = 1105
EXTRA_HINT = "pip install 'audiobench[corruptions]'"

_BITRATES = {  # kbps by header index, per MPEG version (layer III)
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits
MP3_RATES = tuple(sorted(r for rs in _RATES.values() for r in rs))


def _version_range(sample_rate: int) -> Tuple[int, int]:
    """(min, max) kbps libsndfile maps the compression level onto at this rate."""
    if sample_rate >= 32000:
        return 32, 320
    if sample_rate >= 16000:
        return 8, 160
    return 8, 64


def legal_bitrates(sample_rate: int) -> Tuple[int, ...]:
    """The layer III bitrates (kbps) libsndfile can ask for at ``sample_rate``."""
    lo, hi = _version_range(sample_rate)
    table = _BITRATES[1] if sample_rate >= 32000 else _BITRATES[2]
    return tuple(b for b in table if lo <= b <= hi)


def mp3_frames(data: bytes) -> List[Tuple[int, int, int]]:
    """(bitrate kbps, sample rate Hz, frame bytes) of each MPEG layer III frame of a stream
    (an ID3v2 tag in front and an ID3v1 tag behind are skipped)."""
    i = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        i = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F))
    frames = []
    while i + 4 <= len(data):
        h = int.from_bytes(data[i:i + 4], "big")
        if (h >> 21) & 0x7FF != 0x7FF or ((h >> 17) & 3) != 1:  # sync word, layer III
            break
        version, br_idx, sr_idx, pad = (h >> 19) & 3, (h >> 12) & 15, (h >> 10) & 3, (h >> 9) & 1
        if version == 1 or br_idx in (0, 15) or sr_idx == 3:
            break
        kbps = _BITRATES[1 if version == 3 else 2][br_idx]
        rate = _RATES[version][sr_idx]
        size = (144 if version == 3 else 72) * kbps * 1000 // rate + pad
        frames.append((kbps, rate, size))
        i += size
    return frames


def stream_bitrate_kbps(data: bytes) -> float:
    """Bits of the audio frames over their duration (kbps): the bitrate measured on the stream."""
    frames = mp3_frames(data)
    if not frames:
        return math.nan
    rate = frames[0][1]
    per_frame = 1152 if rate >= 32000 else 576
    return sum(f[2] for f in frames) * 8.0 / (len(frames) * per_frame / rate) / 1000.0


@functools.lru_cache(maxsize=1)
def _soundfile():
    try:
        import soundfile as sf
    except ImportError:
        raise ConfigError(f"mp3 needs soundfile>=0.13: {EXTRA_HINT}") from None
    if "MP3" not in sf.available_formats():
        raise ConfigError(f"mp3 needs libsndfile >= 1.1 with MP3 support, and this soundfile's libsndfile "
                          f"{sf.__libsndfile_version__} has none: {EXTRA_HINT}")
    import inspect

    if "bitrate_mode" not in inspect.signature(sf.write).parameters:
        raise ConfigError(f"mp3 needs soundfile>=0.13 to set a bitrate (this is {sf.__version__}): {EXTRA_HINT}")
    return sf


def mp3_round_trip(x: np.ndarray, sample_rate: int, kbps: int) -> Tuple[np.ndarray, bytes]:
    """One mono clip (float32 (T,) in [-1, 1]) encoded to CBR MP3 and decoded back, same length
    and alignment; returns (decoded float32 (T,), the MP3 bytes)."""
    sf = _soundfile()
    lo, hi = _version_range(sample_rate)
    level = (hi - kbps - 0.25) / (hi - lo)  # int() in libsndfile gives exactly kbps
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=level)
    data = buf.getvalue()
    y, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    n = x.shape[0]
    if y.shape[0] != n:  # no Info tag: the codec delay is still in the stream
        y = y[CODEC_DELAY_SAMPLES:]
    if y.shape[0] < n:
        y = np.pad(y, (0, n - y.shape[0]))
    return np.ascontiguousarray(y[:n], dtype=np.float32), data


@register_perturbation
@dataclass
class MP3(Corruption):
    """MP3 round trip at a constant bitrate (LAME encoder, mpg123 decoder, via libsndfile).

    ``severity`` 1..5 -> 128, 96, 64, 48, 32 kbps CBR (:data:`MP3_BITRATE_KBPS`), mono, at the
    dataset's rate (which must be an MP3 rate: 8, 11.025, 12, 16, 22.05, 24, 32, 44.1 or 48 kHz;
    8-12 kHz only allow up to 64 kbps). Length and alignment kept (see module docstring). Per
    clip: ``bitrate_kbps`` measured on the stream (frame bytes over duration). Runs on the CPU
    (clips in threads) and comes back to the input's device. NOT differentiable;
    ``straight_through=True`` uses the identity as its gradient (BPDA) so it can be the base of
    a gradient attack in a chain. ``sample_rate``: the dataset's rate (Hz), set by the engine.
    """

    name = "mp3"
    needs_sample_rate = True
    physical_param = "bitrate_kbps"
    physical_unit = "kbps"
    table = MP3_BITRATE_KBPS
    damage_direction = "down"
    differentiable = False

    straight_through: bool = False
    sample_rate: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        self.straight_through = as_bool("mp3 straight_through", self.straight_through)
        if self.sample_rate is not None:
            if self.sample_rate not in MP3_RATES:
                raise ConfigError(f"mp3 needs an MP3 sample rate ({', '.join(map(str, MP3_RATES))} Hz); "
                                  f"the dataset's is {self.sample_rate} Hz")
            if self.physical not in legal_bitrates(self.sample_rate):
                raise ConfigError(f"mp3 severity {self.severity} ({self.physical} kbps) is not an MP3 bitrate at "
                                  f"{self.sample_rate} Hz (legal: {', '.join(map(str, legal_bitrates(self.sample_rate)))})")

    def prepare(self, waveform, rng) -> Prepared:
        sr, kbps = self._rate(), int(self.physical)
        _soundfile()  # a missing codec is a ConfigError before any work
        prepared = Prepared(lambda z: z)

        def code(z: torch.Tensor) -> torch.Tensor:
            clips = z.detach().float().clamp(-1.0, 1.0).cpu().numpy()
            workers = min(len(clips), torch.get_num_threads()) or 1
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(lambda c: mp3_round_trip(c, sr, kbps), clips))
            prepared.realised["bitrate_kbps"] = torch.tensor([stream_bitrate_kbps(d) for _, d in results], dtype=torch.float64)
            out = np.stack([y for y, _ in results]) if results else np.zeros_like(clips)
            return torch.from_numpy(out).to(device=z.device, dtype=z.dtype)

        prepared.fn = straight_through(code) if self.straight_through else code
        return prepared
