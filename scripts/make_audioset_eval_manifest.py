#!/usr/bin/env python
"""Build ``data_manifests/audioset-eval.json`` from Google's official AudioSet segment list.

The manifest describes the AudioSet evaluation set in the PANNs shard layout without shipping any
audio or label names: one shard ``eval.h5`` (what PANNs' ``utils/dataset.py
pack_waveforms_to_hdf5`` writes for ``eval_segments.csv``: clips ``Y<YTID>.wav`` in the CSV's
order, 10 s at 32 kHz, int16, 527 bool targets), the clip-list hash of those ids, the labels hash
of their targets, and AudioSet's vocabulary by size and hash only (its CSV is CC BY-SA and not
shipped; ``--vocab``/``AUDIOBENCH_VOCAB`` give the names). The shard's sha256 is left null: nobody
has the same bytes (YouTube audio differs by download), so the shard is verified by its clip list
and labels when opened, and each run records the sha256 it saw.

    python scripts/make_audioset_eval_manifest.py --segments eval_segments.csv \\
        --vocab class_labels_indices.csv                      # writes data_manifests/audioset-eval.json
    python scripts/make_audioset_eval_manifest.py ... --out -  # to stdout

The segment CSV and the vocabulary CSV are read, never copied into the repository.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from audiobench.data.manifest import Manifest, ShardEntry  # noqa: E402
from audiobench.data.shards import clip_list_hash, labels_hash  # noqa: E402
from audiobench.data.vocab import load_vocabulary  # noqa: E402
from audiobench.errors import DataError  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "data_manifests" / "audioset-eval.json"
SHARD = "eval.h5"


def read_segments(path: Path):
    """``[(ytid, [mid, ...]), ...]`` in file order (3 comment lines, then YTID, start, end, "mids")."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 4:
                raise DataError(f"{path}: segment row {','.join(row)[:80]!r} needs YTID, start, end, labels")
            rows.append((row[0].strip(), [m.strip() for m in row[3].split(",") if m.strip()]))
    return rows


def build_manifest(segments: Path, vocab_csv: Path, *, name: str = "audioset-eval", sample_rate: int = 32000,
                   clip_seconds: float = 10.0) -> Manifest:
    vocab = load_vocabulary(vocab_csv)
    if not vocab.is_audioset:
        raise DataError(f"{vocab_csv} is not AudioSet's class_labels_indices.csv")
    rows = read_segments(segments)
    clip_ids = [f"Y{ytid}.wav" for ytid, _ in rows]  # PANNs' naming (ids may begin with '-')
    targets = np.zeros((len(rows), vocab.size), dtype=bool)
    for i, (_, mids) in enumerate(rows):
        for mid in mids:
            targets[i, vocab.index_of(mid)] = True
    seg_sha = hashlib.sha256(segments.read_bytes()).hexdigest()
    return Manifest(
        name=name,
        description=(
            f"AudioSet evaluation set: the {len(rows)} segments of Google's {segments.name} (sha256 {seg_sha[:16]}), "
            f"PANNs layout (one shard {SHARD}, clips Y<YTID>.wav in the list's order, {clip_seconds:g} s at "
            f"{sample_rate} Hz); audio not shipped; built by scripts/make_audioset_eval_manifest.py."
        ),
        obtain=(
            f"pack the segments with `audiobench data pack --audio-dir <folder of Y<YTID>.wav files> --labels {segments.name} "
            f"--vocab class_labels_indices.csv --sample-rate {sample_rate} --clip-seconds {clip_seconds:g} "
            f"--out <data root>/{SHARD}` (every segment is needed), or use the {SHARD} that PANNs' "
            "utils/dataset.py pack_waveforms_to_hdf5 writes"
        ),
        sample_rate=int(sample_rate),
        clip_seconds=float(clip_seconds),
        num_samples=int(round(sample_rate * clip_seconds)),
        n_clips=len(rows),
        clip_list_hash=clip_list_hash(clip_ids),
        labels_hash=labels_hash(targets),
        vocab_hash=vocab.hash,
        # AudioSet's names are not shipped: size and hash only; the full CSV supplies the names
        vocabulary={"size": vocab.size, "hash": vocab.hash, "entries": []},
        shards=[ShardEntry(path=SHARD, n_clips=len(rows), sha256=None)],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segments", required=True, type=Path, help="Google's eval_segments.csv")
    ap.add_argument("--vocab", required=True, type=Path, help="AudioSet's class_labels_indices.csv")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="manifest to write, or - for stdout [data_manifests/audioset-eval.json]")
    ap.add_argument("--name", default="audioset-eval")
    ap.add_argument("--sample-rate", type=int, default=32000)
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    args = ap.parse_args(argv)
    try:
        m = build_manifest(args.segments, args.vocab, name=args.name, sample_rate=args.sample_rate, clip_seconds=args.clip_seconds)
    except DataError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if args.out == "-":
        sys.stdout.write(m.dumps())
    else:
        m.save(args.out)
        print(f"wrote {args.out}: {m.n_clips} clips, clip_list_hash {m.clip_list_hash[:12]}, labels_hash {m.labels_hash[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
