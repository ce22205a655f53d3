"""``hf:FOLDER``: transformers audio classifiers with their front end rebuilt in torch.

Fidelity: small random-init configs (2 layers, hidden 32) saved to a temporary folder, run by
transformers' own feature extractor + model and by audiobench on real clips; the logits must agree
within 1e-4 (relative to their largest magnitude). Then the same folders are attacked (PGD raises
the loss), probed, and their labels aligned / mapped / refused.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from audiobench.data.vocab import Vocabulary
from audiobench.errors import ConfigError, WeightsError
from audiobench.models.contract import ModelContractError, probe_model
from audiobench.models.hf import HFAudioTagger
from audiobench.models.labels import LabelMappedTagger
from audiobench.models.resolve import model_provenance, resolve_model
from audiobench.models.weights import checkpoint_sha256

transformers = pytest.importorskip("transformers")

SR = 16000
CLIPS = ("Y--BfvyPmVMo.wav", "cc0_dog.mp3", "fs_rain.wav")
TINY_CONV = dict(conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=4)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
LABELS = ["Speech", "Dog", "Rain", "Hammer", "Music"]  # AudioSet display names


def _configs():
    t = transformers
    return {
        "ast": (t.ASTConfig(**TINY, max_length=128, num_mel_bins=64), t.ASTForAudioClassification,
                t.ASTFeatureExtractor(num_mel_bins=64, max_length=128)),
        "wav2vec2": (t.Wav2Vec2Config(**TINY, classifier_proj_size=16, **TINY_CONV), t.Wav2Vec2ForSequenceClassification,
                     t.Wav2Vec2FeatureExtractor()),
        "hubert": (t.HubertConfig(**TINY, classifier_proj_size=16, **TINY_CONV), t.HubertForSequenceClassification,
                   t.Wav2Vec2FeatureExtractor()),
        "wavlm": (t.WavLMConfig(**TINY, classifier_proj_size=16, num_buckets=16, max_bucket_distance=50, **TINY_CONV),
                  t.WavLMForSequenceClassification, t.Wav2Vec2FeatureExtractor()),
    }


def save_folder(root, family, labels=LABELS):
    config, cls, extractor = _configs()[family]
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {v: k for k, v in enumerate(labels)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = cls(config).eval()
    folder = root / family
    net.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {family: save_folder(root, family) for family in ("ast", "wav2vec2")}


@pytest.fixture(scope="module")
def clips(shared_dir):
    from audiobench.data.audio import load_clip

    return np.stack([load_clip(shared_dir / "clips" / name, SR, 2 * SR) for name in CLIPS]).astype(np.float32)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


def reference(folder, family, waves):
    """transformers' own pipeline: its feature extractor (numpy) and model."""
    _, cls, _ = _configs()[family]
    extractor = getattr(transformers, type(_configs()[family][2]).__name__).from_pretrained(folder)
    inputs = extractor(list(waves), sampling_rate=SR, return_tensors="pt")
    net = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        return inputs["input_values"], net(**inputs).logits


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ast", "wav2vec2", "hubert", "wavlm"])
def test_logits_match_transformers_on_real_clips(family, folders, clips, tmp_path):
    folder = folders[family] if family in folders else save_folder(tmp_path, family)
    feats_ref, logits_ref = reference(folder, family, clips)
    model = resolve_model(f"hf:{folder}", sample_rate=SR)
    assert isinstance(model, HFAudioTagger) and model.labels == LABELS
    x = torch.from_numpy(clips)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert feats.shape == feats_ref.shape
    assert rel_err(feats, feats_ref) <= 1e-4
    assert rel_err(logits, logits_ref) <= 1e-4
    # the clips are told apart (a front end that ignored its input could not pass the check above)
    assert float((logits_ref[0] - logits_ref[1]).abs().max()) > 1e3 * float((logits - logits_ref).abs().max())


