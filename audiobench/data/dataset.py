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
import json
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from audiobench.data.batch import Batch
from audiobench.data.manifest import Manifest, ManifestIndex, load_manifest
from audiobench.data.shards import (
    INT16_SCALE,
    ShardInfo,
    _open_h5,
    clip_list_hash,
    default_sample_rate,
    inspect_shard,
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
    _clip_list_hash: Optional[str] = None

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
        """[{path, sha256, n_clips}] of the files the audio comes from."""

    def describe(self) -> Dict[str, Any]:
        """JSON-able provenance for run.json."""
        return {
            "name": self.name,
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "manifest_sha256": self.manifest_sha256,
            "clip_list_hash": self.clip_list_hash,
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
    """Clips from one or more HDF5 shards in the PANNs layout, read as contiguous slices."""

    def __init__(
        self,
        shard_paths: Sequence[PathLike],
        *,
        name: str,
        vocab: Vocabulary,
        manifest: Optional[Manifest] = None,
    ):
        self.name = name
        self.vocab = vocab
        self.paths = [Path(p) for p in shard_paths]
        self.manifest = manifest
        self._files = []
        self.infos: List[ShardInfo] = []
        try:
            for p in self.paths:
                f = _open_h5(p)
                self._files.append(f)
                self.infos.append(inspect_shard(p, handle=f))
            self._check(manifest)
        except BaseException:
            self.close()
            raise
        self.clip_ids = [c for info in self.infos for c in info.clip_ids]
        self.offsets = np.cumsum([0] + [i.n_clips for i in self.infos])
        self._local = threading.local()
        self._targets: Optional[np.ndarray] = None
        self._sha: Dict[int, str] = {}
        if manifest is not None:
            self.manifest_path = manifest.path
            self.manifest_sha256 = sha256_file(manifest.path) if manifest.path else None
            self._clip_list_hash = manifest.clip_list_hash
            for k, s in enumerate(manifest.shards):
                if s.sha256:
                    self._sha[k] = s.sha256

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
        if k not in self._sha:
            self._sha[k] = sha256_file(self.paths[k])
        return self._sha[k]

    def shard_descriptions(self) -> List[Dict[str, Any]]:
        out = []
        for k, info in enumerate(self.infos):
            rel = self.manifest.shards[k].path if self.manifest is not None else str(info.path)
            out.append({"path": rel, "sha256": self.shard_sha256(k), "n_clips": info.n_clips})
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
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"JSON datafile {self.path} cannot be read: {' '.join(str(exc).split())}") from None
        items = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise DataError(f"JSON datafile {self.path}: expected {{\"data\": [{{\"wav\": ..., \"labels\": ...}}, ...]}} with at least one entry")
        if data_root is None:
            env = os.environ.get("AUDIOBENCH_DATA")
            data_root = Path(env).expanduser() if env else self.path.resolve().parent
        root = Path(data_root)
        self.name = self.path.stem
        self.vocab = vocab
        self.sample_rate = int(sample_rate)
        self.num_samples = int(round(sample_rate * clip_seconds))
        self.files: List[Path] = []
        tgt = np.zeros((len(items), vocab.size), dtype=bool)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "wav" not in item:
                raise DataError(f"JSON datafile {self.path}: entry {i} has no 'wav'")
            wav = Path(os.path.expanduser(str(item["wav"])))
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
        return [{"path": str(self.path), "sha256": self.manifest_sha256, "n_clips": len(self)}]


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


def open_manifest(manifest: Manifest, data_root: Optional[PathLike] = None, vocab: VocabLike = None) -> ShardDataset:
    if manifest.generator is not None and data_root is None and manifest.generator.get("name") == "toy":
        from audiobench.data.toy import TOY_SHARD, ensure_toy, toy_dir

        if not (toy_dir() / TOY_SHARD).exists():
            ensure_toy()
    paths = manifest.shard_paths(data_root)
    voc = _manifest_vocab(manifest, vocab)
    return ShardDataset(paths, name=manifest.name, vocab=voc, manifest=manifest)


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
    p = Path(text).expanduser()
    if not p.exists():
        looks_like_path = os.sep in text or "/" in text or p.suffix.lower() in (".json", ".h5", ".hdf5", ".hdf")
        if looks_like_path:
            raise DataError(f"data {text!r}: file does not exist")
        return open_manifest(load_manifest(ManifestIndex().get(text)), data_root, vocab)
    if p.is_dir():
        raise DataError(f"data {text!r} is a directory; give a manifest .json, an .h5 shard or a JSON datafile")
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{p} is not valid JSON: {' '.join(str(exc).split())}") from None
        if isinstance(doc, dict) and "data" in doc and "shards" not in doc:
            return AudioFileDataset(
                p,
                data_root=data_root,
                vocab=_resolve_vocab(vocab),
                sample_rate=int(sample_rate or 32000),
                clip_seconds=float(clip_seconds or 10.0),
            )
        return open_manifest(Manifest.from_dict(doc, path=p), data_root, vocab)
    return ShardDataset([p], name=p.stem, vocab=_resolve_vocab(vocab))
