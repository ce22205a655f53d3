"""Reading shards and manifests: batch contents, order, shard boundaries, limits, and read errors."""

from __future__ import annotations

import json
import os
import threading

import h5py
import numpy as np
import pytest
import torch

from audiobench.data import Batch, DataError, Manifest, open_dataset
from audiobench.data.manifest import ShardEntry
from audiobench.data.shards import clip_list_hash, sha256_file
from audiobench.data.toy import toy_vocabulary
from audiobench.errors import ConfigError
from conftest import write_tiny_shard


def _manifest_for(paths, root, name="two", **kw):
    voc = toy_vocabulary()
    ids = []
    shards = []
    for p in paths:
        with h5py.File(p, "r") as f:
            ids += [x.decode() for x in f["audio_name"][()]]
            n, s = f["waveform"].shape
            sr = int(f.attrs["sample_rate"])
        shards.append(ShardEntry(path=os.path.relpath(p, root), n_clips=n, sha256=sha256_file(p)))
    m = Manifest(
        name=name,
        sample_rate=sr,
        clip_seconds=s / sr,
        num_samples=s,
        n_clips=len(ids),
        clip_list_hash=clip_list_hash(ids),
        vocab_hash=voc.hash,
        vocabulary=voc.to_manifest(),
        shards=shards,
    )
    for k, v in kw.items():
        setattr(m, k, v)
    return m


