"""Datasets and the batched loader.

:func:`open_dataset` turns what the user gave (nothing → the toy set, a manifest name, a manifest
``.json``, an ``.h5`` shard, or an AST/AudioTaggingDoneRight JSON datafile) into a
:class:`Dataset`, whose :meth:`Dataset.batches` yields :class:`~audiobench.data.batch.Batch`
objects in a fixed order.

Why the loader is fast: a batch is *one* contiguous h5py slice read per shard it touches (not one
call per clip), read straight into a reused int16 buffer and converted to float32 in one torch
op; a background thread prepares the next ``prefetch`` batches while the model runs; for CUDA the
batch is pinned in that thread and copied with ``non_blocking=True``.
"""

from __future__ import annotations

import abc
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from audiobench.data.batch import Batch
from audiobench.data.limits import MAX_DATAFILE_BYTES, check_clip_id, check_clip_seconds, data_sample_rate, has_control_chars
from audiobench.data.manifest import Manifest, ManifestIndex, load_manifest, manifest_from_json, read_json_file
from audiobench.data.shards import (
    INT16_SCALE,
    ShardInfo,
    _open_h5,
    clip_list_hash,
    default_sample_rate,
    first_duplicate,
    inspect_shard,
    labels_hash,
    sha256_file,
)
from audiobench.data.vocab import Vocabulary, default_vocabulary
from audiobench.errors import ConfigError, DataError

PathLike = Union[str, Path]
VocabLike = Union[Vocabulary, PathLike, None]


