"""Time and frequency masking ("occlusion") as in Li et al. 2022.

Reference: Li, Qu, Shah, Metze, "Robustness of Neural Architectures for Audio Event Detection"
(2022), code lijuncheng16/AudioSetDoneRight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from audiobench.errors import ConfigError
from audiobench.perturb import register_perturbation
from audiobench.perturb.base import Perturbation, check_choice, check_finite, check_int

TIME_PATTERNS = ("alternate", "first", "middle", "last", "random")
PATTERNS = TIME_PATTERNS + tuple(f"{p}-concat" for p in TIME_PATTERNS) + ("band",)
FILLS = ("silence", "noise")
# Sane physical bounds (one-line ConfigError beyond them; docs/attacks.md "Option bounds").
MAX_DURATION_S = 3600.0  # periods, spans and time windows in seconds (a tagger's clip is seconds long)
MAX_FREQUENCY_HZ = 1.0e6  # band edges in Hz (above the Nyquist frequency of any audio rate)
MAX_N_FFT = 1 << 16
MAX_SAMPLE_RATE = 1_000_000  # Hz
FILL_LEVEL_DB_RANGE = (-200.0, 20.0)  # dBFS of the noise fill
# which field each pattern sweeps
PATTERN_PARAM = {"alternate": "period_s", "first": "span_s", "middle": "span_s", "last": "span_s", "random": "fraction", "band": "band_hz"}


def _n(seconds: float, sample_rate: int) -> int:
    return int(round(float(seconds) * sample_rate))


def occlusion_mask(
    pattern: str,
    n_samples: int,
    sample_rate: int,
    *,
    period_s: Optional[float] = None,
    span_s: Optional[float] = None,
    fraction: Optional[float] = None,
    rng=None,
    batch: int = 1,
) -> torch.Tensor:
    """Boolean mask (batch, n_samples) of the samples a time pattern removes (True = masked).

    * ``alternate``: blocks of ``period_s`` (rounded to whole samples) from the start; blocks
      1, 3, 5 ... are masked (the clip starts with kept audio). 50% exactly when the clip holds an
      even number of whole blocks.
    * ``first`` / ``middle`` / ``last``: one span of ``span_s`` at the start, centred (start at
      (n - span) // 2), or at the end; a span longer than the clip masks all of it.
    * ``random``: exactly round(``fraction`` · n) samples, made of whole blocks of ``period_s``
      chosen in a random order per clip (from ``rng``), the last one cut short to hit the count.
    Any ``-concat`` suffix is ignored here (it changes what happens to the kept audio, not the mask).
    """
    base = pattern[: -len("-concat")] if pattern.endswith("-concat") else pattern
    idx = torch.arange(n_samples)
    if base == "alternate":
        p = max(_n(period_s, sample_rate), 1)
        mask = (idx // p) % 2 == 1
        return mask.expand(batch, n_samples).clone()
    if base in ("first", "middle", "last"):
        L = min(_n(span_s, sample_rate), n_samples)
        start = {"first": 0, "middle": (n_samples - L) // 2, "last": n_samples - L}[base]
        mask = (idx >= start) & (idx < start + L)
        return mask.expand(batch, n_samples).clone()
    if base == "random":
        if rng is None:
            raise TypeError("occlusion_mask('random') needs rng")
        p = max(_n(period_s, sample_rate), 1)
        n_blocks = math.ceil(n_samples / p)
        need = int(round(float(fraction) * n_samples))
        block_len = torch.full((n_blocks,), p, dtype=torch.long)
        block_len[-1] = n_samples - p * (n_blocks - 1)
        perm = rng.randperm(n_blocks).cpu()  # (B, n_blocks)
        masks = torch.zeros(perm.shape[0], n_samples, dtype=torch.bool)
        for b in range(perm.shape[0]):
            left = need
            for blk in perm[b].tolist():
                if left <= 0:
                    break
                take = min(int(block_len[blk]), left)
                masks[b, blk * p : blk * p + take] = True
                left -= take
        return masks
    raise ConfigError(f"unknown occlusion pattern {pattern!r}; choose one of: {', '.join(PATTERNS)}")


def band_bins(n_fft: int, sample_rate: int, band_hz: Tuple[float, float]) -> torch.Tensor:
    """Boolean (n_fft // 2 + 1,) of the STFT bins whose centre frequency lies in [lo, hi] Hz."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, hi = band_hz
    return (freqs >= lo) & (freqs <= hi)


def _stft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop_length=n_fft // 4, window=win, center=True, return_complex=True)


def _istft(spec: torch.Tensor, n_fft: int, length: int, dtype) -> torch.Tensor:
    win = torch.hann_window(n_fft, device=spec.device, dtype=dtype)
    return torch.istft(spec, n_fft, hop_length=n_fft // 4, window=win, center=True, length=length)


def mask_band(waveform: torch.Tensor, band_hz, sample_rate: int, *, n_fft: int = 512, fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Remove the frequency band ``band_hz`` (lo, hi) through an STFT round trip (batched).

    The band's bins are zeroed, or replaced by the same bins of ``fill`` (a (batch, samples)
    noise waveform) when given. Hann window, hop n_fft/4 (perfect reconstruction elsewhere, up to
    float rounding).
    """
    n = waveform.shape[-1]
    x = waveform.double()
    spec = _stft(x, n_fft)
    bins = band_bins(n_fft, sample_rate, band_hz).to(spec.device)[None, :, None]
    if fill is None:
        spec = torch.where(bins, torch.zeros_like(spec), spec)
    else:
        spec = torch.where(bins, _stft(fill.double(), n_fft), spec)
    return _istft(spec, n_fft, n, torch.float64).to(waveform.dtype)


def occlude(waveform: torch.Tensor, mask: torch.Tensor, *, concat: bool = False, fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Apply a time mask (batch, samples): masked samples become ``fill`` (zeros when None).

    ``concat``: the kept samples are packed, in order, to the front and the tail (as many samples
    as were masked) is filled. Every clip's mask must then mask the same number of samples.
    """
    fill_values = torch.zeros_like(waveform) if fill is None else fill.to(waveform.dtype)
    mask = mask.to(waveform.device)
    if not concat:
        return torch.where(mask, fill_values, waveform)
    counts = mask.sum(dim=-1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("occlude(concat=True) needs the same masked count in every clip")
    n = waveform.shape[-1]
    # stable sort puts the kept samples (False) first, in their original order
    order = torch.sort(mask.to(torch.int8), dim=-1, stable=True).indices
    packed = torch.gather(waveform, -1, order)
    tail = torch.arange(n, device=waveform.device) >= n - int(counts[0])
    return torch.where(tail[None, :], fill_values, packed)


def parse_band(value, what: str = "occlusion band_hz", *, unit: str = "Hz", max_value: float = MAX_FREQUENCY_HZ) -> Tuple[float, float]:
    """(lo, hi) from ``"lo-hi"``, ``"lo,hi"`` or two numbers; 0 <= lo < hi <= ``max_value``.

    Used for frequency bands (Hz) and time windows (seconds); ``what`` names the field in the
    one-line ConfigError.
    """
    if isinstance(value, str):
        text = value.replace("–", "-")
        parts = text.split(",") if "," in text else text.split("-")
        if len(parts) != 2:
            raise ConfigError(f"{what} must be 'lo-hi' or 'lo,hi' in {unit}, got {value!r}")
        value = parts
    try:
        if isinstance(value, (bool, str, bytes)) or len(value) != 2 or any(isinstance(v, bool) for v in value):
            raise TypeError
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be 'lo-hi' or two numbers in {unit}, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi <= lo:
        raise ConfigError(f"{what} needs 0 <= lo < hi (finite, {unit}), got {value!r}")
    if hi > max_value:
        raise ConfigError(f"{what} must end at or below {max_value:g} {unit}, got {value!r}")
    return (lo, hi)


def _check_duration(name: str, seconds: float) -> None:
    if seconds > MAX_DURATION_S:
        raise ConfigError(f"{name} must be <= {MAX_DURATION_S:g} s, got {seconds:g}")


@register_perturbation
@dataclass
class Occlusion(Perturbation):
    """Time masking (and frequency-band masking) of Li et al. 2022 (lijuncheng16/AudioSetDoneRight).

    Patterns (``pattern``) and the field each one sweeps:

    * ``alternate`` (``period_s``, seconds): blocks of period_s, every other one masked (50%).
    * ``first`` / ``middle`` / ``last`` (``span_s``, seconds): one masked span.
    * ``random`` (``fraction``, 0..1): whole blocks of ``period_s`` seconds (default 0.1 s) in
      random order per clip until exactly round(fraction · samples) samples are masked.
    * ``<time pattern>-concat``: the kept audio is packed to the front and the tail filled.
    * ``band`` (``band_hz``, "lo-hi" Hz; ``level`` is the band width hi - lo): STFT bins in the
      band removed through a torch.stft/istft round trip (``n_fft`` samples, hop n_fft/4).

    Fill (``fill``): ``silence`` (zeros, default) or ``noise``: white Gaussian noise at
    ``fill_level_db`` dBFS (RMS relative to 1.0 = full scale), drawn from the clip's generator.
    ``sample_rate`` (Hz) is the dataset's rate: the engine sets it with ``with_sample_rate``;
    calling without it is an error. :func:`occlusion_mask` gives the exact mask applied.
    """

    name = "occlusion"
    level_field = "period_s"
    needs_sample_rate = True

    pattern: str = "alternate"
    period_s: Optional[float] = None
    span_s: Optional[float] = None
    fraction: Optional[float] = None
    band_hz: Optional[Union[Tuple[float, float], str]] = None
    fill: str = "silence"
    fill_level_db: float = -40.0
    n_fft: int = 512
    sample_rate: Optional[int] = None

    def __post_init__(self):
        check_choice("occlusion pattern", self.pattern, PATTERNS)
        check_choice("occlusion fill", self.fill, FILLS)
        check_finite("occlusion fill_level_db", self.fill_level_db)
        lo_db, hi_db = FILL_LEVEL_DB_RANGE
        if not lo_db <= float(self.fill_level_db) <= hi_db:
            raise ConfigError(f"occlusion fill_level_db must be in [{lo_db:g}, {hi_db:g}] dBFS, got {self.fill_level_db!r}")
        self.fill_level_db = float(self.fill_level_db)
        check_int("occlusion n_fft", self.n_fft, minimum=4)
        if self.n_fft > MAX_N_FFT:
            raise ConfigError(f"occlusion n_fft must be <= {MAX_N_FFT}, got {self.n_fft!r}")
        self.n_fft = int(self.n_fft)
        base = self._base
        used = {"alternate": ("period_s",), "first": ("span_s",), "middle": ("span_s",), "last": ("span_s",),
                "random": ("period_s", "fraction"), "band": ("band_hz", "n_fft")}[base]
        for f in ("period_s", "span_s", "fraction", "band_hz"):
            if getattr(self, f) is not None and f not in used:
                raise ConfigError(f"occlusion pattern {self.pattern!r} does not use {f} (it uses {', '.join(used)})")
        if base in ("alternate", "random"):
            if self.period_s is None:
                if base == "alternate":
                    raise ConfigError("occlusion pattern 'alternate' needs period_s (seconds)")
                self.period_s = 0.1
            check_finite("occlusion period_s", self.period_s, positive=True)
            self.period_s = float(self.period_s)
            _check_duration("occlusion period_s", self.period_s)
        if base in ("first", "middle", "last"):
            if self.span_s is None:
                raise ConfigError(f"occlusion pattern {self.pattern!r} needs span_s (seconds)")
            check_finite("occlusion span_s", self.span_s, non_negative=True)
            self.span_s = float(self.span_s)
            _check_duration("occlusion span_s", self.span_s)
        if base == "random":
            if self.fraction is None:
                raise ConfigError("occlusion pattern 'random' needs fraction (0..1)")
            check_finite("occlusion fraction", self.fraction, non_negative=True)
            if float(self.fraction) > 1:
                raise ConfigError(f"occlusion fraction must be <= 1, got {self.fraction!r}")
            self.fraction = float(self.fraction)
        if base == "band":
            if self.band_hz is None:
                raise ConfigError("occlusion pattern 'band' needs band_hz ('lo-hi' in Hz)")
            self.band_hz = parse_band(self.band_hz)
        if self.sample_rate is not None:
            check_int("occlusion sample_rate", self.sample_rate, minimum=1)
            if self.sample_rate > MAX_SAMPLE_RATE:
                raise ConfigError(f"occlusion sample_rate must be <= {MAX_SAMPLE_RATE} Hz, got {self.sample_rate!r}")
            self.sample_rate = int(self.sample_rate)
            if base == "band" and self.band_hz[0] >= self.sample_rate / 2:
                raise ConfigError(f"occlusion band_hz {self.band_hz} starts above Nyquist ({self.sample_rate / 2} Hz)")

    @property
    def _base(self) -> str:
        return self.pattern[: -len("-concat")] if self.pattern.endswith("-concat") else self.pattern

    @property
    def param(self) -> str:
        return PATTERN_PARAM[self._base]

    @property
    def level(self) -> float:
        if self._base == "band":
            return float(self.band_hz[1] - self.band_hz[0])
        return float(getattr(self, self.param))

    @property
    def variant(self) -> str:
        v = self.pattern
        if self.fill == "noise":
            v += f"+noise{self.fill_level_db:g}dB"
        return v

    def mask(self, n_samples: int, rng=None, batch: int = 1) -> torch.Tensor:
        """The time mask this condition applies, (batch, n_samples) bool (not for ``band``)."""
        return occlusion_mask(
            self.pattern, n_samples, self._rate(), period_s=self.period_s, span_s=self.span_s,
            fraction=self.fraction, rng=rng, batch=batch,
        )

    def _rate(self) -> int:
        if self.sample_rate is None:
            raise ConfigError("occlusion needs the dataset's sample_rate (set it with with_sample_rate)")
        return self.sample_rate

    def __call__(self, waveform: torch.Tensor, *, model=None, targets=None, rng=None, trace=None) -> torch.Tensor:
        b, n = waveform.shape
        sr = self._rate()
        fill = None
        if self.fill == "noise":
            fill = rng.normal(n, dtype=waveform.dtype).to(waveform.device) * (10.0 ** (self.fill_level_db / 20.0))
        if self._base == "band":
            out = mask_band(waveform, self.band_hz, sr, n_fft=self.n_fft, fill=fill)
        else:
            mask = self.mask(n, rng=rng, batch=b)
            out = occlude(waveform, mask, concat=self.pattern.endswith("-concat"), fill=fill)
        return out.clamp(-1.0, 1.0)
