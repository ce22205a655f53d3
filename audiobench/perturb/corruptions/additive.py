"""Additive noise at a per-clip SNR: coloured noise (``pink-noise``, ``brown-noise``) and real
recordings (``background``).

The SNR is 10·log10(P(clip) / P(noise)) with P the mean square over the whole clip; the noise is
scaled by its own realised power (:func:`audiobench.perturb.noise.snr_scale`), so the SNR before
the final clamp to [-1, 1] is exact, and ``realised_snr_db`` (after the clamp) is recorded per
clip. A silent clip gets no noise (an SNR is undefined for it; recorded as ``inf``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.base import realised_snr_db
from audiobench.perturb.corruptions.banks import AudioBank, bank_sha256, load_bank_clip, open_bank
from audiobench.perturb.corruptions.base import Corruption, Prepared
from audiobench.perturb.noise import snr_scale

#: severity -> SNR in dB of pink noise: the 20..0 dB range of the MUSAN / DEMAND noise-mixing
#: recipes, 5 dB apart
PINK_NOISE_SNR_DB = {1: 20.0, 2: 15.0, 3: 10.0, 4: 5.0, 5: 0.0}
#: severity -> SNR in dB of brown noise, 10 dB lower than pink: its power sits below ~200 Hz,
#: where taggers look least (efficientat-mn04 on the shared clips loses nothing at 0 dB)
BROWN_NOISE_SNR_DB = {1: 10.0, 2: 5.0, 3: 0.0, 4: -5.0, 5: -10.0}
#: severity -> SNR in dB of real background recordings (as pink noise)
BACKGROUND_SNR_DB = {1: 20.0, 2: 15.0, 3: 10.0, 4: 5.0, 5: 0.0}
#: coloured noise has no content below this frequency (Hz): sub-audible rumble would otherwise
#: hold most of brown noise's power and make its SNR meaningless
COLOURED_NOISE_LOW_HZ = 20.0


def coloured_noise(rng, n_samples: int, sample_rate: int, exponent: float, *, low_hz: float = COLOURED_NOISE_LOW_HZ) -> torch.Tensor:
    """(batch, n_samples) float64 noise with power spectral density ∝ 1/f**exponent (f >= low_hz).

    White Gaussian noise from the per-clip generators, shaped in the frequency domain by
    f**(-exponent/2): exponent 1 = pink (-3.01 dB per octave), 2 = brown / red (-6.02 dB per
    octave); bins below ``low_hz`` (and DC) are zero. The scale is arbitrary (mixing rescales it).
    """
    white = rng.normal(n_samples, dtype=torch.float64)
    spec = torch.fft.rfft(white, dim=-1)
    f = torch.fft.rfftfreq(n_samples, d=1.0 / sample_rate, dtype=torch.float64, device=white.device)
    gain = torch.where(f >= low_hz, f.clamp_min(low_hz).pow(-exponent / 2.0), torch.zeros_like(f))
    return torch.fft.irfft(spec * gain, n=n_samples, dim=-1)


def _mix(waveform: torch.Tensor, noise: torch.Tensor, snr_db: float) -> Prepared:
    """Prepared ``z + gain·noise`` with the gain fixed from the reference clip's power."""
    noise = noise.to(device=waveform.device, dtype=torch.float64)
    scaled = noise * snr_scale(waveform, noise, snr_db)[:, None]

    def apply(z: torch.Tensor) -> torch.Tensor:
        return (z.double() + scaled).to(z.dtype)

    return Prepared(apply)


class _AdditiveNoise(Corruption):
    physical_param = "snr_db"
    physical_unit = "dB"
    damage_direction = "down"

    def measure(self, clean, out) -> Dict[str, torch.Tensor]:
        return {"realised_snr_db": realised_snr_db(clean, out)}


@dataclass
class _ColouredNoise(_AdditiveNoise):
    exponent = 0.0
    needs_sample_rate = True

    sample_rate: Optional[int] = None

    def prepare(self, waveform, rng) -> Prepared:
        noise = coloured_noise(rng, waveform.shape[-1], self._rate(), self.exponent)
        return _mix(waveform, noise, self.physical)


@register_perturbation
@dataclass
class PinkNoise(_ColouredNoise):
    """Pink noise (power ∝ 1/f, -3.01 dB per octave, 20 Hz to Nyquist) at a per-clip SNR.

    ``severity`` 1..5 -> SNR 20, 15, 10, 5, 0 dB (:data:`PINK_NOISE_SNR_DB`), relative to each
    clip's mean power. Gaussian noise shaped in the frequency domain (the standard FFT method, e.g.
    Timmer & König 1995); the realised SNR is recorded per clip (``realised_snr_db``).
    Differentiable (additive). ``sample_rate``: the dataset's rate (Hz), set by the engine.
    """

    name = "pink-noise"
    exponent = 1.0
    table = PINK_NOISE_SNR_DB