class Dataset(abc.ABC):
    """An ordered set of fixed-length clips with multi-hot targets in one vocabulary."""

    name: str
    sample_rate: int
    num_samples: int
    clip_ids: List[str]
    vocab: Vocabulary
    manifest_path: Optional[Path] = None
    manifest_sha256: Optional[str] = None
    data_root: Optional[Path] = None  # the folder shard / audio paths are relative to
    kind: str = "shard"  # "manifest", "shard" (a bare .h5) or "datafile" (AST JSON)
    generator: Optional[str] = None  # "toy" for the generated toy set
    _clip_list_hash: Optional[str] = None
    _labels_hash: Optional[str] = None

    # -- identity --------------------------------------------------------------------------------
    @property
    def clip_seconds(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def clip_list_hash(self) -> str:
        """sha256 of the ordered clip ids (stored in the manifest; computed for bare files)."""
        if self._clip_list_hash is None:
            self._clip_list_hash = clip_list_hash(self.clip_ids)
        return self._clip_list_hash

    @property
    def labels_hash(self) -> str:
        """sha256 of the target matrix (:func:`audiobench.data.shards.labels_hash`)."""
        if self._labels_hash is None:
            self._labels_hash = labels_hash(self.targets())
        return self._labels_hash

    @property
    def vocab_hash(self) -> str:
        return self.vocab.hash

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} clips, {self.sample_rate} Hz, {self.clip_seconds:g} s)"

    # -- data ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, start: int, stop: int, out: Optional[torch.Tensor] = None) -> Batch:
        """Clips ``start:stop`` as one CPU batch; the waveform is written into ``out`` (float32,
        (stop - start, num_samples)) when given."""

    @abc.abstractmethod
    def targets(self) -> np.ndarray:
        """All targets, bool (N, n_classes), without reading audio."""

    @abc.abstractmethod
    def shard_descriptions(self) -> List[Dict[str, Any]]:
        """[{path, abs_path, bytes, sha256, n_clips}] of the files the audio comes from; ``path``
        is relative to :attr:`data_root` when the file lies inside it."""

    def describe(self) -> Dict[str, Any]:
        """JSON-able provenance for run.json (``data`` block).

        Paths are recorded twice: absolute (``manifest``, ``data_root``, each shard's
        ``abs_path``) and relative to the data root (``manifest_rel``, each shard's ``path``), so
        :func:`audiobench.data.verify.verify_recorded_data` finds the data again from another
        folder or on another machine. ``manifest``/``manifest_rel`` are None for a bare shard.
        """
        manifest = _absolute(self.manifest_path) if self.manifest_path else None
        root = _absolute(self.data_root) if self.data_root is not None else None
        return {
            "name": self.name,
            "kind": self.kind,
            "generator": self.generator,
            "manifest": manifest,
            "manifest_rel": _relative_to(manifest, root) if manifest else None,
            "manifest_sha256": self.manifest_sha256,
            "data_root": root,
            "clip_list_hash": self.clip_list_hash,
            "labels_hash": self.labels_hash,
            "vocab_hash": self.vocab_hash,
            "vocab_size": self.vocab.size,
            "n_clips": len(self),
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "num_samples": self.num_samples,
            "shards": self.shard_descriptions(),
        }

    def _check_range(self, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= len(self)):
            raise ConfigError(f"dataset {self.name}: clip range {start}:{stop} outside 0:{len(self)}")

    def batches(
        self,
        batch_size: int,
        *,
        start: int = 0,
        stop: Optional[int] = None,
        limit: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        prefetch: int = 2,
    ) -> "BatchIterator":
        """Batches of ``batch_size`` clips over ``start:stop`` in dataset order.

        ``limit`` keeps only the first ``limit`` clips of the dataset (``stop = min(stop,
        limit)``). Batches may span shard boundaries; only the last may be smaller.
        """
        if int(batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if limit is not None and int(limit) < 0:
            raise ConfigError(f"--limit must be >= 0, got {limit}")
        n = len(self)
        stop = n if stop is None else min(int(stop), n)
        if limit is not None:
            stop = min(stop, int(limit))
        start = int(start)
        if start < 0 or start > n:
            raise ConfigError(f"dataset {self.name}: start {start} outside 0..{n}")
        stop = max(stop, start)
        ranges = [(s, min(s + int(batch_size), stop)) for s in range(start, stop, int(batch_size))]
        return BatchIterator(self, ranges, torch.device(device), int(prefetch))

    # -- resources -------------------------------------------------------------------------------
    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


_END = object()


class _BufferPool:
    """Float32 (rows, samples) buffers handed out again only once nothing else references them.

    A buffer is free when its Python reference count and its storage's use count are back to what
    they were when the pool created it: no Batch, view, numpy array or queue entry holds it.
    """

    def __init__(self, rows: int, samples: int, size: int):
        self.rows, self.samples, self.size = rows, samples, size
        self.items: List[list] = []  # [tensor, baseline counts]

    @staticmethod
    def _counts(t: torch.Tensor):
        return sys.getrefcount(t), torch._C._storage_Use_Count(t.untyped_storage()._cdata)

    def get(self, rows: int) -> Optional[torch.Tensor]:
        if rows != self.rows or not hasattr(torch._C, "_storage_Use_Count"):
            return None
        for item in self.items:
            if self._counts(item[0]) == item[1]:
                return item[0]
        if len(self.items) < self.size:
            item = [torch.empty((self.rows, self.samples), dtype=torch.float32), None]
            item[1] = self._counts(item[0])
            self.items.append(item)
            return item[0]
        return None


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class BatchIterator:
    """Iterates batches, read ahead by a background thread (``prefetch`` > 0) or inline (0)."""

    def __init__(self, dataset: Dataset, ranges, device: torch.device, prefetch: int):
        self.dataset = dataset
        self.ranges = list(ranges)
        self.device = device
        self.pin = device.type == "cuda" and torch.cuda.is_available()
        self.prefetch = max(0, prefetch)
        self._it: Optional[Iterator[Batch]] = None
        # CPU batches reuse waveform buffers the consumer has let go of (fresh 40 MB allocations
        # cost more in page faults than the int16 → float32 conversion itself). Not for CUDA: a
        # pinned buffer may still be read by an async copy; torch's host allocator handles that.
        rows = max((b - a for a, b in self.ranges), default=0)
        self._pool = _BufferPool(rows, dataset.num_samples, self.prefetch + 2) if device.type == "cpu" and rows else None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __len__(self) -> int:
        return len(self.ranges)

    @property
    def n_clips(self) -> int:
        return sum(b - a for a, b in self.ranges)

    def _produce(self, a: int, b: int) -> Batch:
        out = self._pool.get(b - a) if self._pool is not None else None
        batch = self.dataset.read(a, b, out=out)
        if self.pin:
            batch = Batch(batch.clip_ids, batch.waveform.pin_memory(), batch.targets.pin_memory(), batch.start)
        return batch

    def _deliver(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        return batch.to(self.device, non_blocking=self.pin)

    def _inline(self) -> Iterator[Batch]:
        for a, b in self.ranges:
            yield self._deliver(self._produce(a, b))

    def _worker(self, q: "queue.Queue") -> None:
        try:
            for a, b in self.ranges:
                if self._stop.is_set():
                    return
                item: Any = self._produce(a, b)
                while not self._stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # forwarded to the consumer, re-raised there
            item = _Failure(exc)
            while not self._stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            return
        while not self._stop.is_set():
            try:
                q.put(_END, timeout=0.1)
                return
            except queue.Full:
                continue

    def _threaded(self) -> Iterator[Batch]:
        q: "queue.Queue" = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._worker, args=(q,), name="audiobench-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield self._deliver(item)
        finally:
            self.close()

    def __iter__(self) -> Iterator[Batch]:
        if self._it is None:
            self._it = self._threaded() if self.prefetch > 0 and len(self.ranges) > 1 else self._inline()
        return self._it

    def __next__(self) -> Batch:
        return next(iter(self))

    def close(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)


class ShardDataset(Dataset):
    """Clips from one or more HDF5 shards in the PANNs layout, read as contiguous slices.

    Opening checks every shard's layout and storage (:func:`inspect_shard`), that the clip ids
    are unique across shards, and against a manifest: clip counts, rate, clip length and the
    clip-list hash; for shards whose sha256 the manifest does not pin, also the labels hash.
    """

    def __init__(
        self,
        shard_paths: Sequence[PathLike],
        *,
        name: str,
        vocab: Vocabulary,
        manifest: Optional[Manifest] = None,
        data_root: Optional[PathLike] = None,
    ):
        self.name = name
        self.vocab = vocab
        self.paths = [Path(p) for p in shard_paths]
        self.manifest = manifest
        self.data_root = Path(data_root) if data_root is not None else None
        self.kind = "manifest" if manifest is not None else "shard"
        self.generator = manifest.generator["name"] if manifest is not None and manifest.generator else None
        self._files = []
        self.infos: List[ShardInfo] = []
        try:
            for p in self.paths:
                f = _open_h5(p)
                self._files.append(f)
                self.infos.append(inspect_shard(p, handle=f))
            self.clip_ids = [c for info in self.infos for c in info.clip_ids]
            dup = first_duplicate(self.clip_ids)
            if dup is not None:
                where = f"dataset {name}" if len(self.paths) > 1 else f"shard {self.paths[0]}"
                raise DataError(f"{where}: clip id {dup!r} occurs more than once; clip ids must be unique")
            self._check(manifest)
            self._targets: Optional[np.ndarray] = None
            if manifest is not None:
                self._check_manifest_hashes(manifest)
        except BaseException:
            self.close()
            raise
        self.offsets = np.cumsum([0] + [i.n_clips for i in self.infos])
        self._local = threading.local()
        self._sha: Dict[int, str] = {}
        self._hashed: set = set()
        if manifest is not None:
            self.manifest_path = manifest.path
            self.manifest_sha256 = sha256_file(manifest.path) if manifest.path else None

    def _check(self, manifest: Optional[Manifest]) -> None:
        first = self.infos[0]
        for info in self.infos:
            if info.n_classes != self.vocab.size:
                raise DataError(
                    f"shard {info.path}: label dimension {info.n_classes} != vocabulary size {self.vocab.size} ({self.vocab.source or 'vocabulary'})"
                )
            if info.num_samples != first.num_samples:
                raise DataError(
                    f"shard {info.path}: {info.num_samples} samples per clip, but {first.path} has {first.num_samples}"
                )
        if manifest is not None:
            for info, entry in zip(self.infos, manifest.shards):
                if info.n_clips != entry.n_clips:
                    raise DataError(f"shard {info.path} has {info.n_clips} clips, manifest {manifest.path} says {entry.n_clips}")
                if info.sample_rate is not None and info.sample_rate != manifest.sample_rate:
                    raise DataError(
                        f"shard {info.path} is at {info.sample_rate} Hz, manifest {manifest.path} says {manifest.sample_rate} Hz"
                    )
            if first.num_samples != manifest.num_samples:
                raise DataError(
                    f"shard {first.path} has {first.num_samples} samples per clip, manifest {manifest.path} says {manifest.num_samples}"
                )
            self.sample_rate = manifest.sample_rate
        else:
            rates = {i.sample_rate for i in self.infos}
            if len(rates) > 1:
                raise DataError(f"shards {', '.join(map(str, self.paths))} have different sample rates {sorted(map(str, rates))}")
            self.sample_rate = default_sample_rate(first)
        self.num_samples = first.num_samples
        check_clip_seconds(self.num_samples / self.sample_rate, f"dataset {self.name} ({self.num_samples} samples at {self.sample_rate} Hz)")

    def _check_manifest_hashes(self, manifest: Manifest) -> None:
        where = f"manifest {manifest.path or manifest.name}"
        got = clip_list_hash(self.clip_ids)
        if got != manifest.clip_list_hash:
            raise DataError(
                f"{where}: clip_list_hash {manifest.clip_list_hash[:12]}… but the shards' clip ids hash to {got[:12]}… (other clips, or another order)"
            )
        self._clip_list_hash = got
        if manifest.labels_hash and not manifest.pinned:
            # unpinned shards (no sha256 in the manifest): the labels are what is checked at open
            got = self.labels_hash
            if got != manifest.labels_hash:
                raise DataError(f"{where}: labels_hash {manifest.labels_hash[:12]}… but the shards' labels hash to {got[:12]}… (other labels)")

    # -- reading ---------------------------------------------------------------------------------
    def _pieces(self, start: int, stop: int):
        """(shard index, local start, local stop, offset in batch) covering start:stop."""
        k = int(np.searchsorted(self.offsets, start, side="right") - 1)
        pos = start
        while pos < stop:
            lo = int(self.offsets[k])
            hi = int(self.offsets[k + 1])
            b = min(stop, hi)
            if b > pos:
                yield k, pos - lo, b - lo, pos - start
            pos = b
            k += 1

    def _scratch(self, n: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.shape[0] < n:
            buf = np.empty((n, self.num_samples), dtype=np.int16)
            self._local.buf = buf
        return buf[:n]

    def read(self, start: int, stop: int, out: Optional[torch.Tensor] = None) -> Batch:
        self._check_range(start, stop)
        n = stop - start
        wav = _out_tensor(out, n, self.num_samples)
        tgt = np.empty((n, self.vocab.size), dtype=bool)
        wav_np = wav.numpy()
        for k, a, b, o in self._pieces(start, stop):
            f = self._files[k]
            try:
                ds = f["waveform"]
                if ds.dtype == np.int16:
                    buf = self._scratch(b - a)
                    ds.read_direct(buf, np.s_[a:b])
                    # int16 → float32 cast, then an exact float32 division (= int16 / 32767).
                    dest = wav[o : o + b - a]
                    dest.copy_(torch.from_numpy(buf))
                    dest.div_(INT16_SCALE)
                else:
                    ds.read_direct(wav_np, np.s_[a:b], np.s_[o : o + b - a])
                t = f["target"]
                if t.dtype == np.bool_:
                    t.read_direct(tgt, np.s_[a:b], np.s_[o : o + b - a])
                else:
                    tgt[o : o + b - a] = t[a:b] != 0
            except (OSError, ValueError) as exc:
                raise DataError(f"shard {self.paths[k]}: cannot read clips {a}:{b} ({' '.join(str(exc).split())})") from None
        return Batch(self.clip_ids[start:stop], wav, torch.from_numpy(tgt), start)

    def targets(self) -> np.ndarray:
        if self._targets is None:
            parts = []
            for f, p in zip(self._files, self.paths):
                try:
                    parts.append(np.asarray(f["target"][()]) != 0)
                except OSError as exc:
                    raise DataError(f"shard {p}: cannot read 'target' ({' '.join(str(exc).split())})") from None
            self._targets = np.concatenate(parts, axis=0)
        return self._targets.copy()

    def shard_sha256(self, k: int) -> str:
        """Shard ``k``'s sha256: the manifest's pinned value when it has one (hashing every shard
        of AudioSet on every run would cost minutes; ``data verify`` and ``verify-run`` re-hash
        the bytes), else computed from the file once per open. The generated toy set is always
        hashed (30 MB; another platform's float rounding may synthesise other bytes)."""
        if k not in self._sha:
            pinned = self.manifest.shards[k].sha256 if self.manifest is not None else None
            if pinned and self.generator is None:
                self._sha[k] = pinned
            else:
                self._sha[k] = sha256_file(self.paths[k])
                self._hashed.add(k)
        return self._sha[k]

    def shard_descriptions(self) -> List[Dict[str, Any]]:
        out = []
        root = _absolute(self.data_root) if self.data_root is not None else None
        for k, info in enumerate(self.infos):
            if self.manifest is not None:
                rel = self.manifest.shards[k].path
            else:
                rel = _relative_to(_absolute(info.path), root) or str(info.path)
            out.append({
                "path": rel,
                "abs_path": _absolute(info.path),
                "bytes": info.file_bytes,
                "sha256": self.shard_sha256(k),
                # True: computed from the bytes when the dataset was opened; False: the manifest's pin
                "sha256_from_file": k in self._hashed,
                "n_clips": info.n_clips,
            })
        return out

    def close(self) -> None:
        for f in self._files:
            try:
                f.close()
            except Exception:  # closing a broken handle must not mask the real error
                pass
        self._files = []


class AudioFileDataset(Dataset):
    """An AST / AudioTaggingDoneRight JSON datafile: ``{"data": [{"wav": path, "labels": "mid,mid"}]}``.

    ``wav`` paths are resolved against the data root (absolute paths are used as they are); each
    clip is decoded, mixed to mono, resampled to ``sample_rate`` and padded/trimmed on read.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        data_root: Optional[PathLike] = None,
        vocab: Vocabulary,
        sample_rate: int = 32000,
        clip_seconds: float = 10.0,
    ):
        self.path = Path(path)
        doc = read_json_file(self.path, "JSON datafile", MAX_DATAFILE_BYTES)
        items = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise DataError(f"JSON datafile {self.path}: expected {{\"data\": [{{\"wav\": ..., \"labels\": ...}}, ...]}} with at least one entry")
        if data_root is None:
            env = os.environ.get("AUDIOBENCH_DATA")
            data_root = Path(env).expanduser() if env else self.path.resolve().parent
        root = Path(data_root)
        self.data_root = root
        self.kind = "datafile"
        self.name = self.path.stem
        self.vocab = vocab
        where = f"JSON datafile {self.path}"
        self.sample_rate = data_sample_rate(sample_rate, where)
        check_clip_seconds(clip_seconds, where)
        self.num_samples = int(round(self.sample_rate * clip_seconds))
        self.files: List[Path] = []
        tgt = np.zeros((len(items), vocab.size), dtype=bool)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("wav"), str) or not item["wav"]:
                raise DataError(f"JSON datafile {self.path}: entry {i} has no 'wav' path")
            if has_control_chars(item["wav"]):
                raise DataError(f"JSON datafile {self.path}: entry {i} 'wav' contains control characters (NUL, newline, ...)")
            wav = Path(os.path.expanduser(item["wav"]))
            full = wav if wav.is_absolute() else root / wav
            if not full.exists():
                raise DataError(f"JSON datafile {self.path}: entry {i} audio file {full} does not exist")
            self.files.append(full)
            labels = item.get("labels", "")
            for lab in (str(labels).split(",") if labels else []):
                if lab.strip():
                    try:
                        tgt[i, vocab.index_of(lab)] = True
                    except DataError as exc:
                        raise DataError(f"JSON datafile {self.path}: entry {i} ({item['wav']}): {exc}") from None
        raw_ids = [str(item["wav"]) for item in items]
        names = [Path(r).name for r in raw_ids]
        self.clip_ids = names if len(set(names)) == len(names) else raw_ids
        dup = first_duplicate(self.clip_ids)
        if dup is not None:
            raise DataError(f"JSON datafile {self.path}: {dup!r} is listed more than once; clip ids must be unique")
        for c in self.clip_ids:
            check_clip_id(c, f"JSON datafile {self.path}")
        self._targets = tgt
        self.manifest_path = self.path
        self.manifest_sha256 = sha256_file(self.path)

    def read(self, start: int, stop: int, out: Optional[torch.Tensor] = None) -> Batch:
        from audiobench.data.audio import load_clip

        self._check_range(start, stop)
        wav = _out_tensor(out, stop - start, self.num_samples)
        for row, p in enumerate(self.files[start:stop]):
            wav[row] = torch.from_numpy(np.clip(load_clip(p, self.sample_rate, self.num_samples), -1.0, 1.0))
        return Batch(self.clip_ids[start:stop], wav, torch.from_numpy(self._targets[start:stop].copy()), start)

    def targets(self) -> np.ndarray:
        return self._targets.copy()

    def shard_descriptions(self) -> List[Dict[str, Any]]:
        # the datafile itself; the audio files it lists are decoded, not hashed
        return [{"path": self.path.name, "abs_path": _absolute(self.path), "bytes": self.path.stat().st_size,
                 "sha256": self.manifest_sha256, "sha256_from_file": True, "n_clips": len(self)}]


def _absolute(p: PathLike) -> str:
    return os.path.abspath(os.path.expanduser(str(p)))


def _relative_to(path: Optional[str], root: Optional[str]) -> Optional[str]:
    """``path`` relative to ``root`` as a POSIX path, or None when it is not inside ``root``."""
    if path is None or root is None:
        return None
    try:
        if os.path.commonpath([root, path]) != root:
            return None
    except ValueError:  # different drives
        return None
    return Path(os.path.relpath(path, root)).as_posix()


def _out_tensor(out: Optional[torch.Tensor], n: int, samples: int) -> torch.Tensor:
    if out is None:
        return torch.empty((n, samples), dtype=torch.float32)
    if out.shape != (n, samples) or out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous CPU float32 tensor of shape {(n, samples)}, got {tuple(out.shape)} {out.dtype}")
    return out


# -- opening ------------------------------------------------------------------------------------
def _resolve_vocab(vocab: VocabLike) -> Vocabulary:
    if isinstance(vocab, Vocabulary):
        return vocab
    return default_vocabulary(vocab)


def _manifest_vocab(manifest: Manifest, vocab: VocabLike) -> Vocabulary:
    where = f"manifest {manifest.path or manifest.name}"
    base = manifest.path.resolve().parent if manifest.path else None
    voc = Vocabulary.from_manifest(manifest.vocabulary, base_dir=base, source=where)
    if voc.hash != manifest.vocab_hash:
        raise DataError(f"{where}: vocabulary hash {voc.hash[:12]}… != vocab_hash {manifest.vocab_hash[:12]}…")
    if voc.partial:
        # Use the full vocabulary (real names for every class) when one is available and it is
        # the one the partial vocabulary was cut from.
        try:
            full = _resolve_vocab(vocab)
        except DataError:
            if vocab is not None:
                raise
            full = None
        if full is not None and not full.partial and full.hash == voc.hash:
            return full
        if vocab is not None and full is not None and full.hash != voc.hash:
            raise DataError(f"{where}: vocabulary {full.source} (hash {full.hash[:12]}…) is not the dataset's ({voc.hash[:12]}…)")
    return voc


def require_shards(manifest: Manifest, data_root: Optional[PathLike] = None) -> List[Path]:
    """The manifest's shard paths under its data root, each checked to exist (the toy set is
    generated into ``AUDIOBENCH_HOME/toy`` first when missing). A missing shard is one line saying
    where to put it and, when the manifest says, how to make it."""
    if manifest.generator is not None:
        from audiobench.data.toy import TOY_SHARD, ensure_toy, toy_dir

        if not (toy_dir() / TOY_SHARD).exists():
            ensure_toy()
    root = manifest.data_root(data_root)
    paths = manifest.shard_paths(data_root)
    for path in paths:
        if not path.exists():
            hint = f"; to make it: {manifest.obtain}" if manifest.obtain else ""
            raise DataError(
                f"dataset {manifest.name}: shard {path} does not exist; put the shards under the data root {root} "
                f"({manifest.root_source(data_root)}){hint}"
            )
    return paths


def open_manifest(manifest: Manifest, data_root: Optional[PathLike] = None, vocab: VocabLike = None) -> ShardDataset:
    """The dataset a manifest describes, its shards under the data root (``data_root``, else env
    ``AUDIOBENCH_DATA``, else the manifest's folder; always ``AUDIOBENCH_HOME/toy`` for the toy set,
    which is generated there on first use)."""
    paths = require_shards(manifest, data_root)
    voc = _manifest_vocab(manifest, vocab)
    return ShardDataset(paths, name=manifest.name, vocab=voc, manifest=manifest, data_root=manifest.data_root(data_root))


def open_dataset(
    data: Optional[PathLike] = None,
    data_root: Optional[PathLike] = None,
    *,
    vocab: VocabLike = None,
    sample_rate: Optional[int] = None,
    clip_seconds: Optional[float] = None,
) -> Dataset:
    """Open a dataset.

    ``data``: ``None`` (the embedded toy set, generated into ``AUDIOBENCH_HOME`` on first use), a
    manifest name (``"toy"``, looked up in :func:`audiobench.paths.manifest_dirs`), a manifest
    ``.json``, an ``.h5`` shard, or an AST JSON datafile. ``data_root``: where a manifest's shards /
    a datafile's wavs live (default env ``AUDIOBENCH_DATA``, else the manifest's folder).
    ``vocab``: a :class:`Vocabulary` or CSV path for bare shards and datafiles (default
    :func:`default_vocabulary`). ``sample_rate``/``clip_seconds`` apply to JSON datafiles only
    (default 32000 Hz, 10 s).
    """
    if data is None:
        from audiobench.data.toy import ensure_toy

        return open_manifest(load_manifest(ensure_toy()), data_root, vocab)
    text = str(data)
    if has_control_chars(text):
        raise DataError(f"data {text[:80]!r} contains control characters (NUL, newline, ...)")
    p = Path(text).expanduser()
    if not p.exists():
        looks_like_path = os.sep in text or "/" in text or p.suffix.lower() in (".json", ".h5", ".hdf5", ".hdf")
        if looks_like_path:
            raise DataError(f"data {text!r}: file does not exist")
        return open_manifest(load_manifest(ManifestIndex().get(text)), data_root, vocab)
    if p.is_dir():
        raise DataError(f"data {text!r} is a directory; give a manifest .json, an .h5 shard or a JSON datafile")
    if p.suffix.lower() == ".json":
        doc = read_json_file(p, "JSON file", MAX_DATAFILE_BYTES)
        if isinstance(doc, dict) and "data" in doc and "shards" not in doc:
            return AudioFileDataset(
                p,
                data_root=data_root,
                vocab=_resolve_vocab(vocab),
                sample_rate=int(sample_rate or 32000),
                clip_seconds=float(clip_seconds or 10.0),
            )
        return open_manifest(manifest_from_json(doc, p), data_root, vocab)
    return ShardDataset([p], name=p.stem, vocab=_resolve_vocab(vocab))