@pytest.fixture()
def two_shards(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    a = write_tiny_shard(tmp_path / "data" / "a.h5", n_clips=7, seed=1)
    b = write_tiny_shard(tmp_path / "data" / "sub" / "b.h5", n_clips=5, seed=2)
    m = _manifest_for([a.path, b.path], tmp_path / "data")
    mpath = m.save(tmp_path / "data" / "two.json")
    return a, b, mpath


def test_read_equals_direct_int16_division(tiny_shard):
    with open_dataset(tiny_shard.path) as ds:
        assert len(ds) == 12 and ds.sample_rate == 16000 and ds.num_samples == 4000
        assert ds.clip_ids == tiny_shard.clip_ids
        b = ds.read(0, 12)
        assert isinstance(b, Batch) and b.waveform.dtype == torch.float32 and b.targets.dtype == torch.bool
        expected = torch.from_numpy(tiny_shard.waveform_int16.astype(np.float32)) / 32767.0
        assert torch.equal(b.waveform, expected)
        assert b.waveform[0, :5].tolist() == [1.0, -1.0, 0.0, pytest.approx(1 / 32767), pytest.approx(-1 / 32767)]
        assert np.array_equal(b.targets.numpy(), tiny_shard.targets)
        assert np.array_equal(ds.targets(), tiny_shard.targets)
        assert not ds.targets()[:, tiny_shard.empty_class].any()


def test_batches_cover_in_order_and_equal_reads(tiny_shard):
    with open_dataset(tiny_shard.path) as ds:
        full = ds.read(0, len(ds))
        for prefetch in (0, 2):
            got = list(ds.batches(5, prefetch=prefetch))
            assert [len(b) for b in got] == [5, 5, 2]
            assert [b.start for b in got] == [0, 5, 10]
            assert sum((b.clip_ids for b in got), []) == tiny_shard.clip_ids
            assert torch.equal(torch.cat([b.waveform for b in got]), full.waveform)
            assert torch.equal(torch.cat([b.targets for b in got]), full.targets)


def test_limit_start_stop(tiny_shard):
    with open_dataset(tiny_shard.path) as ds:
        assert [b.clip_ids for b in ds.batches(4, limit=6)] == [tiny_shard.clip_ids[:4], tiny_shard.clip_ids[4:6]]
        got = list(ds.batches(4, start=3, stop=9))
        assert [b.start for b in got] == [3, 7] and sum(len(b) for b in got) == 6
        assert list(ds.batches(4, limit=0)) == []
        assert len(ds.batches(5)) == 3
        with pytest.raises(ConfigError):
            ds.batches(0)
        with pytest.raises(ConfigError):
            ds.read(5, 13)


def test_batches_span_shard_boundaries(two_shards):
    a, b, mpath = two_shards
    with open_dataset(mpath) as ds:
        assert len(ds) == 12 and ds.manifest_path == mpath
        assert ds.clip_ids == a.clip_ids + b.clip_ids
        wav = np.concatenate([a.waveform, b.waveform])
        tg = np.concatenate([a.targets, b.targets])
        got = list(ds.batches(5, prefetch=2))
        assert [len(x) for x in got] == [5, 5, 2]
        assert got[1].clip_ids == a.clip_ids[5:] + b.clip_ids[:3]  # spans a → b
        assert np.allclose(torch.cat([x.waveform for x in got]).numpy(), wav, atol=0)
        assert np.array_equal(torch.cat([x.targets for x in got]).numpy(), tg)
        one = ds.read(6, 8)
        assert one.clip_ids == [a.clip_ids[6], b.clip_ids[0]]
        d = ds.describe()
        assert d["n_clips"] == 12 and d["clip_list_hash"] == clip_list_hash(ds.clip_ids)
        assert [s["path"] for s in d["shards"]] == ["a.h5", "sub/b.h5"]
        assert d["manifest_sha256"] == sha256_file(mpath)
        json.dumps(d)


def test_order_is_deterministic_across_opens(two_shards):
    _, _, mpath = two_shards
    runs = []
    for _ in range(2):
        with open_dataset(mpath) as ds:
            runs.append([(x.clip_ids, x.waveform.sum().item()) for x in ds.batches(3)])
    assert runs[0] == runs[1]


def test_buffers_are_recycled_only_when_released(two_shards):
    _, _, mpath = two_shards
    with open_dataset(mpath) as ds:
        expected = ds.read(0, len(ds)).waveform
        # Dropped batches: their buffers come back (few distinct storages for many batches).
        ptrs = [b.waveform.data_ptr() for b in ds.batches(2, prefetch=2)]
        assert len(ptrs) == 6 and len(set(ptrs)) < 6
        # Held views / numpy arrays / tensors keep their data: the pool never reuses them.
        views, arrays, whole = [], [], []
        for i, b in enumerate(ds.batches(2, prefetch=2)):
            (views, arrays, whole)[i % 3].append((b.start, b.waveform[1] if i % 3 == 0 else b.waveform.numpy() if i % 3 == 1 else b.waveform))
            del b
        for start, v in views:
            assert torch.equal(v, expected[start + 1])
        for start, a in arrays:
            assert np.array_equal(a, expected[start : start + 2].numpy())
        for start, w in whole:
            assert torch.equal(w, expected[start : start + 2])
        with pytest.raises(ValueError, match="out must be"):
            ds.read(0, 2, out=torch.empty(3, 4))


def test_early_break_stops_prefetch_thread(tiny_shard):
    with open_dataset(tiny_shard.path) as ds:
        it = ds.batches(1, prefetch=2)
        for i, _ in enumerate(it):
            if i == 1:
                break
        it.close()
        assert not any(t.name == "audiobench-prefetch" and t.is_alive() for t in threading.enumerate())


def test_producer_error_reaches_consumer(tiny_shard, monkeypatch):
    with open_dataset(tiny_shard.path) as ds:
        def boom(start, stop, out=None):
            raise DataError("shard x: boom")

        monkeypatch.setattr(ds, "read", boom)
        with pytest.raises(DataError, match="boom"):
            list(ds.batches(4, prefetch=2))


def test_float32_shard(tmp_path):
    wav = np.linspace(-1, 1, 3 * 1000, dtype=np.float32).reshape(3, 1000)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.attrs["sample_rate"] = 8000
        f["audio_name"] = np.array([b"a", b"b", b"c"])
        f["waveform"] = wav
        f["target"] = np.zeros((3, 527), bool)
    with open_dataset(tmp_path / "f.h5") as ds:
        assert torch.equal(ds.read(0, 3).waveform, torch.from_numpy(wav))
        assert ds.clip_seconds == pytest.approx(1000 / 8000)


def test_missing_sample_rate_warns_and_assumes_32k(tmp_path):
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["audio_name"] = np.array([b"Yx.wav"])
        f["waveform"] = np.zeros((1, 3200), np.int16)
        f["target"] = np.zeros((1, 527), bool)
    with pytest.warns(UserWarning, match="32000"):
        ds = open_dataset(tmp_path / "p.h5")
    assert ds.sample_rate == 32000
    ds.close()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.__delitem__("target"), "'target' is missing"),
        (lambda f: f.__delitem__("audio_name"), "'audio_name' is missing"),
        (lambda f: (f.__delitem__("waveform"), f.create_dataset("waveform", data=np.zeros((12, 4000), np.float64))), "dtype is float64"),
        (lambda f: (f.__delitem__("target"), f.create_dataset("target", data=np.zeros((12, 527), np.float32))), "'target' dtype"),
        (lambda f: (f.__delitem__("target"), f.create_dataset("target", data=np.zeros((12, 10), bool))), "label dimension 10 != vocabulary size 527"),
        (lambda f: (f.__delitem__("target"), f.create_dataset("target", data=np.zeros((11, 527), bool))), "clip counts disagree"),
    ],
)
def test_bad_shard_errors_name_the_file(tmp_path, mutate, message):
    shard = write_tiny_shard(tmp_path / "bad.h5")
    with h5py.File(shard.path, "a") as f:
        mutate(f)
    with pytest.raises(DataError, match=message) as ei:
        open_dataset(shard.path)
    assert str(shard.path) in str(ei.value) and "\n" not in str(ei.value)


