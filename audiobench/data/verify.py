"""``data verify`` and ``data info``: full checks and summaries of a manifest, shard or datafile.

Opening a dataset checks only what is cheap (layout, dtypes, label dimension, clip counts).
:func:`verify` also checks the shard sha256 recorded in the manifest, reads every clip (NaN/inf,
unreadable regions), and recomputes the clip-list and vocabulary hashes. It stops at the first
problem with a :class:`DataError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

from audiobench.data.dataset import Dataset, ShardDataset, VocabLike, open_dataset, open_manifest
from audiobench.data.manifest import Manifest, ManifestIndex, load_manifest
from audiobench.data.shards import clip_list_hash, sha256_file
from audiobench.errors import DataError

PathLike = Union[str, Path]


def _as_manifest(target: PathLike) -> Optional[Manifest]:
    """The manifest ``target`` names or is, or None for a shard / JSON datafile."""
    p = Path(str(target)).expanduser()
    if p.exists():
        if p.suffix.lower() != ".json":
            return None
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{p} is not valid JSON: {' '.join(str(exc).split())}") from None
        if isinstance(doc, dict) and "data" in doc and "shards" not in doc:
            return None
        return Manifest.from_dict(doc, path=p)
    if "/" in str(target) or p.suffix:
        raise DataError(f"{target}: file does not exist")
    return load_manifest(ManifestIndex().get(str(target)))


def verify(
    target: PathLike,
    data_root: Optional[PathLike] = None,
    vocab: VocabLike = None,
    block: int = 64,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, Any]:
    """Check ``target`` completely; return a summary dict or raise DataError (first problem)."""
    manifest = _as_manifest(target)
    checked_sha = []
    if manifest is not None:
        if manifest.generator is not None and data_root is None:
            open_manifest(manifest).close()  # generates the toy shard if it is missing
        for entry, path in zip(manifest.shards, manifest.shard_paths(data_root)):
            if not path.exists():
                raise DataError(f"shard {path} (listed in manifest {manifest.path}) does not exist")
            if entry.sha256:
                got = sha256_file(path)
                if got != entry.sha256:
                    raise DataError(
                        f"shard {path}: sha256 {got[:16]}… does not match manifest {manifest.path} ({entry.sha256[:16]}…): corrupted, truncated or replaced"
                    )
                checked_sha.append(str(path))
        ds: Dataset = open_manifest(manifest, data_root, vocab)
    else:
        ds = open_dataset(target, data_root, vocab=vocab)
    try:
        return _scan(ds, manifest, checked_sha, block, progress)
    finally:
        ds.close()


def _scan(ds: Dataset, manifest: Optional[Manifest], checked_sha, block: int, progress) -> Dict[str, Any]:
    n = len(ds)
    if len(set(ds.clip_ids)) != n:
        seen, dup = set(), None
        for c in ds.clip_ids:
            if c in seen:
                dup = c
                break
            seen.add(c)
        raise DataError(f"dataset {ds.name}: clip id {dup!r} occurs more than once")
    if manifest is not None:
        got = clip_list_hash(ds.clip_ids)
        if got != manifest.clip_list_hash:
            raise DataError(f"manifest {manifest.path}: clip_list_hash {manifest.clip_list_hash[:12]}… but the shards' clip ids hash to {got[:12]}…")
    peak = 0.0
    silent = 0
    for a in range(0, n, block):
        b = min(n, a + block)
        batch = ds.read(a, b)
        w = batch.waveform
        finite = np.isfinite(w.numpy()).all(axis=1)
        if not finite.all():
            i = a + int(np.argmin(finite))
            raise DataError(f"dataset {ds.name}: clip {ds.clip_ids[i]!r} (#{i}) has NaN or infinite samples")
        amax = w.abs().amax(dim=1)
        peak = max(peak, float(amax.max()))
        silent += int((amax == 0).sum())
        if progress is not None:
            progress(b, n)
    tg = ds.targets()
    summary = ds.describe()
    summary.update(
        ok=True,
        sha256_checked=checked_sha,
        peak=peak,
        all_zero_clips=silent,
        clips_without_labels=int((~tg.any(axis=1)).sum()),
        positives=int(tg.sum()),
    )
    return summary


def info(target: Optional[PathLike], data_root: Optional[PathLike] = None, vocab: VocabLike = None, top: int = 10) -> Dict[str, Any]:
    """Clips, duration, sample rate and label counts (top classes) without reading audio."""
    ds = open_dataset(target, data_root, vocab=vocab)
    try:
        tg = ds.targets()
        counts = tg.sum(axis=0)
        order = np.argsort(-counts, kind="stable")
        top_classes = [
            {"index": int(i), "mid": ds.vocab.mid_of(int(i)), "name": ds.vocab.name_of(int(i)), "clips": int(counts[i])}
            for i in order[: max(0, top)]
            if counts[i] > 0
        ]
        d = ds.describe()
        d.update(
            duration_seconds=len(ds) * ds.clip_seconds,
            classes_with_positives=int((counts > 0).sum()),
            labels_per_clip=float(tg.sum(axis=1).mean()) if len(ds) else 0.0,
            top_classes=top_classes,
            vocabulary=repr(ds.vocab),
        )
        if isinstance(ds, ShardDataset):
            d["waveform_dtype"] = str(ds.infos[0].waveform_dtype)
        return d
    finally:
        ds.close()
