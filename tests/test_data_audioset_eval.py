"""``data_manifests/audioset-eval.json`` (issue 15 item 12): built from Google's segment list by
scripts/make_audioset_eval_manifest.py, usable by name, and one clear line when the shard is absent."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from audiobench.cli import cli
from audiobench.data import DATASETS, DataError, open_dataset
from audiobench.data.manifest import load_manifest
from audiobench.data.verify import verify_recorded_data

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data_manifests" / "audioset-eval.json"


def _script():
    spec = importlib.util.spec_from_file_location("make_audioset_eval_manifest", REPO / "scripts" / "make_audioset_eval_manifest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_manifest_describes_the_panns_eval_layout():
    m = load_manifest(MANIFEST)
    assert "audioset-eval" in DATASETS and m.name == "audioset-eval"
    assert m.n_clips == 20371 and m.sample_rate == 32000 and m.num_samples == 320000
    assert [(s.path, s.n_clips, s.sha256) for s in m.shards] == [("eval.h5", 20371, None)]  # no audio, no pin
    assert m.labels_hash and not m.pinned
    assert m.vocabulary == {"size": 527, "hash": m.vocab_hash, "entries": []}  # no AudioSet names shipped
    assert len(MANIFEST.read_bytes()) < 4000


def test_shipped_manifest_is_what_the_script_builds_from_the_official_list(shared_dir):
    built = _script().build_manifest(shared_dir / "audioset" / "eval_segments.csv",
                                     shared_dir / "audioset" / "class_labels_indices.csv")
    assert built.dumps() == MANIFEST.read_text()


def test_missing_shard_is_one_line_saying_where_and_how(tmp_path):
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--data", "audioset-eval", "--data-root", str(tmp_path),
                                   "--limit", "2", "--no-trust-checks", "--quiet", "--out", str(tmp_path / "results")])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert f"shard {tmp_path / 'eval.h5'} does not exist" in line and f"under the data root {tmp_path}" in line
    assert "audiobench data pack" in line and "eval_segments.csv" in line and "Traceback" not in res.output
    assert not list((tmp_path / "results").glob("*/run.json"))  # refused before any run folder


@pytest.mark.slow
def test_a_scaled_down_eval_set_packs_opens_runs_and_reverifies(shared_dir, tmp_path, monkeypatch):
    """The same path at toy scale: a 3-segment list, 1 s clips at 16 kHz. The manifest built by
    the script accepts the shard `data pack` writes from the segment list, refuses other labels,
    and a run on it records the shard's sha256, which verify_recorded_data re-checks."""
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "home"))  # `data pack --vocab` caches AudioSet's CSV there
    vocab = shared_dir / "audioset" / "class_labels_indices.csv"
    rows = [line for line in (shared_dir / "audioset" / "eval_segments.csv").read_text().splitlines()
            if not line.startswith("#")][:3]
    segs = tmp_path / "eval_segments.csv"
    segs.write_text("# header\n# header\n# YTID, start_seconds, end_seconds, positive_labels\n" + "\n".join(rows) + "\n")
    m = _script().build_manifest(segs, vocab, name="mini-eval", sample_rate=16000, clip_seconds=1.0)
    mpath = m.save(tmp_path / "manifests" / "mini-eval.json")
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, row in enumerate(rows):
        sf.write(audio / f"Y{row.split(',')[0]}.wav", 0.1 * np.sin(np.arange(16000) * (0.05 + i / 50)), 16000)
    root = tmp_path / "data"
    res = CliRunner().invoke(cli, ["data", "pack", "--audio-dir", str(audio), "--labels", str(segs), "--vocab", str(vocab),
                                   "--sample-rate", "16000", "--clip-seconds", "1", "--out", str(root / "eval.h5")])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("AUDIOBENCH_DATA", str(root))
    with open_dataset(mpath) as ds:
        assert len(ds) == 3 and ds.clip_ids[0].startswith("Y") and ds.targets().any(axis=1).all()
    # other labels in the shard: refused (the labels hash is what pins an unpinned shard)
    bad = json.loads(mpath.read_text())
    bad["labels_hash"] = "0" * 64
    (tmp_path / "manifests" / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="labels_hash"):
        open_dataset(tmp_path / "manifests" / "bad.json")
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--data", str(mpath), "--limit", "2", "--batch-size", "2",
                                   "--bootstrap", "10", "--no-trust-checks", "--quiet", "--out", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    data = json.loads(next((tmp_path / "results").glob("*/run.json")).read_text())["data"]
    assert data["shards"][0]["sha256"] and data["shards"][0]["path"] == "eval.h5"
    assert data["manifest"] == os.path.abspath(mpath) and data["data_root"] == os.path.abspath(root)
    problems, checks = verify_recorded_data(data)
    assert problems == [], problems