def test_ast_front_end_pads_short_clips_and_resamples(folders, clips):
    folder = folders["ast"]
    short = clips[:, : SR // 2]  # 0.5 s: 48 frames, zero-padded to 128
    feats_ref, logits_ref = reference(folder, "ast", short)
    model = resolve_model(f"hf:{folder}", sample_rate=SR)
    with torch.no_grad():
        assert rel_err(model(torch.from_numpy(short)), logits_ref) <= 1e-4
    # data at 32 kHz: the model resamples to its extractor's 16 kHz with the project's resampler
    import torchaudio

    x32 = torchaudio.functional.resample(torch.from_numpy(short), SR, 2 * SR)
    model32 = resolve_model(f"hf:{folder}", sample_rate=2 * SR)
    _, logits_ref32 = reference(folder, "ast", torchaudio.functional.resample(x32, 2 * SR, SR).numpy())
    assert model32.sample_rate == 2 * SR and model32.spec.sample_rate == SR
    with torch.no_grad():
        assert rel_err(model32(x32), logits_ref32) <= 1e-4


@pytest.mark.parametrize("family", ["ast", "wav2vec2"])
def test_pgd_through_the_front_end_raises_the_loss(family, folders, clips):
    from audiobench.perturb import PERTURBATIONS
    from audiobench.perturb.base import AttackTrace
    from audiobench.rng import ClipRNG

    model = resolve_model(f"hf:{folders[family]}", sample_rate=SR)
    summary = probe_model(model, sample_rate=SR, n_classes=len(LABELS), needs_grad=True)
    assert summary["gradient_checked"] and "head_max_abs_diff" in summary
    x = torch.from_numpy(clips[:, : SR])
    targets = torch.zeros(len(x), len(LABELS))
    targets[:, 0] = 1.0
    pgd = PERTURBATIONS.get("pgd")(eps=0.01, steps=3)
    trace = AttackTrace()
    adv = pgd(x, model=model, targets=targets, rng=ClipRNG.for_clips(0, list(CLIPS), pgd.condition_key()), trace=trace)
    assert float((adv - x).abs().max()) <= 0.01 + 1e-7

    def loss(w):
        with torch.no_grad():
            return torch.nn.functional.binary_cross_entropy_with_logits(model(w), targets).item()

    assert loss(adv) > loss(x)
    assert trace.loss_per_step[-1] > trace.loss_per_step[0]


def test_provenance_records_the_folder_and_its_hash(folders):
    folder = folders["wav2vec2"]
    model = resolve_model(f"hf:{folder}")
    prov = model_provenance(model)
    assert prov["kind"] == "hf" and prov["extractor_class"] == "Wav2Vec2FeatureExtractor"
    assert prov["model_class"] == "Wav2Vec2ForSequenceClassification" and prov["revision"] is None
    assert prov["checkpoint"] == str(folder.resolve()) and prov["checkpoint_sha256"] == checkpoint_sha256(folder)
    assert prov["transformers_version"] == transformers.__version__


def test_random_weights_and_checkpoint_options(folders):
    model = resolve_model(f"hf:{folders['ast']}", weights="random")
    assert model.checkpoint_sha256 is None and model_provenance(model)["weights"] == "random"
    with pytest.raises(ConfigError) as e:
        resolve_model(f"hf:{folders['ast']}", checkpoint=folders["ast"] / "config.json")
    assert "the folder holds the weights" in one_line(e)


# --- refusals --------------------------------------------------------------------------------------
def test_unknown_extractor_class_is_refused_by_name(folders, tmp_path):
    folder = tmp_path / "whisperish"
    folder.mkdir()
    (folder / "config.json").write_text((folders["ast"] / "config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "WhisperFeatureExtractor"}))
    with pytest.raises(WeightsError) as e:
        resolve_model(f"hf:{folder}")
    msg = one_line(e)
    assert "feature extractor 'WhisperFeatureExtractor' is not supported" in msg and "ASTFeatureExtractor" in msg
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(WeightsError) as e:
        resolve_model(f"hf:{folder}")
    assert "no preprocessor_config.json" in one_line(e)


def test_incomplete_weights_and_missing_folders_are_refused(tmp_path, monkeypatch):
    config, _, extractor = _configs()["ast"]
    with torch.random.fork_rng(devices=[]):
        base = transformers.ASTModel(config)  # an encoder without its classifier head
    folder = tmp_path / "encoder-only"
    base.save_pretrained(folder)
    extractor.save_pretrained(folder)
    with pytest.raises(WeightsError) as e:
        resolve_model(f"hf:{folder}")
    assert "not a complete fine-tuned audio classifier" in one_line(e)
    with pytest.raises(WeightsError) as e:
        resolve_model(f"hf:{tmp_path / 'nowhere'}")
    assert "no such folder" in one_line(e)
    monkeypatch.setenv("AUDIOBENCH_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        resolve_model("hf:audiobench-tests/no-such-model#main")
    assert "is not in the local Hugging Face cache (offline)" in one_line(e)


# --- labels ------------------------------------------------------------------------------------------
def vocab(names):
    return Vocabulary(len(names), [(i, f"/m/test{i}", n) for i, n in enumerate(names)], source="test")


def test_labels_are_aligned_by_display_name(folders, clips):
    folder = folders["wav2vec2"]
    plain = resolve_model(f"hf:{folder}")
    order = ["music", "Hammer", "Speech", "rain", "Dog"]  # the dataset's order, other case
    model = resolve_model(f"hf:{folder}", dataset_vocab=vocab(order))
    assert isinstance(model, LabelMappedTagger) and model.spec.n_classes == 5
    x = torch.from_numpy(clips[:, : SR // 2])
    with torch.no_grad():
        want = plain(x)[:, [LABELS.index(n.capitalize()) for n in order]]
        assert torch.allclose(model(x), want)
        assert torch.allclose(model.head(model.embed_features(model.features(x))), want, atol=1e-5)
    assert model_provenance(model)["labels"]["how"] == "aligned by MID/name"
    same = resolve_model(f"hf:{folder}", dataset_vocab=vocab(LABELS))
    assert isinstance(same, HFAudioTagger)  # already in the dataset's order: no wrapper


def test_unalignable_labels_and_class_counts_are_refused(folders):
    folder = folders["wav2vec2"]
    with pytest.raises(ModelContractError) as e:
        resolve_model(f"hf:{folder}", dataset_vocab=vocab(["Speech", "Dog", "Rain", "Hammer", "Cat"]))
    msg = one_line(e)
    assert "cannot be aligned" in msg and "'Cat'" in msg and "label map" in msg
    with pytest.raises(ModelContractError) as e:
        resolve_model(f"hf:{folder}", dataset_vocab=vocab(["Speech", "Dog"]))
    assert "has 5 classes but the dataset vocabulary has 2" in one_line(e)


def test_a_label_map_maps_model_classes_onto_the_dataset(folders, clips, tmp_path):
    folder = folders["wav2vec2"]
    plain = resolve_model(f"hf:{folder}")
    csv = tmp_path / "map.csv"
    csv.write_text("model_class,dataset_class\nSpeech,voice\n4,voice\nDog,animal\n")
    model = resolve_model(f"hf:{folder}", dataset_vocab=vocab(["animal", "voice"]), label_map=csv)
    x = torch.from_numpy(clips[:, : SR // 2])
    with torch.no_grad():
        p = plain(x)
        want = torch.stack([p[:, 1], torch.maximum(p[:, 0], p[:, 4])], dim=1)  # several classes: their max
        assert torch.allclose(model(x), want)
    labels = model_provenance(model)["labels"]
    assert labels["how"] == "label map" and labels["label_map_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    probe_model(model, sample_rate=SR, n_classes=2, needs_grad=True)


@pytest.mark.parametrize("text, expected", [
    ("model,dataset\nSpeech,voice\n", "header must be 'model_class,dataset_class'"),
    ("model_class,dataset_class\nSpeech,voice\n", "gives no model class for dataset classes 'animal'"),
    ("model_class,dataset_class\nBark,animal\nSpeech,voice\n", "line 2: model class 'Bark' is not a class of the model"),
    ("model_class,dataset_class\n7,animal\nSpeech,voice\n", "line 2: model class 7 is out of range"),
    ("model_class,dataset_class\nDog,animals\nSpeech,voice\n", "line 2: unknown label 'animals'"),
])
def test_bad_label_maps_are_one_line(folders, tmp_path, text, expected):
    csv = tmp_path / "map.csv"
    csv.write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve_model(f"hf:{folders['wav2vec2']}", dataset_vocab=vocab(["animal", "voice"]), label_map=csv)
    assert expected in one_line(e)


def test_registered_models_align_with_audioset_data_and_map_to_other_vocabularies(tmp_path):
    from audiobench.data.toy import toy_vocabulary

    toy = toy_vocabulary()  # the toy set's (partial) AudioSet vocabulary
    model = resolve_model("toy-cnn", dataset_vocab=toy)
    assert model_provenance(model)["labels"]["identity"]
    with pytest.raises(ModelContractError) as e:
        resolve_model("toy-cnn", dataset_vocab=vocab(["animal", "voice"]))
    assert "has 527 classes but the dataset vocabulary has 2" in one_line(e)
    csv = tmp_path / "map.csv"
    csv.write_text("model_class,dataset_class\n0,voice\n72,animal\n")
    mapped = resolve_model("toy-cnn", dataset_vocab=vocab(["animal", "voice"]), label_map=csv)
    x = torch.rand(1, SR) - 0.5
    with torch.no_grad():
        assert torch.allclose(mapped(x), model(x)[:, [72, 0]])
