"""`audiobench predict` end to end with CliRunner (real mn04 weights from ../shared where needed)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from audiobench.cli import cli

MN04 = "weights/efficientat_mn04_as_mAP_432.pt"


def _run(*args, env=None):
    result = CliRunner().invoke(cli, ["predict", *map(str, args)], env=env, catch_exceptions=False)
    return result


def _one_line_error(result):
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def vocab_csv(shared_dir):
    return shared_dir / "audioset" / "class_labels_indices.csv"


def test_files_table_and_saved_logits(shared_dir, vocab_csv, tmp_path):
    clips = shared_dir / "clips"
    stereo = tmp_path / "stereo.wav"  # int16 stereo at 44.1 kHz
    sf.write(stereo, (0.1 * np.random.default_rng(5).standard_normal((44100, 2))), 44100, subtype="PCM_16")
    inputs = [clips / "Y--BfvyPmVMo.wav", clips / "cc0_cat.mp3", stereo]  # 16 kHz float WAV, mp3 48 kHz, stereo
    out = tmp_path / "logits.npz"
    res = _run("--model", "efficientat-mn04", "--checkpoint", shared_dir / MN04, "--vocab", vocab_csv,
               "--top-k", 3, "--save-logits", out, *inputs)
    assert res.exit_code == 0, res.output
    assert "Hammer" in res.output and "0.458" in res.output and "Y--BfvyPmVMo.wav" in res.output
    assert "cc0_cat.mp3" in res.output and "stereo.wav" in res.output
    with np.load(out) as d:
        assert list(d["clip_ids"]) == ["Y--BfvyPmVMo.wav", "cc0_cat.mp3", "stereo.wav"]
        logits = d["logits"]
        assert d["checkpoint_sha256"].item().startswith("899a8c62")
    assert logits.shape == (3, 527) and logits.dtype == np.float32
    assert int(np.argmax(logits[0])) == 419
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npz", "stereo.wav"]  # no temp file left

    # same numbers as the Python API on the same decoded audio
    from audiobench.data.audio import load_clip
    from audiobench.models.loading import load_model

    model = load_model("efficientat-mn04", checkpoint=shared_dir / MN04)
    with torch.no_grad():
        direct = model(torch.from_numpy(load_clip(inputs[0], 32000))[None])[0].numpy()
    np.testing.assert_allclose(logits[0], direct, atol=1e-5, rtol=0)


def test_weights_from_audiobench_weights_and_input_order(shared_dir, vocab_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_WEIGHTS", str(shared_dir / "weights"))
    rng = np.random.default_rng(0)
    paths = []
    for name, seconds in (("a.wav", 1.0), ("b.flac", 1.5), ("c.wav", 1.0), ("d.wav", 1.0)):
        p = tmp_path / name
        sf.write(p, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        paths.append(p)
    outs = []
    for bs in (1, 4):
        out = tmp_path / f"bs{bs}.npz"
        res = _run("--model", "efficientat-mn04", "--vocab", vocab_csv, "--batch-size", bs, "--save-logits", out, *paths)
        assert res.exit_code == 0, res.output
        with np.load(out) as d:
            assert list(d["clip_ids"]) == ["a.wav", "b.flac", "c.wav", "d.wav"]
            outs.append(d["logits"])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=0)  # batching does not change scores
    assert not np.allclose(outs[0][0], outs[0][2])


def test_shard_input(shared_dir, tmp_path):
    from audiobench.data import write_shard

    rng = np.random.default_rng(1)
    wave = (0.1 * rng.standard_normal((3, 16000))).astype(np.float32)
    shard = write_shard(tmp_path / "mini.h5", ["x0", "x1", "x2"], wave, np.zeros((3, 527), bool), 16000)
    out = tmp_path / "shard.npz"
    res = _run("--model", "efficientat-mn04", "--checkpoint", shared_dir / MN04, "--limit", 2,
               "--save-logits", out, shard)
    assert res.exit_code == 0, res.output
    with np.load(out) as d:
        assert list(d["clip_ids"]) == ["x0", "x1"] and d["logits"].shape == (2, 527)


def test_bad_audio_file_one_line(shared_dir, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_text("this is not audio")
    line = _one_line_error(_run("--model", "efficientat-mn04", "--checkpoint", shared_dir / MN04, bad))
    assert "broken.wav" in line


def test_missing_file_one_line(tmp_path):
    # checked before the model is loaded: no weights needed to get this message
    line = _one_line_error(_run("--model", "efficientat-mn04", tmp_path / "nope.wav"))
    assert "nope.wav" in line and "does not exist" in line


def test_unknown_model_one_line(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)
    line = _one_line_error(_run("--model", "efficientat-mn4", p))
    assert "unknown model 'efficientat-mn4'" in line and "efficientat-mn04" in line


def test_missing_weights_offline_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_OFFLINE", "1")
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUDIOBENCH_WEIGHTS", raising=False)
    p = tmp_path / "a.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)
    line = _one_line_error(_run("--model", "efficientat-mn10", p))
    assert "efficientat_mn10_as_mAP_471.pt" in line and "--checkpoint" in line and "offline" in line


def test_bad_device_one_line(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)
    line = _one_line_error(_run("--model", "efficientat-mn04", "--device", "nonsense", p))
    assert "nonsense" in line