def test_zero_clips_not_hdf5_truncated_missing(tmp_path, tiny_shard):
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f["audio_name"] = np.zeros((0,), "S4")
        f["waveform"] = np.zeros((0, 10), np.int16)
        f["target"] = np.zeros((0, 527), bool)
    with pytest.raises(DataError, match="zero clips"):
        open_dataset(tmp_path / "z.h5")
    (tmp_path / "t.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="not a readable HDF5"):
        open_dataset(tmp_path / "t.h5")
    data = tiny_shard.path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.h5"):
        open_dataset(tmp_path / "cut.h5")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing.h5")


def test_manifest_refuses_escaping_paths(tmp_path, tiny_shard):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.h5"
    outside.write_bytes(tiny_shard.path.read_bytes())
    m = _manifest_for([outside], tmp_path).to_dict()
    for bad in ("../outside.h5", str(outside), "a/../../outside.h5"):
        m["shards"][0]["path"] = bad
        (root / "m.json").write_text(json.dumps(m))
        with pytest.raises(DataError, match="relative to the data root"):
            open_dataset(root / "m.json")
    os.symlink(outside, root / "link.h5")
    m["shards"][0]["path"] = "link.h5"
    (root / "m.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="outside the data root"):
        open_dataset(root / "m.json")


def test_manifest_clip_count_checked_on_open(two_shards):
    _, _, mpath = two_shards
    d = json.loads(mpath.read_text())
    d["shards"][0]["n_clips"] = 8
    d["n_clips"] = 13
    mpath.write_text(json.dumps(d))
    with pytest.raises(DataError, match="has 7 clips, manifest .* says 8"):
        open_dataset(mpath)


def test_data_root_argument_and_env(two_shards, tmp_path, monkeypatch):
    _, _, mpath = two_shards
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "m.json").write_text(mpath.read_text())
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(moved / "m.json")
    assert len(open_dataset(moved / "m.json", data_root=mpath.parent)) == 12
    monkeypatch.setenv("AUDIOBENCH_DATA", str(mpath.parent))
    assert len(open_dataset(moved / "m.json")) == 12


def test_manifest_by_name(two_shards, monkeypatch):
    from audiobench.data import DATASETS

    _, _, mpath = two_shards
    monkeypatch.setenv("AUDIOBENCH_MANIFESTS", str(mpath.parent))
    assert dict(DATASETS.items())["two"] == mpath
    assert "toy" in dict(DATASETS.items())
    with open_dataset("two") as ds:
        assert ds.name == "two" and len(ds) == 12
    from audiobench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'two'"):
        open_dataset("twoo")


def test_json_datafile(tmp_path, monkeypatch):
    import soundfile as sf

    sr = 8000
    t = np.arange(sr // 2) / sr
    sf.write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sr, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", 0.25 * np.ones(sr), sr, subtype="FLOAT")
    doc = {"data": [{"wav": "a.wav", "labels": "/m/01v_m0"}, {"wav": "b.wav", "labels": "/m/028v0c,/m/0chx_"}]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    with open_dataset(tmp_path / "d.json", sample_rate=8000, clip_seconds=1.0) as ds:
        assert ds.clip_ids == ["a.wav", "b.wav"] and ds.num_samples == 8000
        assert sorted(np.nonzero(ds.targets()[1])[0].tolist()) == [500, 520]
        b = ds.read(0, 2)
        assert b.waveform.shape == (2, 8000)
        assert np.allclose(b.waveform[0, : sr // 2].numpy(), 0.5 * np.sin(2 * np.pi * 440 * t), atol=1e-6)
        assert float(b.waveform[0, sr // 2 :].abs().max()) == 0.0  # padded
        assert ds.describe()["manifest_sha256"] == sha256_file(tmp_path / "d.json")
    doc["data"][1]["labels"] = "/m/nonexistent"
    (tmp_path / "e.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="unknown label '/m/nonexistent'"):
        open_dataset(tmp_path / "e.json")
