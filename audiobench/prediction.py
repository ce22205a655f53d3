"""Tagging audio with a model: :func:`predict` (``audiobench predict`` and
:func:`audiobench.predict`).

Audio files (any format and rate ``data pack`` accepts, mono or multi-channel) are decoded, mixed
to mono and resampled to the model's native rate with the one resampler the models use inside
(:mod:`audiobench.resample`), then scored whole: clips of equal length are batched, others run
one by one, so no clip is padded or trimmed. A manifest name/file, ``.h5`` shard or JSON datafile
is read through :func:`audiobench.data.open_dataset` and scored in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

DATASET_SUFFIXES = (".json", ".h5", ".hdf5", ".hdf")
MIN_SECONDS = 0.1


@dataclass
class Predictions:
    """Logits of every clip, in the order of the inputs."""

    model: str
    clip_ids: List[str]
    logits: np.ndarray  # (N, n_classes) float32
    class_names: List[str]
    checkpoint_sha256: Optional[str] = None

    @property
    def probabilities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))

    def top_k(self, k: int = 5) -> List[List[Tuple[str, float]]]:
        """Per clip, the k highest-scored (class name, sigmoid probability)."""
        probs = self.probabilities
        k = min(int(k), probs.shape[1]) if probs.ndim == 2 else 0
        return [[(self.class_names[c], float(probs[i, c])) for c in np.argsort(-probs[i], kind="stable")[:k]]
                for i in range(len(self.clip_ids))]


def predict(model, inputs: Sequence[str], *, checkpoint=None, device: str = "auto", batch_size: int = 8,
            limit: Optional[int] = None, vocab=None) -> Predictions:
    """Score ``inputs`` (audio files or datasets) with ``model`` (any name ``audiobench run``
    takes, or a contract ``nn.Module``); returns :class:`Predictions` in input order."""
    import torch

    from audiobench.data import DataError
    from audiobench.device import parse_device
    from audiobench.errors import ConfigError
    from audiobench.models.resolve import resolve_model

    if isinstance(inputs, (str, Path)):
        inputs = [str(inputs)]
    inputs = [str(t) for t in inputs]
    if not inputs:
        raise ConfigError("predict: no audio files or datasets given")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    for text in inputs:  # fail before the (slow) model load on a mistyped path
        if not _is_dataset(text) and not Path(text).expanduser().is_file():
            raise DataError(f"audio file {text} does not exist")
    dev = parse_device(device)
    m = resolve_model(model, checkpoint=checkpoint, device=dev)
    name = m.spec.name
    keys: List[tuple] = []
    ids: List[str] = []
    logits: List[np.ndarray] = []
    data_vocab = None
    with torch.inference_mode():
        for clip_keys, clip_ids, waveform, clip_vocab in _batches(inputs, m.sample_rate, batch_size, limit):
            out = m(waveform.to(dev)).float().cpu()
            if not torch.isfinite(out).all():
                bad = clip_ids[int((~torch.isfinite(out)).any(dim=1).nonzero()[0])]
                raise ConfigError(f"model {name} produced non-finite logits for clip {bad}")
            keys.extend(clip_keys)
            ids.extend(clip_ids)
            logits.append(out.numpy())
            data_vocab = data_vocab or clip_vocab
    # equal-length files are batched together; restore the order of INPUTS
    order = sorted(range(len(ids)), key=keys.__getitem__)
    ids = [ids[i] for i in order]
    n_classes = int(m.spec.n_classes)
    all_logits = (np.concatenate(logits, axis=0).astype(np.float32)[order] if logits
                  else np.zeros((0, n_classes), np.float32))
    names = _label_names(Path(vocab) if vocab is not None else None, data_vocab, all_logits.shape[1])
    return Predictions(name, ids, all_logits, names, getattr(m, "checkpoint_sha256", None))


def _is_dataset(text: str) -> bool:
    from audiobench.data.audio import AUDIO_EXTENSIONS

    suffix = Path(text).suffix.lower()
    if suffix in DATASET_SUFFIXES:
        return True
    if suffix in AUDIO_EXTENSIONS:
        return False
    p = Path(text).expanduser()
    return not p.is_file()  # a manifest name (e.g. "toy"); open_dataset explains unknown names


def _batches(inputs: Sequence[str], sample_rate: int, batch_size: int, limit: Optional[int]) -> Iterator[Tuple[List[tuple], List[str], "torch.Tensor", object]]:
    """(sort keys, clip_ids, waveform (B, S) at sample_rate, dataset vocabulary or None).

    A clip's sort key is (position of its input, position within that input)."""
    import torch

    from audiobench.data import open_dataset
    from audiobench.resample import resample

    files: List[str] = [t for t in inputs if not _is_dataset(t)]
    names = [Path(f).name for f in files]
    file_ids = dict(zip(files, names if len(set(names)) == len(names) else files))
    pending: Dict[int, Tuple[List[tuple], List[str], List[torch.Tensor]]] = {}

    def flush(n: int):
        keys_, ids_, waves = pending.pop(n)
        return keys_, ids_, torch.stack(waves), None

    for pos, text in enumerate(inputs):
        if text in file_ids:
            wave = _decode_file(text, sample_rate)
            keys_, ids_, waves = pending.setdefault(wave.shape[0], ([], [], []))
            keys_.append((pos, 0))
            ids_.append(file_ids[text])
            waves.append(wave)
            if len(ids_) >= batch_size:
                yield flush(wave.shape[0])
            continue
        with open_dataset(text) as ds:
            for batch in ds.batches(batch_size, limit=limit):
                wave = batch.waveform.float()
                if ds.sample_rate != sample_rate:
                    wave = resample(wave, ds.sample_rate, sample_rate)
                keys_ = [(pos, batch.start + j) for j in range(len(batch))]
                yield keys_, list(batch.clip_ids), wave, ds.vocab
    for n in list(pending):
        yield flush(n)


def _decode_file(path: str, sample_rate: int):
    import torch

    from audiobench.data.audio import load_clip
    from audiobench.errors import DataError

    wave = load_clip(path, sample_rate)
    if wave.shape[0] < MIN_SECONDS * sample_rate:
        raise DataError(f"audio file {path} is too short to tag ({wave.shape[0] / sample_rate:.3f} s < {MIN_SECONDS} s)")
    # not clipped: a full-scale clip resampled to another rate may overshoot 1.0 slightly, and
    # that is what the model's own resampler would feed the front end too
    return torch.from_numpy(wave)


def _label_names(vocab_path: Optional[Path], data_vocab, n_classes: int) -> List[str]:
    """Display names: --vocab, else the dataset's vocabulary, else default_vocabulary();
    classes no vocabulary names print as "class <i>"."""
    from audiobench.data.vocab import default_vocabulary

    vocab = default_vocabulary(vocab_path) if vocab_path is not None else data_vocab
    if vocab is None or vocab.partial:
        try:
            found = default_vocabulary()
        except Exception:  # an unreadable AUDIOBENCH_VOCAB/cached copy: keep what we have
            found = None
        if found is not None and (vocab is None or not found.partial):
            vocab = found
    if vocab is not None and len(vocab) == n_classes:
        return [vocab.name_of(i) for i in range(n_classes)]
    return [f"class {i}" for i in range(n_classes)]
