"""``data verify`` and ``data info``, and the re-hash of a run's recorded data (``verify-run``).

Opening a dataset checks what is cheap (layout, storage, dtypes, label dimension, clip counts,
unique clip ids, the clip-list hash, and for unpinned shards the labels hash). :func:`verify` also
checks the shard sha256 recorded in the manifest, reads every clip (NaN/inf, unreadable regions)
and recomputes the labels and vocabulary hashes. It stops at the first problem with a
:class:`DataError` naming it.

:func:`verify_recorded_data` re-hashes the data a run recorded in its ``run.json`` (the ``data``
block written from :meth:`audiobench.data.Dataset.describe`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from audiobench.data.dataset import Dataset, ShardDataset, VocabLike, open_dataset, open_manifest, require_shards
from audiobench.data.limits import MAX_DATAFILE_BYTES
from audiobench.data.manifest import Manifest, ManifestIndex, check_relative, load_manifest, manifest_from_json, read_json_file
from audiobench.data.shards import clip_list_hash, inspect_shard, sha256_file
from audiobench.errors import DataError

PathLike = Union[str, Path]
#: verify_recorded_data hashes no file larger than this (PANNs' largest AudioSet shards are ~32 GB).
MAX_VERIFY_BYTES = 64 << 30
#: The words that mark a problem of verify_recorded_data as "the data is not here" (not a mismatch).
NOT_FOUND = "cannot be found"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _as_manifest(target: PathLike) -> Optional[Manifest]:
    """The manifest ``target`` names or is, or None for a shard / JSON datafile."""
    p = Path(str(target)).expanduser()
    if p.exists():
        if p.suffix.lower() != ".json":
            return None
        doc = read_json_file(p, "JSON file", MAX_DATAFILE_BYTES)
        if isinstance(doc, dict) and "data" in doc and "shards" not in doc:
            return None
        return manifest_from_json(doc, p)
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
        paths = require_shards(manifest, data_root)  # the toy shard is generated if missing
        hashes = {}
        for k, (entry, path) in enumerate(zip(manifest.shards, paths)):
            if entry.sha256:
                got = sha256_file(path)
                if got != entry.sha256:
                    raise DataError(
                        f"shard {path}: sha256 {got[:16]}… does not match manifest {manifest.path} ({entry.sha256[:16]}…): corrupted, truncated or replaced"
                    )
                hashes[k] = got
                checked_sha.append(str(path))
        ds: Dataset = open_manifest(manifest, data_root, vocab)
        ds._sha.update(hashes)
        ds._hashed.update(hashes)
    else:
        ds = open_dataset(target, data_root, vocab=vocab)
    try:
        return _scan(ds, manifest, checked_sha, block, progress)
    finally:
        ds.close()


def _scan(ds: Dataset, manifest: Optional[Manifest], checked_sha, block: int, progress) -> Dict[str, Any]:
    n = len(ds)
    if manifest is not None:
        got = clip_list_hash(ds.clip_ids)
        if got != manifest.clip_list_hash:
            raise DataError(f"manifest {manifest.path}: clip_list_hash {manifest.clip_list_hash[:12]}… but the shards' clip ids hash to {got[:12]}…")
        if manifest.labels_hash and ds.labels_hash != manifest.labels_hash:
            raise DataError(f"manifest {manifest.path}: labels_hash {manifest.labels_hash[:12]}… but the shards' labels hash to {ds.labels_hash[:12]}…")
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
        sha256_pinned=bool(manifest is not None and manifest.pinned),
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
            single_label=bool(len(ds) and (tg.sum(axis=1) == 1).all()),
            top_classes=top_classes,
            vocabulary=ds.vocab.describe(),
        )
        if isinstance(ds, ShardDataset):
            d["waveform_dtype"] = str(ds.infos[0].waveform_dtype)
        return d
    finally:
        ds.close()


# -- re-hashing a run's recorded data ---------------------------------------------------------------
def _candidates(rel: Optional[str], abs_path: Optional[str], roots: List[Tuple[str, Path]], where: str) -> List[Path]:
    """Where a recorded file may be: each root / its relative path (contained), then the recorded
    absolute path."""
    out: List[Path] = []
    if isinstance(rel, str) and rel:
        try:
            parts = check_relative(rel, where, what="recorded path").parts
        except DataError:
            parts = None
        if parts is not None:
            for _, root in roots:
                full = root.joinpath(*parts)
                real_root, real = os.path.realpath(root), os.path.realpath(full)
                if os.path.commonpath([real_root, real]) == real_root:
                    out.append(full)
    if isinstance(abs_path, str) and abs_path and os.path.isabs(abs_path) and "\x00" not in abs_path:
        out.append(Path(abs_path))
    return out


def _hashable(path: Path, recorded_bytes, hdf5: bool) -> Optional[str]:
    """Why ``path`` is not hashed, or None: only regular files of bounded size, of the recorded
    size, and (for shards) starting with the HDF5 signature."""
    if not path.is_file():
        return "is not a regular file"
    size = path.stat().st_size
    if size > MAX_VERIFY_BYTES:
        return f"is {size} bytes, over the {MAX_VERIFY_BYTES}-byte limit for re-hashing"
    if isinstance(recorded_bytes, int) and not isinstance(recorded_bytes, bool) and size != recorded_bytes:
        return f"is {size} bytes, the run recorded {recorded_bytes}"
    if hdf5:
        with open(path, "rb") as f:
            if f.read(8) != _HDF5_MAGIC:
                return "is not an HDF5 file"
    return None


def verify_recorded_data(data_block: Dict[str, Any], data_root: Optional[PathLike] = None) -> Tuple[List[str], List[str]]:
    """Re-hash the data a run recorded (``run.json``'s ``data`` block) on this machine.

    Returns ``(problems, checks)``: a problem is a mismatch (a shard's sha256 or size, the clip
    list, the manifest) or data that is not here; the latter contain the words ``"cannot be
    found"`` (:data:`NOT_FOUND`), which verify-run reports as "unverified" rather than "failed".

    Each recorded shard is looked for under ``data_root`` (``--data-root``), then under the
    recorded ``data_root``, by its recorded relative path (kept inside the root), then at its
    recorded absolute path; the generated toy set is regenerated in ``AUDIOBENCH_HOME`` when
    missing. Only the files the run recorded are read, only regular files, at most
    :data:`MAX_VERIFY_BYTES` each, and only when their size is the recorded size (a shard must
    also start with the HDF5 signature): a received ``run.json`` cannot make this hash a folder,
    a device or an arbitrary large file. The clip list is re-derived from the shards and compared
    with the recorded ``clip_list_hash``; the manifest (when recorded) is re-hashed too.
    """
    problems: List[str] = []
    checks: List[str] = []
    if not isinstance(data_block, dict):
        return ["run.json's 'data' block is not an object"], checks
    name = str(data_block.get("name", "?"))[:80]
    shards = data_block.get("shards")
    if not isinstance(shards, list) or not shards or len(shards) > 10_000:
        return [f"run.json's data block of {name} lists no shards"], checks
    roots: List[Tuple[str, Path]] = []
    generator = data_block.get("generator")
    if generator == "toy":
        from audiobench.data.toy import TOY_SHARD, ensure_toy, toy_dir

        if not (toy_dir() / TOY_SHARD).exists():
            ensure_toy()
        roots.append(("AUDIOBENCH_HOME", toy_dir()))
    else:
        if data_root is not None:
            roots.append(("--data-root", Path(data_root).expanduser()))
        recorded_root = data_block.get("data_root")
        if isinstance(recorded_root, str) and os.path.isabs(recorded_root) and "\x00" not in recorded_root:
            roots.append(("the recorded data root", Path(recorded_root)))
    kind = data_block.get("kind")
    found_paths: List[Path] = []
    for k, sh in enumerate(shards):
        if not isinstance(sh, dict):
            problems.append(f"run.json's shard {k} of {name} is not an object")
            continue
        rel, abs_path, sha = sh.get("path"), sh.get("abs_path"), sh.get("sha256")
        label = str(rel or abs_path)[:200]
        cands = _candidates(rel, abs_path, roots, f"run.json shard {k}")
        path = next((c for c in cands if c.exists()), None)
        if path is None:
            where = ", ".join(str(c) for c in cands) or "no usable recorded path"
            problems.append(f"data of {name}: {'file' if kind == 'datafile' else 'shard'} {label} {NOT_FOUND} (looked at {where}); pass --data-root")
            continue
        why = _hashable(path, sh.get("bytes"), hdf5=kind != "datafile")
        if why is not None:
            problems.append(f"data of {name}: {path} {why}")
            continue
        if not isinstance(sha, str):
            problems.append(f"data of {name}: run.json records no sha256 for {label}")
            continue
        got = sha256_file(path)
        if got != sha:
            problems.append(f"data of {name}: {path} sha256 {got[:12]} != recorded {sha[:12]}")
        else:
            checks.append(f"sha256 of {path}")
            found_paths.append(path)
    if problems or kind == "datafile":
        if kind == "datafile" and not problems:
            checks.append("the JSON datafile's audio files are not hashed (only the datafile)")
        return problems, checks
    # the clip list, re-derived from the verified shards
    try:
        ids = [c for p in found_paths for c in inspect_shard(p).clip_ids]
    except DataError as exc:
        return [f"data of {name}: {exc}"], checks
    recorded = data_block.get("clip_list_hash")
    got = clip_list_hash(ids)
    if recorded != got:
        problems.append(f"data of {name}: the shards' clip list hashes to {got[:12]}, run.json records {str(recorded)[:12]}")
    else:
        checks.append(f"clip list hash of the {len(ids)} clips in the shards")
    manifest_sha = data_block.get("manifest_sha256")
    if isinstance(manifest_sha, str) and kind == "manifest":
        mcands = _candidates(data_block.get("manifest_rel"), data_block.get("manifest"), roots, "run.json manifest")
        mpath = next((c for c in mcands if c.is_file()), None)
        if mpath is None:
            checks.append("manifest not present here (the shards were verified)")
        elif mpath.stat().st_size > 64 << 20:
            problems.append(f"data of {name}: manifest {mpath} is too large to be a manifest")
        elif sha256_file(mpath) != manifest_sha:
            problems.append(f"data of {name}: manifest {mpath} sha256 differs from the recorded one")
        else:
            checks.append(f"sha256 of manifest {mpath}")
    return problems, checks
