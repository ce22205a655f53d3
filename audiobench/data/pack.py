"""Pack audio files into an HDF5 shard (PANNs layout) and, optionally, a manifest.

Labels come from one of three CSV layouts, recognised by their header:

* ``file,labels`` (extra columns ignored): ``labels`` are vocabulary display names or mids
  separated by ``;`` (display names may contain commas: "Beep, bleep"), like
  ``../shared/clips/labels.csv``; files are packed in CSV order;
* Google's segment CSV (``# comment`` lines, then ``YTID, start_seconds, end_seconds, "mid,mid"``)
  matched to the files of the audio folder named ``Y<YTID>.*`` (PANNs naming) or ``<YTID>.*``;
  files are packed in name order;
* ESC-50's ``meta/esc50.csv`` (``filename,fold,target,category,...``): one label per clip, folds
  selectable (``folds``), and, unless a vocabulary is given, the vocabulary built from
  ``target`` → ``category`` over every row of the CSV (so every fold packs into the same classes).

File names in a labels CSV stay inside the audio folder: absolute paths, '..' and control
characters are refused (and never become clip ids).

Nothing is written until everything has been validated: options, the manifest to update (rate,
clip length, vocabulary, the shard's place under the data root, clip ids unique across its
shards), every label and every audio file. Then the shard is written to a temporary name, the
manifest prepared beside it, and both renamed into place. An existing ``out`` (a shard of some
manifest, or anything else) is replaced only with ``overwrite``. Every problem is collected and
reported by name; ``skip_bad`` packs the good files and lists the skipped ones.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from audiobench.data.audio import AUDIO_EXTENSIONS, decode_clip
from audiobench.data.limits import MAX_CLIPS, check_clip_seconds, has_control_chars
from audiobench.data.shards import (
    SHARD_DTYPES,
    ShardWriter,
    clip_list_hash,
    first_duplicate,
    float_to_float32,
    float_to_int16,
    labels_hash,
)
from audiobench.data.vocab import Vocabulary, vocabulary_from_classes
from audiobench.errors import ConfigError, DataError
from audiobench.resample import check_sample_rate

PathLike = Union[str, Path]
MAX_LABELS_BYTES = 1 << 30  # a labels CSV read into memory (AudioSet's unbalanced list: 140 MB)


@dataclass
class PackItem:
    path: Path  # audio file
    name: str  # audio_name written to the shard
    labels: List[str]


@dataclass
class LabelTable:
    """What a labels CSV says: the items to pack, problems found, its layout, and (ESC-50) the
    vocabulary its ``target``/``category`` columns define."""

    items: List[PackItem]
    problems: List[Tuple[str, str]]
    layout: str  # "file,labels", "segments" or "esc50"
    vocabulary: Optional[Vocabulary] = None


@dataclass
class PackResult:
    out: Path
    n_clips: int
    sha256: str
    sample_rate: int
    num_samples: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    manifest: Optional[Path] = None
    label_counts: dict = field(default_factory=dict)
    dtype: str = "int16"
    vocabulary: Optional[Vocabulary] = None
    clipped_samples: int = 0  # samples beyond [-1, 1] after decoding/resampling, clipped
    clipped_clips: int = 0
    upsampled: List[Tuple[str, int]] = field(default_factory=list)  # (file, its own rate) below sample_rate


def _header(text: str) -> List[str]:
    for line in text.splitlines():
        if line.strip():
            return [h.strip().lower() for h in next(csv.reader([line]))]
    return []


def _is_segment_csv(text: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            return True
        header = [h.strip().lower() for h in next(csv.reader([s]))]
        if "file" in header and "labels" in header:
            return False
        if header and header[0] in ("ytid", "# ytid"):
            return True
        row = next(csv.reader([s], skipinitialspace=True))
        try:
            float(row[1]), float(row[2])
            return len(row) >= 4
        except (IndexError, ValueError):
            return False
    return False


def _is_esc50_csv(text: str) -> bool:
    header = _header(text)
    return {"filename", "fold", "target", "category"} <= set(header)


def contained_name(name: str, audio_dir: Path, labels_csv: Path) -> Optional[str]:
    """Why ``name`` (a file named by a labels CSV) is refused, or None when it stays inside the
    audio folder: relative, no '..', no '~', no drive, no control characters."""
    if has_control_chars(name):
        return "file name contains control characters"
    posix = name.replace("\\", "/")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if posix.startswith("/") or (len(name) > 1 and name[1] == ":") or name.startswith("~"):
        return f"absolute path in {labels_csv.name}: files must be named relative to the audio folder {audio_dir}"
    if ".." in parts:
        return f"path with '..' in {labels_csv.name}: files must stay inside the audio folder {audio_dir}"
    if not parts:
        return "empty file name"
    return None


def _read_text(labels_csv: Path) -> str:
    try:
        if not labels_csv.is_file():
            raise FileNotFoundError
        size = labels_csv.stat().st_size
        if size > MAX_LABELS_BYTES:
            raise DataError(f"labels file {labels_csv} is {size} bytes (limit {MAX_LABELS_BYTES})")
        return labels_csv.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"labels file {labels_csv} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"labels file {labels_csv} cannot be read ({type(exc).__name__})") from None


def read_label_table(labels_csv: PathLike, audio_dir: PathLike, folds: Optional[Set[int]] = None) -> LabelTable:
    """Items to pack, problems found (missing / unlabelled / refused files) and the layout."""
    labels_csv, audio_dir = Path(labels_csv), Path(audio_dir)
    text = _read_text(labels_csv)
    if not audio_dir.is_dir():
        raise DataError(f"audio folder {audio_dir} does not exist or is not a folder")
    try:
        if _is_esc50_csv(text):
            return _read_esc50(text, labels_csv, audio_dir, folds)
        if folds is not None:
            raise ConfigError(f"--folds applies to ESC-50 meta CSVs (filename,fold,target,category); {labels_csv} is not one")
        if _is_segment_csv(text):
            return _read_segments(text, labels_csv, audio_dir)
        return _read_file_labels(text, labels_csv, audio_dir)
    except csv.Error as exc:
        raise DataError(f"labels file {labels_csv}: not a readable CSV ({exc})") from None


def read_labels(labels_csv: PathLike, audio_dir: PathLike) -> Tuple[List[PackItem], List[Tuple[str, str]]]:
    """``(items, problems)`` of a labels CSV (see :func:`read_label_table`)."""
    table = read_label_table(labels_csv, audio_dir)
    return table.items, table.problems


def _named_file(name: str, audio_dir: Path, labels_csv: Path, problems) -> Optional[Path]:
    why = contained_name(name, audio_dir, labels_csv)
    if why is not None:
        problems.append((name[:200], why))
        return None
    p = audio_dir.joinpath(*[q for q in name.replace("\\", "/").split("/") if q not in ("", ".")])
    if not p.is_file():
        problems.append((name, f"not found in {audio_dir}"))
        return None
    return p


def _clip_name(name: str) -> str:
    posix = "/".join(q for q in name.replace("\\", "/").split("/") if q not in ("", "."))
    return posix


def _read_segments(text: str, labels_csv: Path, audio_dir: Path) -> LabelTable:
    segments: Dict[str, List[str]] = {}
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row or row[0].lstrip().startswith("#") or row[0].strip().lower() == "ytid":
            continue
        if len(row) < 4:
            raise DataError(f"labels file {labels_csv}: segment row {','.join(row)[:80]!r} needs YTID, start, end, labels")
        segments[row[0].strip()] = [m.strip() for m in row[3].split(",") if m.strip()]
    files = sorted(p for p in audio_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DataError(f"audio folder {audio_dir} has no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    items, problems = [], []
    for p in files:
        stem = p.stem
        key = stem[1:] if stem.startswith("Y") and stem[1:] in segments else stem if stem in segments else None
        if key is None:
            problems.append((p.name, f"no segment for YouTube id {stem!r} in {labels_csv.name}"))
            continue
        items.append(PackItem(p, p.name, segments[key]))
    return LabelTable(items, problems, "segments")


def _read_file_labels(text: str, labels_csv: Path, audio_dir: Path) -> LabelTable:
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    cols = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
    if "file" not in cols or "labels" not in cols:
        raise DataError(
            f"labels file {labels_csv}: expected a 'file,labels' header, ESC-50's 'filename,fold,target,category' or Google's segment CSV"
        )
    items, problems, seen = [], [], set()
    for row in reader:
        name = (row.get(cols["file"]) or "").strip()
        if not name:
            continue
        if name in seen:
            problems.append((name, f"listed twice in {labels_csv.name}"))
            continue
        seen.add(name)
        labels = [x.strip() for x in (row.get(cols["labels"]) or "").split(";") if x.strip()]
        p = _named_file(name, audio_dir, labels_csv, problems)
        if p is not None:
            items.append(PackItem(p, _clip_name(name), labels))
    return LabelTable(items, problems, "file,labels")


def _read_esc50(text: str, labels_csv: Path, audio_dir: Path, folds: Optional[Set[int]]) -> LabelTable:
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    cols = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
    classes: Dict[int, str] = {}
    items, problems, seen = [], [], set()
    for lineno, row in enumerate(reader, start=2):
        name = (row.get(cols["filename"]) or "").strip()
        if not name:
            continue
        try:
            fold = int(str(row.get(cols["fold"])).strip())
            target = int(str(row.get(cols["target"])).strip())
        except ValueError:
            raise DataError(f"labels file {labels_csv}: line {lineno}: fold and target must be integers") from None
        category = (row.get(cols["category"]) or "").strip()
        if not category:
            raise DataError(f"labels file {labels_csv}: line {lineno}: empty category")
        if target < 0 or target >= MAX_CLIPS:
            raise DataError(f"labels file {labels_csv}: line {lineno}: target {target} out of range")
        if classes.setdefault(target, category) != category:
            raise DataError(
                f"labels file {labels_csv}: target {target} is {classes[target]!r} and {category!r}: one category per target"
            )
        if folds is not None and fold not in folds:
            continue
        if name in seen:
            problems.append((name, f"listed twice in {labels_csv.name}"))
            continue
        seen.add(name)
        p = _named_file(name, audio_dir, labels_csv, problems)
        if p is not None:
            items.append(PackItem(p, _clip_name(name), [category]))
    if not classes:
        raise DataError(f"labels file {labels_csv} lists no clips")
    if folds is not None and not items and not problems:
        raise DataError(f"labels file {labels_csv} has no clips in folds {','.join(map(str, sorted(folds)))}")
    vocab = vocabulary_from_classes(classes, f"{labels_csv.name} (target/category)")
    return LabelTable(items, problems, "esc50", vocab)


def _stop_message(problems: Sequence[Tuple[str, str]], skip_hint: bool = True) -> str:
    shown = "; ".join(f"{n}: {r}" for n, r in problems[:8])
    more = f"; …and {len(problems) - 8} more" if len(problems) > 8 else ""
    hint = " (use --skip-bad to pack the rest)" if skip_hint else ""
    return f"pack stopped, nothing written: {len(problems)} problem(s): {shown}{more}{hint}"


# -- the manifest this pack updates ----------------------------------------------------------------
@dataclass
class _ManifestPlan:
    """Everything about the manifest to write, checked before any audio is decoded."""

    path: Path
    root: Path
    rel: str  # the new shard's path, relative to root
    existing: Optional[object]  # the Manifest read, or None for a new one
    other_ids: List[str]  # clip ids of the manifest's other shards, in order
    other_entries: list
    position: int = 0  # where the new shard goes in the shard list
    position_ids: int = 0  # where its clip ids go in the clip list

    def build(self, entry, clip_ids: List[str], targets: np.ndarray, vocab: Vocabulary, used, sample_rate: int,
              num_samples: int, vocab_source_sha256: Optional[str]):
        from audiobench.data.manifest import Manifest

        shards = list(self.other_entries)
        shards.insert(self.position, entry)
        all_ids = list(self.other_ids)
        all_ids[self.position_ids: self.position_ids] = clip_ids
        m = self.existing
        if m is not None:
            if "path" in m.vocabulary or not vocab.is_audioset:
                vocabulary = m.vocabulary if "path" in m.vocabulary else vocab.to_manifest(source_sha256=vocab_source_sha256)
            else:
                old = {int(e[0]) for e in m.vocabulary.get("entries", [])}
                vocabulary = vocab.to_manifest(sorted(old | set(used)))
            name, description, obtain = m.name, m.description, m.obtain
        else:
            vocabulary = vocab.to_manifest(used, source_sha256=vocab_source_sha256)
            name, description, obtain = self.path.stem, "", ""
        # the labels hash covers every shard; only computable here when this is the only shard
        lh = labels_hash(targets) if not self.other_entries else None
        return Manifest(
            name=name,
            description=description,
            obtain=obtain,
            sample_rate=int(sample_rate),
            clip_seconds=num_samples / sample_rate,
            num_samples=num_samples,
            n_clips=sum(s.n_clips for s in shards),
            clip_list_hash=clip_list_hash(all_ids),
            labels_hash=lh,
            vocab_hash=vocab.hash,
            vocabulary=vocabulary,
            shards=shards,
        )


def _plan_manifest(manifest_path: Path, out: Path, data_root: Optional[PathLike], vocab: Vocabulary, sample_rate: int,
                   num_samples: int) -> _ManifestPlan:
    from audiobench.data.manifest import _NAME, load_manifest, resolve_inside
    from audiobench.data.shards import inspect_shard

    where = f"manifest {manifest_path}"
    if manifest_path.exists() and not manifest_path.is_file():
        raise DataError(f"{where} is not a regular file")
    if manifest_path.suffix.lower() != ".json":
        raise ConfigError(f"--manifest {manifest_path}: a manifest is a .json file")
    existing = load_manifest(manifest_path) if manifest_path.exists() else None
    if existing is None and not _NAME.match(manifest_path.stem):
        raise ConfigError(f"--manifest {manifest_path}: the file name (the dataset's name) must be letters, digits, '.', '_', '+' or '-'")
    if existing is not None and existing.generator is not None:
        raise DataError(f"{where} describes the generated {existing.name} set; pack into another manifest")
    root = Path(data_root) if data_root is not None else manifest_path.resolve().parent
    real_root = os.path.realpath(root)
    real_out = os.path.realpath(out)
    if os.path.commonpath([real_root, real_out]) != real_root:
        raise DataError(f"shard {out} is outside the data root {root}; pass --data-root with a folder that contains it")
    rel = Path(os.path.relpath(real_out, real_root)).as_posix()
    if existing is None:
        return _ManifestPlan(manifest_path, root, rel, None, [], [])
    if existing.sample_rate != sample_rate or existing.num_samples != num_samples:
        raise DataError(
            f"{where} is {existing.sample_rate} Hz × {existing.num_samples} samples, this pack {sample_rate} Hz × {num_samples}: nothing written"
        )
    if existing.vocab_hash != vocab.hash:
        raise DataError(f"{where} uses vocabulary {existing.vocab_hash[:12]}…, this pack {vocab.hash[:12]}…: nothing written")
    others, other_ids, position, position_ids = [], [], len(existing.shards), 0
    for k, s in enumerate(existing.shards):
        if s.path == rel:
            position, position_ids = k, len(other_ids)
            continue
        p = resolve_inside(root, s.path, where)
        other_ids += inspect_shard(p).clip_ids
        others.append(s)
    if position == len(existing.shards):
        position, position_ids = len(others), len(other_ids)
    return _ManifestPlan(manifest_path, root, rel, existing, other_ids, others, position, position_ids)


# -- packing --------------------------------------------------------------------------------------
def pack(
    audio_dir: PathLike,
    labels_csv: PathLike,
    out: PathLike,
    *,
    sample_rate: int = 32000,
    clip_seconds: float = 10.0,
    vocab: Optional[Vocabulary] = None,
    manifest: Optional[PathLike] = None,
    data_root: Optional[PathLike] = None,
    skip_bad: bool = False,
    progress: bool = False,
    overwrite: bool = False,
    dtype: str = "int16",
    folds: Optional[Sequence[int]] = None,
    vocab_source_sha256: Optional[str] = None,
) -> PackResult:
    """Decode, resample, pad/trim and write ``out``; optionally write or update ``manifest``.

    ``vocab``: the label vocabulary (default: the ESC-50 CSV's own for that layout, else
    :func:`~audiobench.data.vocab.default_vocabulary`). ``dtype``: ``int16`` (PANNs) or
    ``float32``. ``folds``: ESC-50 folds to pack. Raises :class:`DataError` listing every
    problem unless ``skip_bad``; nothing is written when it raises.
    """
    sample_rate = check_sample_rate(sample_rate, "--sample-rate", ConfigError)
    try:
        clip_seconds = check_clip_seconds(clip_seconds, "--clip-seconds")
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if dtype not in SHARD_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(SHARD_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5", ".hdf"):
        raise ConfigError(f"--out {out}: a shard is an .h5 file")
    if out.exists() and (out.is_dir() or not overwrite):
        what = "is a folder" if out.is_dir() else "exists; pass --overwrite to replace it"
        raise DataError(f"shard {out} {what} (nothing written)")
    num_samples = int(round(sample_rate * clip_seconds))
    table = read_label_table(labels_csv, audio_dir, set(int(f) for f in folds) if folds is not None else None)
    if vocab is None:
        if table.vocabulary is not None:
            vocab = table.vocabulary
        else:
            from audiobench.data.vocab import default_vocabulary

            vocab = default_vocabulary()
    plan = _plan_manifest(Path(manifest), out, data_root, vocab, sample_rate, num_samples) if manifest is not None else None
    problems = list(table.problems)

    # Labels first (cheap): every unknown label, by file.
    good: List[Tuple[PackItem, List[int]]] = []
    for it in table.items:
        idx, bad = [], []
        for lab in it.labels:
            try:
                idx.append(vocab.index_of(lab))
            except DataError as exc:
                bad.append(str(exc))
        if bad:
            problems.extend((it.name, b) for b in bad)
        else:
            good.append((it, idx))
    if problems and not skip_bad:
        raise DataError(_stop_message(problems))

    # Then audio: decode everything before the shard exists, so a bad file costs nothing.
    n = len(good)
    item_bytes = SHARD_DTYPES[dtype].itemsize
    big = n * num_samples * item_bytes > (1 << 30)
    tmpdir = out.parent if out.parent.exists() else None
    if big:
        fd, buf_path = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".pcm", dir=tmpdir)
        os.close(fd)
        wav = np.memmap(buf_path, dtype=SHARD_DTYPES[dtype], mode="w+", shape=(max(n, 1), num_samples))
    else:
        buf_path = None
        wav = np.empty((n, num_samples), dtype=SHARD_DTYPES[dtype])
    writer = None
    manifest_tmp = None
    try:
        ok: List[int] = []
        clipped_samples = clipped_clips = 0
        upsampled: List[Tuple[str, int]] = []
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("packing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.description}"))
        with Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task("", total=n)
            for i, (it, _) in enumerate(good):
                bar.update(task, description=it.name)
                try:
                    clip, source_sr = decode_clip(it.path, sample_rate, num_samples)
                    over = int(np.count_nonzero(np.abs(clip) > 1.0))
                    if over:
                        clipped_samples += over
                        clipped_clips += 1
                    if source_sr < sample_rate:
                        upsampled.append((it.name, source_sr))
                    wav[i] = float_to_int16(clip) if dtype == "int16" else float_to_float32(clip)
                    ok.append(i)
                except DataError as exc:
                    problems.append((it.name, str(exc)))
                bar.advance(task)
        if problems and not skip_bad:
            raise DataError(_stop_message(problems))
        if not ok:
            raise DataError(f"pack: nothing to write, no usable clip in {audio_dir}" + (f" ({_stop_message(problems, False)})" if problems else ""))
        tgt = np.zeros((len(ok), vocab.size), dtype=bool)
        names = []
        for row, i in enumerate(ok):
            it, idx = good[i]
            tgt[row, idx] = True
            names.append(it.name)
        if plan is not None:
            dup = first_duplicate(plan.other_ids + names)
            if dup is not None:
                raise DataError(
                    f"manifest {plan.path}: clip id {dup!r} of shard {out} is already in another shard; clip ids must be unique (nothing written)"
                )
        writer = ShardWriter(out, len(ok), num_samples, vocab.size, sample_rate, names, dtype=dtype)
        block = 256
        for a in range(0, len(ok), block):
            rows = ok[a : a + block]
            contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
            data = wav[rows[0] : rows[0] + len(rows)] if contiguous else wav[rows]
            writer.write(a, data, tgt[a : a + len(rows)])
        sha = writer.finish()
        manifest_path = None
        if plan is not None:
            from audiobench.data.manifest import ShardEntry

            entry = ShardEntry(path=plan.rel, n_clips=len(ok), sha256=sha)
            m = plan.build(entry, names, tgt, vocab, np.nonzero(tgt.any(0))[0].tolist(), sample_rate, num_samples,
                           vocab_source_sha256)
            manifest_tmp = m.write_temp(plan.path)
            manifest_path = plan.path
        # everything is ready: rename the shard, then the manifest
        writer.commit()
        if manifest_tmp is not None:
            os.replace(manifest_tmp, manifest_path)
            manifest_tmp = None
    finally:
        if writer is not None and not writer._committed:
            writer.abort()
        if manifest_tmp is not None and os.path.exists(manifest_tmp):
            os.unlink(manifest_tmp)
        if buf_path is not None:
            del wav
            os.unlink(buf_path)
    result = PackResult(
        out=out,
        n_clips=len(ok),
        sha256=sha,
        sample_rate=sample_rate,
        num_samples=num_samples,
        skipped=list(problems),
        manifest=manifest_path,
        label_counts={vocab.name_of(j): int(c) for j, c in enumerate(tgt.sum(0)) if c},
        dtype=dtype,
        vocabulary=vocab,
        clipped_samples=clipped_samples,
        clipped_clips=clipped_clips,
        upsampled=upsampled,
    )
    if upsampled and dtype == "int16":
        name, sr = upsampled[0]
        warnings.warn(
            f"data pack: {len(upsampled)} of {len(ok)} clip(s) were upsampled (e.g. {name}: {sr} -> {sample_rate} Hz); "
            f"int16 rounding puts noise into the empty band above {sr // 2} Hz, which log-mel front ends see "
            "(scores differ from `predict` on the file); pack at the source rate or with --dtype float32 to avoid it",
            stacklevel=2,
        )
    return result
