"""The embedded toy set: determinism, AudioSet labels, the committed manifest, first-use generation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from audiobench.data import generate_toy_clips, open_dataset
from audiobench.data.shards import sha256_file
from audiobench.data.toy import TOY_CLASSES, SILENCE, build_toy_manifest, toy_vocabulary, write_toy_shard
from audiobench.data.vocab import AUDIOSET_VOCAB_HASH

REPO = Path(__file__).resolve().parents[1]


def test_generate_is_deterministic_and_prefix_stable():
    ids, w, t = generate_toy_clips(20, seed=3, sample_rate=8000, clip_seconds=1.0)
    ids2, w2, t2 = generate_toy_clips(24, seed=3, sample_rate=8000, clip_seconds=1.0)
    assert ids == ids2[:20] and np.array_equal(w, w2[:20]) and np.array_equal(t, t2[:20])
    _, w3, _ = generate_toy_clips(20, seed=4, sample_rate=8000, clip_seconds=1.0)
    assert not np.array_equal(w, w3)
    assert w.dtype == np.float32 and w.shape == (20, 8000) and t.shape == (20, 527) and t.dtype == bool
    assert ids[0] == "toy-s3-0000"
    assert float(np.abs(w).max()) <= 0.99 + 1e-6 and np.isfinite(w).all()


def test_classes_single_and_mixtures_with_varied_levels():
    ids, w, t = generate_toy_clips(96, seed=0, sample_rate=16000, clip_seconds=2.0)
    used = sorted(c[0] for c in TOY_CLASSES)
    assert sorted(np.nonzero(t.any(0))[0].tolist()) == used
    n_labels = t.sum(1)
    assert set(n_labels.tolist()) == {1, 2, 3}
    assert (n_labels == 1).sum() == 60  # 10 single-class clips per 16
    assert not (t[:, SILENCE] & (n_labels > 1)).any()  # silence is never mixed
    silent = t[:, SILENCE]
    assert float(np.abs(w[silent]).max()) < 1e-3
    rms = np.sqrt((w[~silent].astype(np.float64) ** 2).mean(1))
    assert rms.min() > 1e-4 and rms.max() / rms.min() > 10  # varied levels
    # Same class, different clips: different audio (random frequencies / onsets).
    sine = np.nonzero(t[:, 501] & (n_labels == 1))[0]
    assert not np.allclose(w[sine[0]], w[sine[1]])


def test_toy_classes_are_true_audioset_entries(shared_dir):
    with open(shared_dir / "audioset" / "class_labels_indices.csv", newline="") as f:
        rows = {int(r["index"]): (r["mid"], r["display_name"]) for r in csv.DictReader(f)}
    for idx, mid, name in TOY_CLASSES:
        assert rows[idx] == (mid, name)
    from audiobench.data.vocab import load_vocabulary

    assert load_vocabulary(shared_dir / "audioset" / "class_labels_indices.csv").hash == AUDIOSET_VOCAB_HASH


def test_hdf5_bytes_are_deterministic(tmp_path):
    a = write_toy_shard(tmp_path / "a.h5", n_clips=6, sample_rate=8000, clip_seconds=0.5)
    b = write_toy_shard(tmp_path / "sub_b.h5", n_clips=6, sample_rate=8000, clip_seconds=0.5)
    assert sha256_file(a) == sha256_file(b)


def test_committed_manifest_matches_generated_shard():
    committed = json.loads((REPO / "data_manifests" / "toy.json").read_text())
    with open_dataset() as ds:  # generates AUDIOBENCH_HOME/toy/toy.h5 on first use
        shard = ds.paths[0]
        assert ds.name == "toy" and len(ds) == 96 and ds.sample_rate == 16000 and ds.clip_seconds == 10.0
        assert ds.manifest_path == REPO / "data_manifests" / "toy.json"
        assert ds.clip_list_hash == committed["clip_list_hash"]
        assert ds.vocab_hash == AUDIOSET_VOCAB_HASH == committed["vocab_hash"]
    built = build_toy_manifest(shard).to_dict()
    assert built == committed  # sha256 included: same bytes as the reference build
    assert committed["vocabulary"]["size"] == 527 and len(committed["vocabulary"]["entries"]) == 10


def test_toy_by_name_and_partial_vocabulary_names():
    with open_dataset("toy") as ds:
        voc = ds.vocab
        assert voc.size == 527
        assert voc.name_of(501) == "Sine wave"
        if voc.partial:
            assert voc.name_of(0) == "class 0"
        b = next(iter(ds.batches(8, limit=8)))
        assert b.waveform.shape == (8, 160000) and b.clip_ids[0] == "toy-s0-0000"


def test_toy_vocabulary_partial():
    v = toy_vocabulary()
    assert v.partial and v.hash == AUDIOSET_VOCAB_HASH
    assert v.index_of("/m/0chx_") == 520 and v.index_of("white noise") == 520
    from audiobench.errors import DataError

    with pytest.raises(DataError, match=r"unknown label 'Hammer'.*partial vocabulary"):
        v.index_of("Hammer")
