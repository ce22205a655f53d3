"""Packing audio into shards: formats and rates, label CSV styles, bad inputs, manifests, real clips."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import soundfile as sf

from audiobench.data import DataError, load_vocabulary, open_dataset
from audiobench.data.pack import pack, read_labels
from audiobench.data.toy import toy_vocabulary
from audiobench.data.verify import verify

SR = 16000
CLIP_S = 2.0
N = int(SR * CLIP_S)


def _sine(sr, seconds, f=440.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return amp * np.sin(2 * np.pi * f * t)


def _expected(seconds, amp=0.5, f=440.0):
    x = np.zeros(N)
    k = min(N, int(SR * seconds))
    x[:k] = _sine(SR, seconds, f, amp)[:k]
    return x


@pytest.fixture()
def audio_dir(tmp_path):
    d = tmp_path / "audio"
    d.mkdir()
    sf.write(d / "f32_16k.wav", _sine(16000, 1.5).astype(np.float32), 16000, subtype="FLOAT")  # padded
    sf.write(d / "i16_44k.wav", _sine(44100, 3.0), 44100, subtype="PCM_16")  # trimmed
    st = np.stack([_sine(22050, 2.0, amp=0.6), _sine(22050, 2.0, amp=0.2)], axis=1)
    sf.write(d / "stereo_22k.wav", st, 22050, subtype="PCM_16")  # mono = mean = 0.4 sine
    sf.write(d / "mono_48k.flac", _sine(48000, 2.5, f=1000.0), 48000, subtype="PCM_24")
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "labels", "source"])
        w.writerow(["f32_16k.wav", "Sine wave", "generated"])
        w.writerow(["i16_44k.wav", "Sine wave;/m/0chx_", "generated"])
        w.writerow(["stereo_22k.wav", "Beep, bleep;Pink noise", "generated"])
        w.writerow(["mono_48k.flac", "sine wave", "generated"])  # case-insensitive name
    return d


def test_round_trip_formats_and_rates(audio_dir, tmp_path):
    voc = toy_vocabulary()
    out = tmp_path / "out" / "s.h5"
    res = pack(audio_dir, audio_dir / "labels.csv", out, sample_rate=SR, clip_seconds=CLIP_S, vocab=voc, manifest=tmp_path / "out" / "m.json")
    assert res.n_clips == 4 and res.skipped == [] and res.num_samples == N
    summary = verify(tmp_path / "out" / "m.json")
    assert summary["n_clips"] == 4 and summary["sha256_checked"]
    with open_dataset(tmp_path / "out" / "m.json") as ds:
        assert ds.clip_ids == ["f32_16k.wav", "i16_44k.wav", "stereo_22k.wav", "mono_48k.flac"]
        assert ds.sample_rate == SR and ds.num_samples == N
        tg = ds.targets()
        idx = lambda row: np.nonzero(tg[row])[0].tolist()  # noqa: E731
        assert idx(0) == [501] and idx(1) == [501, 520] and idx(2) == [481, 521] and idx(3) == [501]
        w = ds.read(0, 4).waveform.numpy()
    q = 1 / 32767
    # Same rate: exact up to int16 rounding, then zero padding.
    assert np.max(np.abs(w[0] - _expected(1.5))) <= q
    assert np.all(w[0, int(SR * 1.5):] == 0)
    # Resampled (44.1k, 22.05k stereo → mono, 48k FLAC): close to the ideal sine away from the edges.
    mid = slice(200, N - 200)
    assert np.max(np.abs(w[1, mid] - _expected(3.0)[mid])) < 5e-3
    assert np.max(np.abs(w[2, mid] - _expected(2.0, amp=0.4)[mid])) < 5e-3
    assert np.max(np.abs(w[3, mid] - _expected(2.5, f=1000.0)[mid])) < 5e-3


def test_pack_is_deterministic_and_atomic(audio_dir, tmp_path):
    voc = toy_vocabulary()
    r1 = pack(audio_dir, audio_dir / "labels.csv", tmp_path / "a.h5", sample_rate=SR, clip_seconds=CLIP_S, vocab=voc)
    r2 = pack(audio_dir, audio_dir / "labels.csv", tmp_path / "b.h5", sample_rate=SR, clip_seconds=CLIP_S, vocab=voc)
    assert r1.sha256 == r2.sha256
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["a.h5", "b.h5"]  # no temp files


def test_unknown_label_stops_before_writing(audio_dir, tmp_path):
    with open(audio_dir / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["f32_16k.wav", "Sine wav", "dup"])  # listed twice
    rows = (audio_dir / "labels.csv").read_text().replace("Pink noise", "Pink noize")
    (audio_dir / "labels.csv").write_text(rows)
    out = tmp_path / "o" / "x.h5"
    out.parent.mkdir()
    with pytest.raises(DataError) as ei:
        pack(audio_dir, audio_dir / "labels.csv", out, sample_rate=SR, clip_seconds=CLIP_S, vocab=toy_vocabulary())
    msg = str(ei.value)
    assert "nothing written" in msg and "stereo_22k.wav" in msg and "'Pink noize'" in msg and "Pink noise" in msg
    assert "listed twice" in msg and "\n" not in msg
    assert list(out.parent.iterdir()) == []


def test_undecodable_file_and_skip_bad(audio_dir, tmp_path):
    (audio_dir / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with open(audio_dir / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["broken.wav", "White noise", "x"])
    out = tmp_path / "x.h5"
    with pytest.raises(DataError, match=r"nothing written: 1 problem\(s\): broken\.wav: .*cannot be decoded"):
        pack(audio_dir, audio_dir / "labels.csv", out, sample_rate=SR, clip_seconds=CLIP_S, vocab=toy_vocabulary())
    assert not out.exists()
    # Missing files are found before any decoding.
    with open(audio_dir / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["absent.wav", "White noise", "x"])
    with pytest.raises(DataError, match="absent.wav: not found"):
        pack(audio_dir, audio_dir / "labels.csv", out, sample_rate=SR, clip_seconds=CLIP_S, vocab=toy_vocabulary())
    res = pack(audio_dir, audio_dir / "labels.csv", out, sample_rate=SR, clip_seconds=CLIP_S, vocab=toy_vocabulary(), skip_bad=True)
    assert res.n_clips == 4 and sorted(n for n, _ in res.skipped) == ["absent.wav", "broken.wav"]
    with open_dataset(out) as ds:
        assert "broken.wav" not in ds.clip_ids and len(ds) == 4


def test_segment_csv_matches_Y_prefixed_and_plain_names(tmp_path):
    d = tmp_path / "seg"
    d.mkdir()
    sf.write(d / "Yabc_DEF-123.wav", _sine(SR, 1.0), SR)
    sf.write(d / "-xyz_789AB.flac", _sine(SR, 1.0), SR)
    (d / "segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:25 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'abc_DEF-123, 30.000, 40.000, "/m/01v_m0,/m/0chx_"\n'
        '-xyz_789AB, 0.000, 10.000, "/m/028v0c"\n'
        'unused_0001, 0.000, 10.000, "/m/0cj0r"\n'
    )
    items, problems = read_labels(d / "segments.csv", d)
    assert problems == []
    assert [(i.name, i.labels) for i in items] == [("-xyz_789AB.flac", ["/m/028v0c"]), ("Yabc_DEF-123.wav", ["/m/01v_m0", "/m/0chx_"])]
    sf.write(d / "Ynot_listed.wav", _sine(SR, 1.0), SR)
    with pytest.raises(DataError, match="Ynot_listed.wav: no segment"):
        pack(d, d / "segments.csv", tmp_path / "s.h5", sample_rate=SR, clip_seconds=1.0, vocab=toy_vocabulary())
    res = pack(d, d / "segments.csv", tmp_path / "s.h5", sample_rate=SR, clip_seconds=1.0, vocab=toy_vocabulary(), skip_bad=True)
    assert res.n_clips == 2


def test_manifest_update_adds_shards_and_refuses_outside_root(audio_dir, tmp_path):
    root = tmp_path / "root"
    voc = toy_vocabulary()
    kw = dict(sample_rate=SR, clip_seconds=CLIP_S, vocab=voc, manifest=root / "ds.json")
    pack(audio_dir, audio_dir / "labels.csv", root / "shards" / "a.h5", **kw)
    # A second shard (another folder) appended to the same manifest.
    sub = tmp_path / "more"
    sub.mkdir()
    sf.write(sub / "quiet.wav", np.zeros(SR), SR)
    (sub / "labels.csv").write_text("file,labels\nquiet.wav,Silence\n")
    pack(sub, sub / "labels.csv", root / "shards" / "b.h5", **kw)
    with open_dataset(root / "ds.json") as ds:
        assert len(ds) == 5 and ds.name == "ds"
        assert [s["path"] for s in ds.describe()["shards"]] == ["shards/a.h5", "shards/b.h5"]
        assert ds.targets()[4, 500]
    # Re-packing a shard is refused without overwrite, and with it replaces its entry rather than adding one.
    with pytest.raises(DataError, match=r"a\.h5 exists; pass --overwrite"):
        pack(audio_dir, audio_dir / "labels.csv", root / "shards" / "a.h5", **kw)
    pack(audio_dir, audio_dir / "labels.csv", root / "shards" / "a.h5", overwrite=True, **kw)
    assert len(open_dataset(root / "ds.json")) == 5
    assert verify(root / "ds.json")["n_clips"] == 5
    # The same clip ids in a second shard would make per-clip results ambiguous.
    with pytest.raises(DataError, match="clip id 'f32_16k.wav' .* already in another shard"):
        pack(audio_dir, audio_dir / "labels.csv", root / "shards" / "dup.h5", **kw)
    with pytest.raises(DataError, match="outside the data root"):
        pack(audio_dir, audio_dir / "labels.csv", tmp_path / "elsewhere.h5", **kw)
    with pytest.raises(DataError, match="16000 Hz"):
        pack(audio_dir, audio_dir / "labels.csv", root / "c.h5", **{**kw, "sample_rate": 8000})


def test_pack_real_shared_clips(shared_dir, tmp_path):
    clips = shared_dir / "clips"
    voc = load_vocabulary(shared_dir / "audioset" / "class_labels_indices.csv")
    res = pack(clips, clips / "labels.csv", tmp_path / "clips.h5", sample_rate=32000, clip_seconds=10.0, vocab=voc)
    assert res.n_clips == 20 and res.skipped == []
    with open(clips / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open_dataset(tmp_path / "clips.h5", vocab=voc) as ds:
        assert ds.sample_rate == 32000 and ds.num_samples == 320000 and len(ds) == 20
        assert ds.clip_ids == [r["file"] for r in rows]
        tg = ds.targets()
        assert tg.shape == (20, 527)
        for r, t in zip(rows, tg):
            assert sorted(voc.name_of(i) for i in np.nonzero(t)[0]) == sorted(r["labels"].split(";"))
        k = ds.clip_ids.index("Y--BfvyPmVMo.wav")
        assert tg[k, 419] and voc.name_of(419) == "Hammer" and tg[k].sum() == 1
        w = ds.read(0, 20).waveform
        assert w.shape == (20, 320000)
        peak = w.abs().amax(dim=1)
        assert bool((peak > 0.01).all())  # every clip decoded (mp3 included), none silent
        # Short clips (the sheep mp3 is 0.9 s) are zero-padded at the end.
        assert float(w[ds.clip_ids.index("cc0_sheep.mp3"), 32000:].abs().max()) == 0.0
        # The Hammer clip is stored at 16 kHz float: after 16→32 kHz it keeps its energy.
        src, sr = sf.read(clips / "Y--BfvyPmVMo.wav", dtype="float32")
        assert sr == 16000
        assert float(w[k].pow(2).mean()) == pytest.approx(float(np.mean(src**2)), rel=0.02)


def test_pack_shared_clip_from_google_segments(shared_dir, tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    os.symlink(shared_dir / "clips" / "Y--BfvyPmVMo.wav", d / "Y--BfvyPmVMo.wav")
    voc = load_vocabulary(shared_dir / "audioset" / "class_labels_indices.csv")
    res = pack(d, shared_dir / "audioset" / "eval_segments.csv", tmp_path / "e.h5", sample_rate=32000, clip_seconds=10.0, vocab=voc)
    assert res.n_clips == 1
    with open_dataset(tmp_path / "e.h5", vocab=voc) as ds:
        assert np.nonzero(ds.targets()[0])[0].tolist() == [419]
