"""Any label vocabulary (issue 12 part 5, data side): a 10-class single-label set from the CC0
animal clips with its own vocabulary CSV, and the ESC-50 ``meta/esc50.csv`` layout with folds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from audiobench.cli import cli
from audiobench.data import DataError, load_vocabulary, open_dataset
from audiobench.data.pack import pack
from audiobench.data.shards import sha256_file
from audiobench.data.vocab import AUDIOSET_VOCAB_HASH, cached_vocabulary_path, mids_hash

ANIMALS = ["Cat", "Cattle, bovinae", "Dog", "Duck", "Frog", "Horse", "Owl", "Pig", "Chicken, rooster", "Sheep"]


@pytest.fixture()
def cc0(shared_dir):
    """(clips folder, [(file, label)]) of the ten CC0 animal MP3s."""
    clips = shared_dir / "clips"
    with open(clips / "labels.csv", newline="") as f:
        rows = [(r["file"], r["labels"]) for r in csv.DictReader(f) if r["file"].startswith("cc0_")]
    assert sorted(lab for _, lab in rows) == sorted(ANIMALS)
    return clips, rows


def _write_vocab(path, names):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        for i, n in enumerate(names):
            w.writerow([i, f"animal:{i}", n])
    return path


def test_ten_class_single_label_set_with_its_own_vocabulary(cc0, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "home"))
    clips, rows = cc0
    vocab_csv = _write_vocab(tmp_path / "animals.csv", ANIMALS)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,labels\n" + "".join(f'{f},"{lab}"\n' for f, lab in rows))
    out, man = tmp_path / "ds" / "animals.h5", tmp_path / "ds" / "animals.json"
    res = CliRunner().invoke(cli, ["data", "pack", "--audio-dir", str(clips), "--labels", str(labels), "--out", str(out),
                                   "--vocab", str(vocab_csv), "--sample-rate", "16000", "--clip-seconds", "1",
                                   "--manifest", str(man)])
    assert res.exit_code == 0, res.output
    assert "vocabulary custom, 10 classes" in res.stdout
    assert not cached_vocabulary_path().exists()  # a custom vocabulary never becomes the default one
    doc = json.loads(man.read_text())
    voc = load_vocabulary(vocab_csv)
    assert doc["vocab_hash"] == voc.hash == mids_hash([f"animal:{i}" for i in range(10)]) != AUDIOSET_VOCAB_HASH
    assert doc["vocabulary"]["source_sha256"] == sha256_file(vocab_csv)
    assert [e[2] for e in doc["vocabulary"]["entries"]] == ANIMALS  # embedded whole: the manifest stands alone
    with open_dataset(man) as ds:
        assert ds.vocab.size == 10 and ds.vocab.names == ANIMALS and not ds.vocab.partial
        tg = ds.targets()
        assert tg.shape == (10, 10) and (tg.sum(axis=1) == 1).all()  # single-label
        for (f, lab), row in zip(rows, tg):
            assert ds.vocab.name_of(int(np.argmax(row))) == lab
        assert ds.clip_ids == [f for f, _ in rows] and ds.sample_rate == 16000
    info = CliRunner().invoke(cli, ["data", "info", str(man)])
    assert info.exit_code == 0 and "single-label" in info.stdout and "custom, 10 classes" in info.stdout


def _esc50_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return path


def test_esc50_layout_with_folds_builds_its_vocabulary(cc0, tmp_path):
    clips, rows = cc0
    files = [f for f, _ in rows]
    categories = [f.split("_", 1)[1].rsplit(".", 1)[0] for f in files]  # cat, cow, ...
    meta = _esc50_csv(tmp_path / "esc50.csv",
                      [(f, 1 + i % 5, i, c, "False", f"src{i}", "A") for i, (f, c) in enumerate(zip(files, categories))])
    out = tmp_path / "folds12.h5"
    res = pack(clips, meta, out, sample_rate=16000, clip_seconds=1.0, folds=[1, 2])
    assert res.n_clips == 4  # folds 1 and 2: rows 0, 1, 5, 6
    voc = res.vocabulary
    assert voc.size == 10 and voc.names == categories  # from target/category over every fold
    with open_dataset(out, vocab=voc) as ds:
        assert ds.clip_ids == [files[i] for i in (0, 1, 5, 6)]
        assert [int(np.argmax(t)) for t in ds.targets()] == [0, 1, 5, 6]
    # another fold selection packs into the same classes (same vocabulary hash)
    assert pack(clips, meta, tmp_path / "fold3.h5", sample_rate=16000, clip_seconds=1.0, folds=[3]).vocabulary.hash == voc.hash
    # through the CLI, with a manifest that embeds the built vocabulary
    res = CliRunner().invoke(cli, ["data", "pack", "--audio-dir", str(clips), "--labels", str(meta), "--folds", "4,5",
                                   "--out", str(tmp_path / "m" / "f45.h5"), "--manifest", str(tmp_path / "m" / "esc.json"),
                                   "--sample-rate", "16000", "--clip-seconds", "1"])
    assert res.exit_code == 0, res.output
    with open_dataset(tmp_path / "m" / "esc.json") as ds:
        assert len(ds) == 4 and ds.vocab.hash == voc.hash and ds.vocab.name_of(3) == "duck"


def test_esc50_layout_problems(cc0, tmp_path):
    clips, rows = cc0
    f0, f1 = rows[0][0], rows[1][0]
    bad = _esc50_csv(tmp_path / "bad.csv", [(f0, 1, 0, "cat", "", "", ""), (f1, 1, 0, "cow", "", "", "")])
    with pytest.raises(DataError, match="target 0 is 'cat' and 'cow'"):
        pack(clips, bad, tmp_path / "x.h5", sample_rate=16000, clip_seconds=1.0)
    gap = _esc50_csv(tmp_path / "gap.csv", [(f0, 1, 0, "cat", "", "", ""), (f1, 1, 7, "cow", "", "", "")])
    with pytest.raises(DataError, match="0..n-1 without gaps"):
        pack(clips, gap, tmp_path / "x.h5", sample_rate=16000, clip_seconds=1.0)
    res = CliRunner().invoke(cli, ["data", "pack", "--audio-dir", str(clips), "--labels", str(clips / "labels.csv"),
                                   "--folds", "1", "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 1 and "--folds applies to ESC-50" in res.stderr
    assert not (tmp_path / "x.h5").exists()