@register_perturbation
@dataclass
class BrownNoise(_ColouredNoise):
    """Brown (red, Brownian) noise (power ∝ 1/f², -6.02 dB per octave, 20 Hz to Nyquist) at a
    per-clip SNR.

    ``severity`` 1..5 -> SNR 10, 5, 0, -5, -10 dB (:data:`BROWN_NOISE_SNR_DB`: 10 dB below pink
    noise's, as most of its power is below 200 Hz). Same method as ``pink-noise`` with exponent 2;
    ``realised_snr_db`` recorded per clip. Differentiable.
    """

    name = "brown-noise"
    exponent = 2.0
    table = BROWN_NOISE_SNR_DB


def bank_segments(bank: AudioBank, rng, n_samples: int, sample_rate: int):
    """Per clip: a bank file (uniform over the files) and a start offset (uniform over the file),
    both from the clip's generator; the file is looped to cover ``n_samples``.

    Returns (segments float64 (batch, n_samples) on the CPU, file indices (batch,) long).
    """
    u = rng.uniform(2, dtype=torch.float64).cpu().numpy()  # (B, 2): file, offset
    picks = np.minimum((u[:, 0] * len(bank)).astype(np.int64), len(bank) - 1)
    out = np.zeros((len(picks), n_samples), dtype=np.float64)
    for b, i in enumerate(picks):
        clip = load_bank_clip(bank, int(i), sample_rate)
        start = min(int(u[b, 1] * len(clip)), len(clip) - 1)
        out[b] = clip[(start + np.arange(n_samples)) % len(clip)]
    return torch.from_numpy(out), torch.from_numpy(picks)


@register_perturbation
@dataclass
class Background(_AdditiveNoise):
    """Real background recordings mixed at a per-clip SNR (MUSAN / DEMAND / ESC-50-style banks).

    ``bank``: a folder of audio files (any depth); each clip gets one file chosen uniformly by its
    own generator, looped from a random offset (also drawn) to the clip's length, decoded to mono
    and resampled to the dataset's rate with :func:`audiobench.data.audio.load_clip`, then mixed
    at ``severity`` 1..5 -> SNR 20, 15, 10, 5, 0 dB (:data:`BACKGROUND_SNR_DB`). ``bank_labels``: an
    optional labels CSV (default: ``labels.csv`` at the bank's root if present) so the bank's own
    classes are recorded. Per clip: ``realised_snr_db``, ``bank_clip`` (index into the sorted
    file list), ``bank_class`` (index into the sorted class list, NaN unlabelled). ``to_dict``
    records the bank's content hash (``bank_sha256``), file count and classes; seeds use the hash,
    not the path. Reference: Snyder et al. 2015, "MUSAN: A Music, Speech, and Noise Corpus";
    Thiemann et al. 2013, DEMAND; Piczak 2015, ESC-50. Differentiable (additive).
    """

    name = "background"
    needs_sample_rate = True
    table = BACKGROUND_SNR_DB

    bank: Optional[str] = None
    bank_labels: Optional[str] = None
    sample_rate: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        if self.bank is None:
            raise ConfigError("background needs bank=DIR, a folder of noise recordings (MUSAN, DEMAND, ESC-50 ...); "
                              "with the CLI: --noise-bank DIR")
        self.bank = str(self.bank)
        self.bank_labels = None if self.bank_labels in (None, "") else str(self.bank_labels)
        self._bank = open_bank(self.bank, what="background noise bank", option="--noise-bank", labels_csv=self.bank_labels)

    @property
    def audio_bank(self) -> AudioBank:
        return self._bank

    def prepare(self, waveform, rng) -> Prepared:
        segments, picks = bank_segments(self._bank, rng, waveform.shape[-1], self._rate())
        prepared = _mix(waveform, segments, self.physical)
        prepared.realised["bank_clip"] = picks.double()
        prepared.realised["bank_class"] = torch.tensor([self._bank.class_index(int(i)) for i in picks], dtype=torch.float64)
        return prepared

    def to_dict(self) -> Dict[str, Any]:
        d = super().to_dict()
        d.update(bank_sha256=bank_sha256(self._bank), bank_files=len(self._bank), bank_classes=list(self._bank.classes))
        return d

    def _key_items(self) -> Dict[str, Any]:
        items = asdict(self)
        items["bank"] = "sha256:" + bank_sha256(self._bank)
        items.pop("bank_labels")  # its content is in the hash
        return items
