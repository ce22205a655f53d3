"""Shared test fixtures.

``shared_dir``: the real data in ``../shared`` (beside the repository root); tests that need it
skip with a reason when it is absent (a user's fresh clone), and run in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("AUDIOBENCH_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED_DIR / "README.md").exists():
        pytest.skip(f"real data not available: {SHARED_DIR} is absent (set AUDIOBENCH_SHARED)")
    return SHARED_DIR


def pytest_configure(config):
    """Hermetic tests: one fresh AUDIOBENCH_HOME for the whole session (set before any fixture,
    module-scoped ones included, and inherited by subprocesses), and none of the user's
    audiobench variables (a cached vocabulary or weights folder would change results)."""
    import tempfile

    for var in ("AUDIOBENCH_VOCAB", "AUDIOBENCH_WEIGHTS", "AUDIOBENCH_DATA", "AUDIOBENCH_MANIFESTS"):
        os.environ.pop(var, None)
    os.environ["AUDIOBENCH_HOME"] = tempfile.mkdtemp(prefix="audiobench-test-home-")
    config._audiobench_test_home = os.environ["AUDIOBENCH_HOME"]


def pytest_unconfigure(config):
    import shutil

    home = getattr(config, "_audiobench_test_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


# -- data layer ------------------------------------------------------------------------------------
class TinyShard:
    """A tiny seeded PANNs-layout shard written with raw h5py (independent of audiobench's writer).

    12 clips of 4000 int16 samples (0.25 s at 16 kHz), targets in the 527-class AudioSet space with
    positives only in classes 0-2; class ``empty_class`` (3) is "used" but has no positives.
    """

    def __init__(self, path, clip_ids, waveform_int16, targets, sample_rate, empty_class):
        self.path = path
        self.clip_ids = clip_ids
        self.waveform_int16 = waveform_int16
        self.targets = targets
        self.sample_rate = sample_rate
        self.empty_class = empty_class

    @property
    def waveform(self):
        return self.waveform_int16.astype("float32") / 32767.0


def write_tiny_shard(path, n_clips=12, num_samples=4000, n_classes=527, seed=1234, sample_rate=16000, prefix="clip"):
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    wav = rng.integers(-30000, 30001, size=(n_clips, num_samples), dtype=np.int16)
    wav[0, :5] = [32767, -32767, 0, 1, -1]  # exact values for conversion tests
    tgt = np.zeros((n_clips, n_classes), dtype=bool)
    tgt[:, :3] = rng.random((n_clips, 3)) < 0.4
    tgt[0, :3] = [True, False, True]  # every used class has a positive and a negative
    tgt[1, :3] = [False, True, False]
    ids = [f"Y{prefix}{seed}_{i:03d}.wav" for i in range(n_clips)]
    with h5py.File(path, "w") as f:
        f.attrs["sample_rate"] = sample_rate
        f.create_dataset("audio_name", data=np.array([c.encode() for c in ids], dtype="S32"))
        f.create_dataset("waveform", data=wav)
        f.create_dataset("target", data=tgt)
    return TinyShard(Path(path), ids, wav, tgt, sample_rate, empty_class=3)


@pytest.fixture(scope="session")
def tiny_shard(tmp_path_factory) -> TinyShard:
    """A tiny seeded HDF5 shard (see :class:`TinyShard`); read-only, shared by the session."""
    return write_tiny_shard(tmp_path_factory.mktemp("tiny_shard") / "tiny.h5")


# Property-based tests explore new examples on developers' machines, but CI (CI=true) draws the
# same examples every run, so a red CI is always reproducible.
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        _hyp_settings.load_profile("ci")
except ImportError:  # hypothesis is a test extra
    pass
