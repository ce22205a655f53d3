"""Pack audio files into an AudioSet HDF5 shard (PANNs layout, int16) and a manifest.

Labels come from either

* a ``file,labels`` CSV (extra columns ignored) whose ``labels`` are AudioSet display names or
  mids separated by ``;`` (display names may contain commas: "Beep, bleep"), like
  ``../shared/clips/labels.csv``; files are packed in CSV order; or
* Google's segment CSV (``# comment`` lines, then ``YTID, start_seconds, end_seconds, "mid,mid"``)
  matched to the files of the audio folder named ``Y<YTID>.*`` (PANNs naming) or ``<YTID>.*``;
  files are packed in name order.

Every problem (unknown label, missing/undecodable/unlabelled file) is collected and reported by
name; by default nothing is written when there is any (``skip_bad`` packs the rest and lists the
skipped files). The shard is written to a temp file and renamed into place.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from audiobench.data.audio import AUDIO_EXTENSIONS, load_clip
from audiobench.data.shards import ShardWriter, float_to_int16, sha256_file
from audiobench.data.vocab import Vocabulary
from audiobench.errors import ConfigError, DataError

PathLike = Union[str, Path]


@dataclass
class PackItem:
    path: Path  # audio file
    name: str  # audio_name written to the shard
    labels: List[str]


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


def read_labels(labels_csv: PathLike, audio_dir: PathLike) -> Tuple[List[PackItem], List[Tuple[str, str]]]:
    """Items to pack and problems found (missing / unlabelled files) from a labels CSV."""
    labels_csv, audio_dir = Path(labels_csv), Path(audio_dir)
    try:
        text = labels_csv.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"labels file {labels_csv} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"labels file {labels_csv} cannot be read: {exc}") from None
    if not audio_dir.is_dir():
        raise DataError(f"audio folder {audio_dir} does not exist or is not a folder")
    items: List[PackItem] = []
    problems: List[Tuple[str, str]] = []
    if _is_segment_csv(text):
        segments = {}
        for row in csv.reader(io.StringIO(text), skipinitialspace=True):
            if not row or row[0].lstrip().startswith("#") or row[0].strip().lower() == "ytid":
                continue
            if len(row) < 4:
                raise DataError(f"labels file {labels_csv}: segment row {','.join(row)!r} needs YTID, start, end, labels")
            segments[row[0].strip()] = [m.strip() for m in row[3].split(",") if m.strip()]
        files = sorted(p for p in audio_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        for p in files:
            stem = p.stem
            key = stem[1:] if stem.startswith("Y") and stem[1:] in segments else stem if stem in segments else None
            if key is None:
                problems.append((p.name, f"no segment for YouTube id {stem!r} in {labels_csv.name}"))
                continue
            items.append(PackItem(p, p.name, segments[key]))
        if not files:
            raise DataError(f"audio folder {audio_dir} has no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    else:
        reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
        cols = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
        if "file" not in cols or "labels" not in cols:
            raise DataError(
                f"labels file {labels_csv}: expected a 'file,labels' header or Google's segment CSV, got {','.join(reader.fieldnames or [])!r}"
            )
        seen = set()
        for row in reader:
            name = (row.get(cols["file"]) or "").strip()
            if not name:
                continue
            if name in seen:
                problems.append((name, f"listed twice in {labels_csv.name}"))
                continue
            seen.add(name)
            labels = [x.strip() for x in (row.get(cols["labels"]) or "").split(";") if x.strip()]
            p = audio_dir / name
            if not p.is_file():
                problems.append((name, f"not found in {audio_dir}"))
                continue
            items.append(PackItem(p, Path(name).name if "/" not in name else name, labels))
    return items, problems


def _stop_message(problems: Sequence[Tuple[str, str]], skip_hint: bool = True) -> str:
    shown = "; ".join(f"{n}: {r}" for n, r in problems[:8])
    more = f"; …and {len(problems) - 8} more" if len(problems) > 8 else ""
    hint = " (use --skip-bad to pack the rest)" if skip_hint else ""
    return f"pack stopped, nothing written: {len(problems)} problem(s): {shown}{more}{hint}"


def pack(
    audio_dir: PathLike,
    labels_csv: PathLike,
    out: PathLike,
    *,
    sample_rate: int = 32000,
    clip_seconds: float = 10.0,
    vocab: Vocabulary,
    manifest: Optional[PathLike] = None,
    data_root: Optional[PathLike] = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> PackResult:
    """Decode, resample, pad/trim and write ``out`` (int16 PANNs layout); optionally write or
    update ``manifest``. Raises :class:`DataError` listing every problem unless ``skip_bad``."""
    if int(sample_rate) <= 0 or not np.isfinite(clip_seconds) or clip_seconds <= 0:
        raise ConfigError(f"sample rate and clip seconds must be positive, got {sample_rate} Hz, {clip_seconds} s")
    out = Path(out)
    num_samples = int(round(sample_rate * clip_seconds))
    items, problems = read_labels(labels_csv, audio_dir)

    # Labels first (cheap): every unknown label, by file.
    good: List[Tuple[PackItem, List[int]]] = []
    for it in items:
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
    nbytes = n * num_samples * 2
    tmpdir = out.parent if out.parent.exists() else None
    big = nbytes > (1 << 30)
    if big:
        fd, buf_path = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".pcm", dir=tmpdir)
        os.close(fd)
        wav = np.memmap(buf_path, dtype=np.int16, mode="w+", shape=(max(n, 1), num_samples))
    else:
        buf_path = None
        wav = np.empty((n, num_samples), dtype=np.int16)
    try:
        ok: List[int] = []
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("packing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.description}"))
        with Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task("", total=n)
            for i, (it, _) in enumerate(good):
                bar.update(task, description=it.name)
                try:
                    wav[i] = float_to_int16(load_clip(it.path, int(sample_rate), num_samples))
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
        with ShardWriter(out, len(ok), num_samples, vocab.size, int(sample_rate), names) as w:
            block = 256
            for a in range(0, len(ok), block):
                rows = ok[a : a + block]
                contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
                data = wav[rows[0] : rows[0] + len(rows)] if contiguous else wav[rows]
                w.write(a, data, tgt[a : a + len(rows)])
    finally:
        if buf_path is not None:
            del wav
            os.unlink(buf_path)
    result = PackResult(
        out=out,
        n_clips=len(ok),
        sha256=sha256_file(out),
        sample_rate=int(sample_rate),
        num_samples=num_samples,
        skipped=list(problems),
        label_counts={vocab.name_of(j): int(c) for j, c in enumerate(tgt.sum(0)) if c},
    )
    if manifest is not None:
        result.manifest = update_manifest(
            manifest, out, data_root=data_root, vocab=vocab, used=np.nonzero(tgt.any(0))[0].tolist()
        )
    return result


def update_manifest(
    manifest_path: PathLike,
    shard: PathLike,
    *,
    data_root: Optional[PathLike] = None,
    vocab: Vocabulary,
    used: Sequence[int] = (),
) -> Path:
    """Add (or replace) ``shard`` in the manifest at ``manifest_path``, creating it if needed.

    The shard's path is stored relative to ``data_root`` (default: the manifest's folder) and must
    lie inside it. Sample rate, clip length and vocabulary must match the shards already listed.
    """
    from audiobench.data.manifest import Manifest, ShardEntry, load_manifest, resolve_inside
    from audiobench.data.shards import clip_list_hash, inspect_shard

    manifest_path = Path(manifest_path)
    root = Path(data_root) if data_root is not None else manifest_path.resolve().parent
    shard = Path(shard)
    real_root, real_shard = os.path.realpath(root), os.path.realpath(shard)
    if os.path.commonpath([real_root, real_shard]) != real_root:
        raise DataError(f"shard {shard} is outside the data root {root}; pass --data-root with a folder that contains it")
    rel = Path(os.path.relpath(real_shard, real_root)).as_posix()
    info = inspect_shard(shard)
    entry = ShardEntry(path=rel, n_clips=info.n_clips, sha256=sha256_file(shard))
    if manifest_path.exists():
        m = load_manifest(manifest_path)
        where = f"manifest {manifest_path}"
        if m.sample_rate != info.sample_rate or m.num_samples != info.num_samples:
            raise DataError(
                f"{where} is {m.sample_rate} Hz × {m.num_samples} samples, shard {shard} is {info.sample_rate} Hz × {info.num_samples}"
            )
        if m.vocab_hash != vocab.hash:
            raise DataError(f"{where} uses vocabulary {m.vocab_hash[:12]}…, this pack {vocab.hash[:12]}…")
        shards = [s for s in m.shards if s.path != rel] if any(s.path == rel for s in m.shards) else list(m.shards)
        replaced = [k for k, s in enumerate(m.shards) if s.path == rel]
        if replaced:
            shards.insert(replaced[0], entry)
        else:
            shards.append(entry)
        old_entries = {int(e[0]) for e in m.vocabulary.get("entries", [])} if "entries" in m.vocabulary else set()
        vocabulary = m.vocabulary if "path" in m.vocabulary else vocab.to_manifest(sorted(old_entries | set(used)))
        name, description = m.name, m.description
    else:
        shards = [entry]
        vocabulary = vocab.to_manifest(used)
        name, description = manifest_path.stem, ""
    clip_ids: List[str] = []
    for s in shards:
        clip_ids += inspect_shard(resolve_inside(root, s.path, f"manifest {manifest_path}")).clip_ids
    if len(set(clip_ids)) != len(clip_ids):
        seen = set()
        dup = next(c for c in clip_ids if c in seen or seen.add(c))
        raise DataError(f"manifest {manifest_path}: clip id {dup!r} of shard {shard} is already in another shard; clip ids must be unique")
    m = Manifest(
        name=name,
        description=description,
        sample_rate=int(info.sample_rate),
        clip_seconds=info.num_samples / info.sample_rate,
        num_samples=info.num_samples,
        n_clips=sum(s.n_clips for s in shards),
        clip_list_hash=clip_list_hash(clip_ids),
        vocab_hash=vocab.hash,
        vocabulary=vocabulary,
        shards=shards,
    )
    return m.save(manifest_path)
