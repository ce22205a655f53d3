"""Issue 15 item 15: a clip packed into a shard and the same file given to ``predict`` get the same
scores from efficientat-mn04 (real weights), up to int16 quantisation, and why they differed.

Finding: ``data pack`` and ``predict`` resample with the same code (``audiobench.resample``, the
models' resampler; the crop before resampling is exact). The Hammer clip is stored at 16 kHz, so
packed at 32 kHz its 8-16 kHz band is empty; int16 rounding at 32 kHz fills that band with white
noise at -101 dBFS, which mn04's ``log(mel + 1e-5)`` front end sees in its top mel bins: Hammer
0.458 -> 0.447. Packed at its own rate (16 kHz; the model resamples) or as float32, the scores are
those of ``predict``; ``data pack`` warns when int16 packing upsamples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiobench.data import load_vocabulary, open_dataset
from audiobench.data.audio import load_clip
from audiobench.data.pack import pack

MN04 = "weights/efficientat_mn04_as_mAP_432.pt"
HAMMER, SPEECH = 419, 0


@pytest.fixture(scope="module")
def hammer(shared_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("hammer")
    (d / "audio").mkdir()
    (d / "audio" / "Y--BfvyPmVMo.wav").symlink_to(shared_dir / "clips" / "Y--BfvyPmVMo.wav")
    (d / "audio" / "labels.csv").write_text("file,labels\nY--BfvyPmVMo.wav,Hammer\n")
    return d


def _pack(hammer, vocab, sr, dtype):
    out = hammer / f"{sr}_{dtype}.h5"
    if not out.exists():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pack(hammer / "audio", hammer / "audio" / "labels.csv", out, sample_rate=sr, clip_seconds=10.0,
                 vocab=vocab, dtype=dtype)
    with open_dataset(out, vocab=vocab) as ds:
        return ds.read(0, 1).waveform


@pytest.mark.slow
def test_packed_hammer_scores_like_predict(shared_dir, hammer):
    from audiobench.models.loading import load_model

    vocab = load_vocabulary(shared_dir / "audioset" / "class_labels_indices.csv")
    wav = shared_dir / "clips" / "Y--BfvyPmVMo.wav"
    m32 = load_model("efficientat-mn04", checkpoint=shared_dir / MN04)
    m16 = load_model("efficientat-mn04", checkpoint=shared_dir / MN04, sample_rate=16000)
    predicted_wave = torch.from_numpy(load_clip(wav, 32000))[None]  # what `predict` feeds the model
    with torch.no_grad():
        ref = m32(predicted_wave)[0]
        p = torch.sigmoid(ref)
        assert abs(p[HAMMER].item() - 0.458) < 0.002 and abs(p[SPEECH].item() - 0.363) < 0.002

        # float32 shard at 32 kHz: the samples predict uses, clipped to [-1, 1] as every shard is
        # (the resampler overshoots full scale on one sample of this clip, by 9e-4)
        f32 = _pack(hammer, vocab, 32000, "float32")
        assert torch.equal(f32, predicted_wave.clamp(-1, 1))
        assert int((f32 != predicted_wave).sum()) == 1
        assert abs(torch.sigmoid(m32(f32)[0])[HAMMER].item() - p[HAMMER].item()) < 5e-4

        # int16 shard at the clip's own rate: the model's resampler does 16 -> 32 kHz; only in-band
        # int16 rounding separates it from predict
        i16 = _pack(hammer, vocab, 16000, "int16")
        logits = m16(i16)[0]
        assert float((logits - ref).abs().max()) < 2e-3
        assert abs(torch.sigmoid(logits)[HAMMER].item() - p[HAMMER].item()) < 5e-4

        # int16 shard at 32 kHz: exactly predict's samples rounded to int16, nothing else ...
        i16_32 = _pack(hammer, vocab, 32000, "int16")
        rounded = torch.from_numpy(np.rint(np.clip(predicted_wave.numpy(), -1, 1) * 32767).astype(np.int16) / np.float32(32767))
        assert torch.equal(i16_32, rounded)
        # ... and that rounding noise in the empty 8-16 kHz band is what moves Hammer to 0.447
        shifted = torch.sigmoid(m32(i16_32)[0])[HAMMER].item()
        assert 0.440 < shifted < 0.452 and p[HAMMER].item() - shifted > 0.005
