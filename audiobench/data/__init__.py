"""Data layer: AudioSet HDF5 shards / JSON datafiles → batches of (clip_id, waveform, targets).

Entry points: :func:`open_dataset` (toy set, manifest name or file, ``.h5`` shard, AST JSON
datafile) → :class:`Dataset` → :meth:`Dataset.batches` → :class:`Batch`; :data:`DATASETS` lists
the manifests found; :mod:`audiobench.data.pack` packs audio files into shards;
:func:`verify_recorded_data` re-hashes the data a run recorded. Limits on untrusted data live in
:mod:`audiobench.data.limits`; docs/data.md describes formats, commands and limits.
"""

from __future__ import annotations

from audiobench.data.batch import Batch
from audiobench.data.dataset import AudioFileDataset, Dataset, ShardDataset, open_dataset
from audiobench.data.manifest import Manifest, ManifestIndex, load_manifest
from audiobench.data.shards import clip_list_hash, labels_hash, sha256_file, write_shard
from audiobench.data.toy import generate_toy_clips
from audiobench.data.verify import verify_recorded_data
from audiobench.data.vocab import Vocabulary, default_vocabulary, load_vocabulary
from audiobench.errors import DataError

#: Data manifests found in :func:`audiobench.paths.manifest_dirs`: ``DATASETS.items()`` →
#: ``(name, manifest path)``; always includes ``"toy"``.
DATASETS = ManifestIndex()

__all__ = [
    "AudioFileDataset",
    "Batch",
    "DATASETS",
    "DataError",
    "Dataset",
    "Manifest",
    "ShardDataset",
    "Vocabulary",
    "clip_list_hash",
    "default_vocabulary",
    "generate_toy_clips",
    "labels_hash",
    "load_manifest",
    "load_vocabulary",
    "open_dataset",
    "sha256_file",
    "verify_recorded_data",
    "write_shard",
]
