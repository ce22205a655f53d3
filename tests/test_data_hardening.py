"""Data-layer integrity beyond the hostile table: legit shards still open, the toy set ignores the
data root, provenance paths, the data re-hash for verify-run, refused packs destroy nothing."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from audiobench.cli import cli
from audiobench.data import DataError, open_dataset
from audiobench.data.pack import pack
from audiobench.data.shards import clip_list_hash, inspect_shard, labels_hash, sha256_file
from audiobench.data.verify import NOT_FOUND, verify, verify_recorded_data
from audiobench.data.vocab import toy_vocabulary
from audiobench.errors import AudiobenchError
from conftest import write_tiny_shard

REPO = Path(__file__).resolve().parents[1]


def _tiny_manifest(tmp_path, name="m"):
    from audiobench.data import Manifest
    from audiobench.data.manifest import ShardEntry

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shard = write_tiny_shard(root / "sub" / "s.h5")
    voc = toy_vocabulary()
    m = Manifest(name=name, sample_rate=16000, clip_seconds=0.25, num_samples=4000, n_clips=12,
                 clip_list_hash=clip_list_hash(shard.clip_ids), vocab_hash=voc.hash, vocabulary=voc.to_manifest(),
                 shards=[ShardEntry("sub/s.h5", 12, sha256_file(shard.path))])
    return m.save(root / f"{name}.json"), shard


# -- legit shards are not refused by the new checks ------------------------------------------------
def test_chunked_compressed_shard_opens(tmp_path):
    rng = np.random.default_rng(0)
    wav = rng.integers(-3000, 3000, size=(8, 3200), dtype=np.int16)
    with h5py.File(tmp_path / "gz.h5", "w") as f:
        f.attrs["sample_rate"] = np.int32(32000)  # PANNs writes an int32 attribute
        f.create_dataset("audio_name", data=np.array([f"Y{i:011d}.wav".encode() for i in range(8)], dtype="S20"),
                         chunks=(4,), compression="gzip")
        f.create_dataset("waveform", data=wav, chunks=(2, 3200), compression="gzip", shuffle=True)
        f.create_dataset("target", data=np.eye(8, 527, dtype=bool), chunks=(4, 527), compression="gzip")
    with open_dataset(tmp_path / "gz.h5") as ds:
        assert len(ds) == 8 and ds.sample_rate == 32000
        assert np.array_equal(ds.read(0, 8).waveform.numpy(), wav / np.float32(32767.0))


def test_panns_placeholder_rows_are_explained(tmp_path):
    # PANNs' pack_waveforms_to_hdf5 leaves rows with an empty name for audio files it did not find
    names = np.array([b"Ya.wav", b"", b"Yc.wav"], dtype="S20")
    with h5py.File(tmp_path / "eval.h5", "w") as f:
        f.attrs["sample_rate"] = 16000
        f["audio_name"], f["waveform"], f["target"] = names, np.zeros((3, 1600), np.int16), np.zeros((3, 527), bool)
    with pytest.raises(DataError, match=r"1 of 3 rows have an empty audio_name .*PANNs.*repack"):
        inspect_shard(tmp_path / "eval.h5")


def test_highly_compressed_data_is_refused(tmp_path):
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f.attrs["sample_rate"] = 16000
        f["audio_name"] = np.array([f"c{i}".encode() for i in range(64)])
        f.create_dataset("waveform", data=np.zeros((64, 160000), np.int16), chunks=(8, 160000), compression="gzip")
        f["target"] = np.zeros((64, 527), bool)
    with pytest.raises(DataError, match=r"'waveform' declares \d+ bytes but stores \d+ \(over 256:1\)"):
        inspect_shard(tmp_path / "z.h5")


def test_integral_float_rate_attribute_is_accepted(tmp_path):
    write_tiny_shard(tmp_path / "f.h5", sample_rate=16000.0)
    assert inspect_shard(tmp_path / "f.h5").sample_rate == 16000


# -- issue 15 (1): the embedded toy set whatever the data root --------------------------------------
def test_toy_set_is_found_whatever_AUDIOBENCH_DATA_points_to(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_DATA", str(tmp_path / "some" / "data"))
    with open_dataset(None) as a, open_dataset("toy", data_root=tmp_path / "elsewhere") as b:
        assert len(a) == len(b) == 96 and a.paths == b.paths
    # the reported command was `run --model toy-cnn --noise pgd --eps 0.002`; the data is opened
    # the same way whatever the condition, so a cheap one keeps the test fast
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--noise", "gaussian", "--snr", "20", "--limit", "2",
                                   "--batch-size", "2", "--bootstrap", "10", "--no-trust-checks", "--quiet",
                                   "--out", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    meta = json.loads(next((tmp_path / "results").glob("*/run.json")).read_text())
    assert meta["data"]["generator"] == "toy" and meta["data"]["shards"][0]["abs_path"].endswith("toy/toy.h5")


# -- issue 15 (10): provenance records absolute and data-root-relative paths ---------------------------
def test_describe_records_absolute_and_relative_paths(tmp_path, monkeypatch):
    mpath, shard = _tiny_manifest(tmp_path)
    monkeypatch.chdir(tmp_path)
    with open_dataset(os.path.relpath(mpath)) as ds:
        d = ds.describe()
    assert d["manifest"] == os.path.abspath(mpath) and d["manifest_rel"] == "m.json"
    assert d["data_root"] == str((tmp_path / "root").resolve()) and d["kind"] == "manifest"
    (sh,) = d["shards"]
    assert sh["path"] == "sub/s.h5" and sh["abs_path"] == os.path.abspath(shard.path)
    assert sh["bytes"] == shard.path.stat().st_size and sh["sha256"] == sha256_file(shard.path)
    assert d["labels_hash"] == labels_hash(shard.targets)
    json.dumps(d)


def test_pinned_shards_are_not_rehashed_at_open_and_the_record_says_so(tmp_path):
    mpath, shard = _tiny_manifest(tmp_path)
    with h5py.File(shard.path, "a") as f:
        f["waveform"][0, :1000] = 7  # 1000 samples changed after packing
    with open_dataset(mpath) as ds:
        (sh,) = ds.describe()["shards"]
    assert sh["sha256_from_file"] is False and sh["sha256"] != sha256_file(shard.path)
    with pytest.raises(DataError, match="sha256 .* does not match manifest"):
        verify(mpath)  # `data verify` (and verify-run, below) hash the bytes
    with open_dataset(shard.path) as ds:
        assert ds.describe()["shards"][0]["sha256_from_file"] is True


# -- the data re-hash behind verify-run -------------------------------------------------------------------
def _recorded(mpath):
    with open_dataset(mpath) as ds:
        return ds.describe()


def test_verify_recorded_data_rehashes_shards_and_clip_list(tmp_path):
    mpath, shard = _tiny_manifest(tmp_path)
    block = _recorded(mpath)
    problems, checks = verify_recorded_data(block)
    assert problems == [] and any("sha256 of" in c for c in checks) and any("clip list" in c for c in checks)
    with h5py.File(shard.path, "r+") as f:
        f["waveform"][3, :1000] = 0
    problems, _ = verify_recorded_data(block)
    assert len(problems) == 1 and "sha256" in problems[0] and "s.h5" in problems[0]


def test_verify_recorded_data_finds_moved_data_by_data_root(tmp_path):
    mpath, _ = _tiny_manifest(tmp_path)
    block = _recorded(mpath)
    shutil.move(tmp_path / "root", tmp_path / "moved")
    problems, _ = verify_recorded_data(block)
    assert len(problems) == 1 and NOT_FOUND in problems[0]
    problems, checks = verify_recorded_data(block, data_root=tmp_path / "moved")
    assert problems == [], problems


def test_verify_recorded_data_hashes_only_what_a_shard_can_be(tmp_path):
    mpath, shard = _tiny_manifest(tmp_path)
    good = _recorded(mpath)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 100_000)
    cases = [
        ({"path": "../../etc/passwd", "abs_path": "/"}, "is not a regular file"),  # a folder: never walked
        ({"path": None, "abs_path": str(big), "bytes": 100_000}, "not an HDF5 file"),
        ({"path": None, "abs_path": str(shard.path), "bytes": 5}, "the run recorded 5"),  # size first: no hashing
    ]
    for shard_entry, expect in cases:
        block = dict(good, data_root=None, shards=[dict(good["shards"][0], **shard_entry)])
        problems, checks = verify_recorded_data(block)
        assert len(problems) == 1 and expect in problems[0], (shard_entry, problems)
    assert verify_recorded_data(["not", "a", "dict"])[0]
    assert verify_recorded_data(dict(good, shards=[]))[0]


@pytest.mark.slow
def test_verify_recorded_data_regenerates_the_toy_set(tmp_path, monkeypatch):
    with open_dataset("toy") as ds:
        block = ds.describe()
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "fresh-home"))  # another machine: nothing cached
    block = dict(block, shards=[dict(block["shards"][0], abs_path="/nonexistent/toy.h5")])
    problems, checks = verify_recorded_data(block)
    assert problems == [] and (tmp_path / "fresh-home" / "toy" / "toy.h5").exists()


# -- refused packs destroy nothing ------------------------------------------------------------------------
def _src(tmp_path, name="src", files=("a.wav",)):
    d = tmp_path / name
    d.mkdir()
    for f in files:
        sf.write(d / f, 0.2 * np.sin(np.arange(16000) / 7), 16000)
    (d / "labels.csv").write_text("file,labels\n" + "".join(f"{f},Sine wave\n" for f in files))
    return d


def _snapshot(folder):
    return {p: p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def test_refused_packs_leave_every_file_as_it_was(tmp_path):
    src = _src(tmp_path)
    kw = dict(sample_rate=16000, clip_seconds=1.0, vocab=toy_vocabulary())
    dl = tmp_path / "dl"
    pack(src, src / "labels.csv", dl / "a.h5", manifest=dl / "m.json", **kw)
    before = _snapshot(dl)
    refusals = [
        dict(out=dl / "a.h5", manifest=dl / "m.json", overwrite=True, sample_rate=8000),  # rate differs
        dict(out=dl / "a.h5", manifest=dl / "m.json"),  # exists, no overwrite
        dict(out=dl / "b.h5", manifest=dl / "m.json"),  # same clip ids as a.h5
        dict(out=dl / "c.h5", manifest=dl / "bad name!.json"),  # a manifest name that could not be read back
        dict(out=tmp_path / "outside.h5", manifest=dl / "m.json"),  # outside the data root
    ]
    for r in refusals:
        args = {**kw, **r}
        out = args.pop("out")
        with pytest.raises(AudiobenchError) as ei:
            pack(src, src / "labels.csv", out, **args)
        assert "\n" not in str(ei.value)
        assert _snapshot(dl) == before, r
        assert not (tmp_path / "outside.h5").exists()
    assert sorted(p.name for p in dl.iterdir()) == ["a.h5", "m.json"]  # no temp files either


def test_overwrite_replaces_shard_and_manifest_together(tmp_path):
    src = _src(tmp_path, files=("a.wav", "b.wav"))
    kw = dict(sample_rate=16000, clip_seconds=1.0, vocab=toy_vocabulary(), manifest=tmp_path / "dl" / "m.json")
    pack(src, src / "labels.csv", tmp_path / "dl" / "a.h5", **kw)
    (src / "labels.csv").write_text("file,labels\na.wav,Sine wave\n")
    pack(src, src / "labels.csv", tmp_path / "dl" / "a.h5", overwrite=True, **kw)
    assert verify(tmp_path / "dl" / "m.json")["n_clips"] == 1


# -- pack: dtype, clipping, upsampling note, decoder warnings ------------------------------------------------
def test_float32_pack_keeps_the_decoded_samples(tmp_path):
    from audiobench.data.audio import load_clip

    src = _src(tmp_path)
    res = pack(src, src / "labels.csv", tmp_path / "f.h5", sample_rate=32000, clip_seconds=1.0,
               vocab=toy_vocabulary(), dtype="float32")
    assert res.dtype == "float32" and res.upsampled == [("a.wav", 16000)]
    with open_dataset(tmp_path / "f.h5") as ds:
        assert np.array_equal(ds.read(0, 1).waveform[0].numpy(), load_clip(src / "a.wav", 32000, 32000))


def test_overshoot_is_clipped_and_counted_and_upsampling_is_warned(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    x = 0.5 * np.sin(np.arange(8000) / 3)
    x[100] = 1.5  # a float file slightly over full scale (MP3 decoders give ~1.006)
    sf.write(d / "hot.wav", x.astype(np.float32), 8000, subtype="FLOAT")
    (d / "labels.csv").write_text("file,labels\nhot.wav,Sine wave\n")
    with pytest.warns(UserWarning, match=r"upsampled .*hot\.wav: 8000 -> 16000 Hz.*--dtype float32"):
        res = pack(d, d / "labels.csv", tmp_path / "h.h5", sample_rate=16000, clip_seconds=1.0, vocab=toy_vocabulary())
    assert res.clipped_clips == 1 and res.clipped_samples >= 1


def test_mp3_decoder_warning_is_attributed_to_the_file(shared_dir, capfd):
    from audiobench.data.audio import DecoderWarning, load_clip

    with pytest.warns(DecoderWarning, match=r"cc0_horse\.mp3: MP3 decoder: .*ID3v2"):
        load_clip(shared_dir / "clips" / "cc0_horse.mp3", 16000, 16000)
    assert "mpg123" not in capfd.readouterr().err  # not printed unattributed any more


# -- issue 15 (16) and issue 13 -----------------------------------------------------------------------------
def test_data_info_prints_a_readable_vocabulary(tiny_shard, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "home"))  # no cached AudioSet vocabulary
    res = CliRunner().invoke(cli, ["data", "info", str(tiny_shard.path)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("vocabulary"))
    assert "Vocabulary(" not in line and "AudioSet, 527 classes, 10 named" in line and "--vocab" in line


def test_default_pack_output_folder_is_ignored_by_git():
    assert "/data/" in (REPO / ".gitignore").read_text().split()


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # function-local imports included
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_data_layer_has_no_import_cycle():
    pkg = REPO / "audiobench"
    mods = {"audiobench.resample": pkg / "resample.py", "audiobench.paths": pkg / "paths.py"}
    mods.update({f"audiobench.data.{p.stem}": p for p in (pkg / "data").glob("*.py") if p.stem != "__init__"})
    graph = {m: {d for d in _imports(p) if d in mods and d != m} for m, p in mods.items()}
    assert "audiobench.data.toy" not in graph["audiobench.data.vocab"]

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert [m for m in graph if m in reach(m)] == []


@pytest.mark.parametrize("value,needle", [(0, "0 Hz is outside"), ("abc", "'abc'"), (np.array([16000, 16000]), "array"),
                                          (float("nan"), "nan"), (np.int64(2**62), str(2**62)), (16000.7, "16000.7"),
                                          (1_000_000_007, "1000000007 Hz is outside")])
def test_bad_shard_rate_is_one_line_in_run_info_and_verify(tmp_path, value, needle):
    write_tiny_shard(tmp_path / "r.h5", sample_rate=value)
    for argv in (["run", "--model", "toy-cnn", "--data", str(tmp_path / "r.h5"), "--out", str(tmp_path / "res"),
                  "--limit", "2", "--no-trust-checks", "--quiet"],
                 ["data", "info", str(tmp_path / "r.h5")], ["data", "verify", str(tmp_path / "r.h5")]):
        res = CliRunner().invoke(cli, argv)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and "Traceback" not in res.output, (argv[:2], res.output)
        assert "r.h5" in lines[0] and needle in lines[0] and "sample rate" in lines[0]


def test_vocabulary_errors_never_echo_the_file_they_were_pointed_at(tmp_path):
    secret = "TOPSECRET-first-line"
    (tmp_path / "vm").mkdir()
    write_tiny_shard(tmp_path / "vm" / "s.h5")
    (tmp_path / "vm" / "notes.csv").write_text(secret + "\nsecond line\n")
    (tmp_path / "private.csv").write_text(secret + "\n")
    doc = {"format": "audiobench-manifest", "version": 1, "name": "vm", "sample_rate": 16000, "clip_seconds": 0.25,
           "n_clips": 12, "clip_list_hash": "0" * 64, "vocab_hash": "0" * 64,
           "shards": [{"path": "s.h5", "n_clips": 12, "sha256": None}]}
    for path in ("notes.csv", "../private.csv", str(tmp_path / "private.csv")):
        (tmp_path / "vm" / "m.json").write_text(json.dumps({**doc, "vocabulary": {"path": path}}))
        res = CliRunner().invoke(cli, ["data", "info", str(tmp_path / "vm" / "m.json")])
        assert res.exit_code == 1 and secret not in res.output, res.output
    res = CliRunner().invoke(cli, ["data", "info", str(tmp_path / "vm" / "s.h5"), "--vocab", str(tmp_path / "private.csv")])
    assert res.exit_code == 1 and secret not in res.output and "header" in res.stderr
