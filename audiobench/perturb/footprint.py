"""Where a perturbation lives: its energy per mel band and time segment (the "footprint").

Pure functions, arrays in and numbers out (no engine, results or report imports), in two stages
so a runner can store the per-clip arrays beside each batch's results (resume-safe: they only
add up) and summarise them once at the end:

    cells = footprint_cells(n_samples, sample_rate)                     # the grid, once
    per_clip = footprint_per_clip(clean, perturbed, sample_rate)       # per batch: (B, ...) arrays
    table = summarise_footprint(concatenated_per_clip, cells.band_edges_hz, cells.segment_edges_s)

Energies come from a Hann-windowed STFT (``n_fft`` ≈ 32 ms, hop ``n_fft / 4``, zero padding at the
ends, so nothing is invented in a clip's silence), divided by the window's overlap gain so that
a cell's energies add up (over all cells) to Σ x² of the clip, up to the window's edge effects.
Bands are RECTANGULAR on the mel scale (HTK formula ``2595·log10(1 + f/700)``; ``n_bands`` edges
equally spaced in mel from 0 Hz to Nyquist): a partition of the spectrum, so shares add to one,
not the triangular filters of a model's front end. Segments are consecutive ``segment_s``-long
windows from the clip's start (the last one may be shorter); a frame belongs to the segment that
holds its centre sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

DEFAULT_BANDS = 64
DEFAULT_SEGMENT_S = 1.0


@dataclass(frozen=True)
class FootprintCells:
    """The grid: ``band_edges_hz`` (n_bands + 1,), ``segment_edges_s`` (n_segments + 1,), and the
    STFT used (``n_fft``, ``hop``)."""

    band_edges_hz: np.ndarray
    segment_edges_s: np.ndarray
    n_fft: int
    hop: int

    @property
    def n_bands(self) -> int:
        return len(self.band_edges_hz) - 1

    @property
    def n_segments(self) -> int:
        return len(self.segment_edges_s) - 1


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_band_edges_hz(sample_rate: int, n_bands: int = DEFAULT_BANDS) -> np.ndarray:
    """``n_bands + 1`` edges from 0 Hz to Nyquist, equally spaced on the mel scale."""
    if n_bands < 1:
        raise ValueError(f"n_bands must be >= 1, got {n_bands}")
    return mel_to_hz(np.linspace(0.0, float(hz_to_mel(sample_rate / 2.0)), n_bands + 1))


def default_n_fft(sample_rate: int) -> int:
    """The power of two nearest to 32 ms at ``sample_rate`` (1024 at 32 kHz, 512 at 16 kHz)."""
    return int(2 ** max(int(round(math.log2(0.032 * sample_rate))), 3))


def footprint_cells(n_samples: int, sample_rate: int, n_bands: int = DEFAULT_BANDS,
                    segment_s: float = DEFAULT_SEGMENT_S) -> FootprintCells:
    """The band/segment grid for clips of ``n_samples`` at ``sample_rate``."""
    if not segment_s > 0:
        raise ValueError(f"segment_s must be > 0, got {segment_s}")
    seg = max(int(round(segment_s * sample_rate)), 1)
    n_seg = max(math.ceil(n_samples / seg), 1)
    edges = np.minimum(np.arange(n_seg + 1) * seg, n_samples) / float(sample_rate)
    n_fft = default_n_fft(sample_rate)
    return FootprintCells(mel_band_edges_hz(sample_rate, n_bands), edges, n_fft, n_fft // 4)


def cell_energy(x, sample_rate: int, cells: FootprintCells) -> np.ndarray:
    """Energy (Σ of squared samples) of each clip of ``x`` (B, T) per (band, segment):
    (B, n_bands, n_segments), float64 (computed with a float64 ``torch.stft`` on the CPU)."""
    import torch

    xt = torch.as_tensor(_numpy64(x))
    if xt.ndim == 1:
        xt = xt[None]
    B, T = xt.shape
    n_fft, hop = cells.n_fft, cells.hop
    win = torch.hann_window(n_fft, dtype=torch.float64)  # periodic Hann
    gain = float((win ** 2).sum()) / hop  # Σ over frames of w² at any interior sample (1.5 here)
    # zero padding at the ends (center=True, pad_mode="constant"): nothing invented in silence
    spec = torch.stft(xt, n_fft, hop_length=hop, window=win, center=True, pad_mode="constant", return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2  # (B, bins, frames)
    n_bins, n_frames = power.shape[1], power.shape[2]
    freqs = np.arange(n_bins) * (sample_rate / n_fft)
    band_of_bin = np.clip(np.searchsorted(cells.band_edges_hz, freqs, side="right") - 1, 0, cells.n_bands - 1)
    # one-sided spectrum weights: Σ_k weight_k |X_k|² / n_fft = Σ_n (x_n w_n)² (Parseval), folded
    # with the bin -> band sum into one (bands, bins) matrix
    weight = np.full(n_bins, 2.0)
    weight[0] = 1.0
    if n_fft % 2 == 0:
        weight[-1] = 1.0
    to_band = np.zeros((cells.n_bands, n_bins))
    to_band[band_of_bin, np.arange(n_bins)] = weight / (n_fft * gain)
    per_band = torch.from_numpy(to_band) @ power  # (B, bands, frames)
    centres = np.arange(n_frames) * hop  # each frame's centre, as a sample index of x
    seg_edges = np.round(cells.segment_edges_s * sample_rate)
    seg_of_frame = np.clip(np.searchsorted(seg_edges, centres, side="right") - 1, 0, cells.n_segments - 1)
    out = torch.zeros(B, cells.n_bands, cells.n_segments, dtype=torch.float64)
    out.index_add_(2, torch.from_numpy(seg_of_frame), per_band)
    return out.numpy()


def footprint_per_clip(clean, perturbed, sample_rate: int, n_bands: int = DEFAULT_BANDS,
                       segment_s: float = DEFAULT_SEGMENT_S) -> Dict[str, np.ndarray]:
    """Per-clip footprint arrays of delta = perturbed - clean (both (B, T), numpy or torch).

    Returns float64 arrays with the clip axis first (concatenate them across batches):

    * ``delta_energy`` / ``clean_energy``: (B, n_bands, n_segments) energy per cell;
    * ``delta_energy_total``: (B,) Σ delta² over the clip;
    * ``delta_energy_padding``: (B,) Σ delta² over the clip's zero padding
      (:func:`audiobench.perturb.attacks.padding_mask` of the clean clip);
    * ``delta_energy_silence``: (B,) Σ delta² over every sample where the clean clip is exactly 0
      (digital silence: the padding plus shorter zero runs);
    * ``padding_samples``: (B,) number of padded samples.
    """
    import torch

    from audiobench.perturb.attacks import padding_mask

    c = _numpy64(clean)
    p = _numpy64(perturbed)
    if c.shape != p.shape or c.ndim != 2:
        raise ValueError(f"clean and perturbed must both be (batch, samples), got {c.shape} and {p.shape}")
    d = p - c
    cells = footprint_cells(c.shape[1], sample_rate, n_bands, segment_s)
    pad = padding_mask(torch.from_numpy(c), sample_rate).numpy()
    d2 = d ** 2
    return {
        "delta_energy": cell_energy(d, sample_rate, cells),
        "clean_energy": cell_energy(c, sample_rate, cells),
        "delta_energy_total": d2.sum(axis=1),
        "delta_energy_padding": (d2 * pad).sum(axis=1),
        "delta_energy_silence": (d2 * (c == 0)).sum(axis=1),
        "padding_samples": pad.sum(axis=1).astype(np.float64),
    }


def _numpy64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 10.0 * np.log10(num / den)
    r = np.where((den == 0) & (num > 0), np.inf, r)
    return np.where((den == 0) & (num == 0), np.nan, r)


def summarise_footprint(per_clip: Dict[str, np.ndarray], band_edges_hz, segment_edges_s, n_clips: Optional[int] = None):
    """Tidy table of the footprint over clips: one row per (band, segment).

    ``per_clip``: the arrays of :func:`footprint_per_clip` concatenated over clips, or any
    partial sums of them over clips (e.g. one row per stored unit: only sums are used), then give
    ``n_clips`` (default: the length of the first axis).

    Averaging: energies are SUMMED over clips before any ratio (an energy-weighted mean; a cell
    where a clip is silent cannot give an infinite or undefined ratio unless every clip is silent
    there). Columns:

    * ``band``, ``band_low_hz``, ``band_high_hz``, ``segment``, ``segment_start_s``,
      ``segment_end_s``;
    * ``delta_energy``, ``clean_energy``: the summed energies;
    * ``relative_db``: 10·log10(delta_energy / clean_energy) (``inf`` where delta has energy and
      no clip has any clean energy there, NaN where both are zero);
    * ``delta_share``: the cell's fraction of delta's total energy;
    * ``padding_share`` / ``silence_share`` (the same on every row): Σ delta² on padded samples
      / on digital silence, over Σ delta² (all clips summed);
    * ``n_clips``.
    """
    import pandas as pd

    de = np.asarray(per_clip["delta_energy"], dtype=np.float64)
    ce = np.asarray(per_clip["clean_energy"], dtype=np.float64)
    if de.shape != ce.shape or de.ndim != 3:
        raise ValueError(f"delta_energy and clean_energy must be (clips, bands, segments), got {de.shape} and {ce.shape}")
    bands = np.asarray(band_edges_hz, dtype=np.float64)
    segs = np.asarray(segment_edges_s, dtype=np.float64)
    n_rows, n_bands, n_segments = de.shape
    n_clips = n_rows if n_clips is None else int(n_clips)
    if len(bands) != n_bands + 1 or len(segs) != n_segments + 1:
        raise ValueError(f"{n_bands} bands x {n_segments} segments need {n_bands + 1} band edges and {n_segments + 1} "
                         f"segment edges, got {len(bands)} and {len(segs)}")
    d_sum, c_sum = de.sum(axis=0), ce.sum(axis=0)
    total = float(np.sum(per_clip["delta_energy_total"]))
    padding = float(np.sum(per_clip["delta_energy_padding"]))
    silence = float(np.sum(per_clip["delta_energy_silence"]))
    cell_total = float(d_sum.sum())
    b_idx, s_idx = np.meshgrid(np.arange(n_bands), np.arange(n_segments), indexing="ij")
    b_idx, s_idx = b_idx.ravel(), s_idx.ravel()
    return pd.DataFrame({
        "band": b_idx,
        "band_low_hz": bands[b_idx],
        "band_high_hz": bands[b_idx + 1],
        "segment": s_idx,
        "segment_start_s": segs[s_idx],
        "segment_end_s": segs[s_idx + 1],
        "delta_energy": d_sum.ravel(),
        "clean_energy": c_sum.ravel(),
        "relative_db": _db(d_sum, c_sum).ravel(),
        "delta_share": (d_sum / cell_total).ravel() if cell_total > 0 else np.full(b_idx.shape, np.nan),
        "padding_share": padding / total if total > 0 else np.nan,
        "silence_share": silence / total if total > 0 else np.nan,
        "n_clips": n_clips,
    })
