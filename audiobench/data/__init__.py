"""Data layer: AudioSet HDF5 shards / JSON datafiles → batches of (clip_id, waveform, targets)."""

from __future__ import annotations

from audiobench.data.batch import Batch
