"""``verify`` and ``info``: corrupted, truncated and mismatched shards are caught and named."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from audiobench.data import DataError, Manifest
from audiobench.data.manifest import ShardEntry
from audiobench.data.shards import clip_list_hash, sha256_file
from audiobench.data.toy import toy_vocabulary
from audiobench.data.verify import info, verify
from conftest import write_tiny_shard


def _manifest(tmp_path, shard):
    voc = toy_vocabulary()
    m = Manifest(
        name="m",
        sample_rate=shard.sample_rate,
        clip_seconds=shard.waveform_int16.shape[1] / shard.sample_rate,
        num_samples=shard.waveform_int16.shape[1],
        n_clips=len(shard.clip_ids),
        clip_list_hash=clip_list_hash(shard.clip_ids),
        vocab_hash=voc.hash,
        vocabulary=voc.to_manifest(),
        shards=[ShardEntry(os.path.relpath(shard.path, tmp_path), len(shard.clip_ids), sha256_file(shard.path))],
    )
    return m.save(tmp_path / "m.json")


def test_verify_ok_summary(tmp_path):
    shard = write_tiny_shard(tmp_path / "s.h5")
    mpath = _manifest(tmp_path, shard)
    s = verify(mpath)
    assert s["ok"] and s["n_clips"] == 12 and s["sha256_checked"] == [str(tmp_path / "s.h5")]
    assert s["clip_list_hash"] == clip_list_hash(shard.clip_ids)
    assert s["peak"] == pytest.approx(1.0)
    s2 = verify(shard.path)  # bare shard: no recorded sha256 to check
    assert s2["sha256_checked"] == [] and s2["shards"][0]["sha256"] == sha256_file(shard.path)


def test_verify_catches_truncated_shard(tmp_path):
    shard = write_tiny_shard(tmp_path / "s.h5")
    mpath = _manifest(tmp_path, shard)
    data = shard.path.read_bytes()
    shard.path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(DataError, match=r"s\.h5.*sha256 .* does not match"):
        verify(mpath)
    with pytest.raises(DataError, match=r"s\.h5") as ei:
        verify(shard.path)
    assert "\n" not in str(ei.value)


def test_verify_catches_corrupted_bytes(tmp_path):
    shard = write_tiny_shard(tmp_path / "s.h5")
    mpath = _manifest(tmp_path, shard)
    data = bytearray(shard.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match manifest"):
        verify(mpath)


def test_verify_catches_wrong_label_dimension(tmp_path):
    shard = write_tiny_shard(tmp_path / "s.h5", n_classes=526)
    with pytest.raises(DataError, match="label dimension 526 != vocabulary size 527"):
        verify(shard.path)


def test_verify_catches_nan_in_float_shard(tmp_path):
    wav = np.zeros((3, 1600), np.float32)
    wav[2, 7] = np.nan
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.attrs["sample_rate"] = 16000
        f["audio_name"] = np.array([b"a", b"b", b"c"])
        f["waveform"] = wav
        f["target"] = np.zeros((3, 527), bool)
    with pytest.raises(DataError, match=r"clip 'c' \(#2\) has NaN"):
        verify(tmp_path / "f.h5")


def test_verify_catches_manifest_mismatches(tmp_path):
    shard = write_tiny_shard(tmp_path / "s.h5")
    mpath = _manifest(tmp_path, shard)
    d = json.loads(mpath.read_text())
    d["clip_list_hash"] = "0" * 64
    mpath.write_text(json.dumps(d))
    with pytest.raises(DataError, match="clip_list_hash"):
        verify(mpath)
    d = json.loads(mpath.read_text())
    d["vocab_hash"] = "1" * 64
    mpath.write_text(json.dumps(d))
    with pytest.raises(DataError, match="vocab_hash"):
        verify(mpath)
    os.unlink(shard.path)
    with pytest.raises(DataError, match=r"s\.h5 .*does not exist"):
        verify(mpath)


def test_info_counts(tiny_shard):
    d = info(tiny_shard.path, top=5)
    counts = tiny_shard.targets.sum(0)
    assert d["n_clips"] == 12 and d["duration_seconds"] == pytest.approx(12 * 0.25)
    assert d["classes_with_positives"] == 3
    assert [c["index"] for c in d["top_classes"]] == sorted(range(3), key=lambda i: (-counts[i], i))
    assert all(c["clips"] == counts[c["index"]] for c in d["top_classes"])
    assert d["waveform_dtype"] == "int16"
