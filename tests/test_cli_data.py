"""``audiobench data …`` through click's CliRunner: outputs, exit codes, one-line errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from audiobench.cli import cli
from conftest import write_tiny_shard


def _run(*args):
    res = CliRunner().invoke(cli, list(map(str, args)))
    return res


def _assert_one_line_error(res, *needles):
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    err = res.stderr.strip()
    assert "Traceback" not in res.output and len(err.splitlines()) == 1, err
    assert err.startswith("Error: ")
    for n in needles:
        assert n in err, err


def test_list_datasets_has_toy():
    res = _run("list", "datasets")
    assert res.exit_code == 0
    assert "toy" in [line.split("\t")[0] for line in res.stdout.splitlines()]


def test_toy_info_verify():
    res = _run("data", "toy")
    assert res.exit_code == 0, res.output
    assert "96 clips" in res.stdout and "matches the manifest" in res.stdout
    res = _run("data", "info")
    assert res.exit_code == 0 and "clips         96" in res.stdout and "Sine wave" in res.stdout
    res = _run("data", "verify", "toy")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("OK toy: 96 clips") and "sha256 checked" in res.stdout


def test_info_json(tiny_shard):
    import json

    res = _run("data", "info", tiny_shard.path, "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["n_clips"] == 12


def test_missing_file_is_one_line_error(tmp_path):
    _assert_one_line_error(_run("data", "verify", tmp_path / "nope.h5"), "nope.h5", "does not exist")
    _assert_one_line_error(_run("data", "info", tmp_path / "nope.json"), "nope.json")
    _assert_one_line_error(_run("data", "verify", "no-such-dataset"), "unknown dataset 'no-such-dataset'")


def test_bad_shard_is_one_line_error(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    _assert_one_line_error(_run("data", "verify", tmp_path / "bad.h5"), "bad.h5", "not a readable HDF5 file")
    shard = write_tiny_shard(tmp_path / "dim.h5", n_classes=10)
    _assert_one_line_error(_run("data", "info", shard.path), "dim.h5", "label dimension 10")
    data = write_tiny_shard(tmp_path / "cut.h5").path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[:-4000])
    _assert_one_line_error(_run("data", "verify", tmp_path / "cut.h5"), "cut.h5")


@pytest.fixture()
def small_audio(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    sf.write(d / "one.wav", 0.3 * np.sin(np.arange(8000) / 8000 * 2 * np.pi * 300), 8000)
    sf.write(d / "two.flac", 0.1 * np.ones((12000, 2)), 12000)
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "labels"])
        w.writerow(["one.wav", "Sine wave"])
        w.writerow(["two.flac", "Pulse;/m/0chx_"])
    return d


def test_pack_verify_info_via_cli(small_audio, tmp_path):
    out, man = tmp_path / "o" / "s.h5", tmp_path / "o" / "s.json"
    res = _run("data", "pack", "--audio-dir", small_audio, "--labels", small_audio / "labels.csv", "--out", out,
               "--sample-rate", 8000, "--clip-seconds", 1.5, "--manifest", man)
    assert res.exit_code == 0, res.output
    assert "2 clips × 1.5 s at 8000 Hz" in res.stdout and "sha256 " in res.stdout
    res = _run("data", "verify", man)
    assert res.exit_code == 0 and "OK" in res.stdout and "sha256 checked" in res.stdout
    res = _run("data", "info", man)
    assert res.exit_code == 0 and "clips         2" in res.stdout and "White noise" in res.stdout


def test_pack_unknown_label_is_one_line_error_and_writes_nothing(small_audio, tmp_path):
    (small_audio / "labels.csv").write_text("file,labels\none.wav,Sine wave\ntwo.flac,Pulse;Not A Class\n")
    out = tmp_path / "o.h5"
    res = _run("data", "pack", "--audio-dir", small_audio, "--labels", small_audio / "labels.csv", "--out", out)
    _assert_one_line_error(res, "two.flac", "unknown label 'Not A Class'", "--skip-bad")
    assert not out.exists()
    res = _run("data", "pack", "--audio-dir", small_audio, "--labels", small_audio / "labels.csv", "--out", out, "--skip-bad")
    assert res.exit_code == 0 and out.exists()
    assert "1 clips" in res.stdout and "skipped two.flac" in res.stderr


def test_pack_with_vocab_caches_it(shared_dir, small_audio, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUDIOBENCH_VOCAB", raising=False)
    (small_audio / "labels.csv").write_text("file,labels\none.wav,Hammer\n")
    res = _run("data", "pack", "--audio-dir", small_audio, "--labels", small_audio / "labels.csv", "--out", tmp_path / "h.h5")
    _assert_one_line_error(res, "unknown label 'Hammer'", "--vocab")
    res = _run("data", "pack", "--audio-dir", small_audio, "--labels", small_audio / "labels.csv", "--out", tmp_path / "h.h5",
               "--vocab", shared_dir / "audioset" / "class_labels_indices.csv", "--sample-rate", 8000, "--clip-seconds", 1)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "home" / "vocab" / "class_labels_indices.csv").exists()
    res = _run("data", "info", tmp_path / "h.h5")  # the cached vocabulary names the class
    assert res.exit_code == 0 and "Hammer" in res.stdout


def test_pack_missing_audio_dir(tmp_path):
    res = _run("data", "pack", "--audio-dir", tmp_path / "nope", "--labels", tmp_path / "l.csv", "--out", tmp_path / "o.h5")
    _assert_one_line_error(res, "l.csv")
