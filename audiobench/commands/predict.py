"""``audiobench predict``: tag audio files or a dataset with a registered model.

Audio files (any format and rate ``data pack`` accepts, mono or multi-channel) are decoded, mixed
to mono and resampled to the model's native rate with ``torchaudio.functional.resample`` (the same
sinc resampler the models use inside), then scored whole: clips of equal length are batched, others
run one by one, so no clip is padded or trimmed. A manifest name/file, ``.h5`` shard or JSON
datafile is read through :func:`audiobench.data.open_dataset` and scored in batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import click

DATASET_SUFFIXES = (".json", ".h5", ".hdf5", ".hdf")
MIN_SECONDS = 0.1


@click.command("predict", context_settings={"show_default": True})
@click.option("--model", "model_name", required=True, help="Registered model name (see `audiobench list models`).")
@click.option("--checkpoint", type=click.Path(dir_okay=True, path_type=Path), default=None,
              help="Checkpoint file (or Hugging Face folder) instead of the model's default weights.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, help="Labels shown per clip.")
@click.option("--save-logits", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write clip_ids and logits (N x n_classes, float32) to this .npz file.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Clips per forward pass.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Score only the first N clips of each dataset.")
@click.option("--vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Label names: class_labels_indices.csv (default: the dataset's, AUDIOBENCH_VOCAB, the cached copy).")
@click.argument("inputs", nargs=-1, required=True)
def predict(model_name, checkpoint, top_k, save_logits, device, batch_size, limit, vocab, inputs):
    """Print the top-k labels (sigmoid probabilities) of each clip of INPUTS.

    INPUTS are audio files (wav/flac/mp3/..., any rate, stereo is averaged) or datasets
    (a manifest name such as `toy`, a manifest .json, an .h5 shard, a JSON datafile).
    """
    import numpy as np
    import torch

    from audiobench.errors import ConfigError
    from audiobench.models.loading import load_model

    from audiobench.errors import DataError

    for text in inputs:  # fail before the (slow) model load on a mistyped path
        if not _is_dataset(text) and not Path(text).expanduser().is_file():
            raise DataError(f"audio file {text} does not exist")
    from audiobench.device import parse_device

    dev = parse_device(device)
    model = load_model(model_name, checkpoint=checkpoint, device=dev)
    if save_logits is not None and not save_logits.parent.exists():
        raise ConfigError(f"--save-logits {save_logits}: folder {save_logits.parent} does not exist")

    keys: List[tuple] = []
    ids: List[str] = []
    logits: List[np.ndarray] = []
    data_vocab = None
    with torch.inference_mode():
        for clip_keys, clip_ids, waveform, clip_vocab in _batches(inputs, model.sample_rate, batch_size, limit):
            out = model(waveform.to(dev)).float().cpu()
            if not torch.isfinite(out).all():
                bad = clip_ids[int((~torch.isfinite(out)).any(dim=1).nonzero()[0])]
                raise ConfigError(f"model {model_name} produced non-finite logits for clip {bad}")
            keys.extend(clip_keys)
            ids.extend(clip_ids)
            logits.append(out.numpy())
            data_vocab = data_vocab or clip_vocab
    # equal-length files are batched together; restore the order of INPUTS
    order = sorted(range(len(ids)), key=keys.__getitem__)
    ids = [ids[i] for i in order]
    all_logits = np.concatenate(logits, axis=0).astype(np.float32)[order] if logits else np.zeros((0, model.spec.n_classes), np.float32)
    names = _label_names(vocab, data_vocab, all_logits.shape[1])
    _print_table(ids, all_logits, names, top_k, model_name)
    if save_logits is not None:
        from audiobench.fileio import atomic_write_npz

        atomic_write_npz(save_logits, clip_ids=np.asarray(ids, dtype=str), logits=all_logits,
                  model=np.asarray(model_name), checkpoint_sha256=np.asarray(model.checkpoint_sha256 or ""))
        click.echo(f"wrote {len(ids)} x {all_logits.shape[1]} logits to {save_logits}", err=True)


# -- inputs -------------------------------------------------------------------------------------
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
    import torchaudio.functional as AF

    from audiobench.data import open_dataset

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
                    wave = AF.resample(wave, ds.sample_rate, sample_rate)
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


# -- output -------------------------------------------------------------------------------------
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


def _print_table(ids, logits, names, top_k, model_name) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    k = min(top_k, logits.shape[1])
    table = Table(title=f"{model_name}: top {k} labels (sigmoid probability)")
    table.add_column("clip", overflow="fold")
    table.add_column("rank", justify="right")
    table.add_column("label", overflow="fold")
    table.add_column("probability", justify="right")
    for i, cid in enumerate(ids):
        order = np.argsort(-probs[i], kind="stable")[:k]
        for r, c in enumerate(order):
            table.add_row(cid if r == 0 else "", str(r + 1), names[c], f"{probs[i, c]:.3f}",
                          end_section=(r == k - 1))
    import sys

    console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)
    console.print(table)
