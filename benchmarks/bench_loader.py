"""Benchmark: audiobench's batched shard loader vs a naive per-item DataLoader over the same file.

    python benchmarks/bench_loader.py                    # builds 512 × 10 s × 32 kHz int16 in a temp dir
    python benchmarks/bench_loader.py --shard my.h5      # or any PANNs-layout shard

Both loaders produce the same thing: float32 waveforms in [-1, 1] and bool targets, batch by batch,
in order. The naive loader is the usual ``torch.utils.data.Dataset`` whose ``__getitem__`` reads one
clip (``audio_name[i]``, ``waveform[i]``, ``target[i]``: three h5py calls) and converts it, batched
by ``DataLoader`` (``num_workers=0`` and ``2``; workers open the file lazily, as PANNs does).
The page cache is warmed first so the disk is out of the comparison. Prints clips/s and MB/s
(int16 audio read from the shard) of each, and the ratio of audiobench's loader to the best naive one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from audiobench.data import open_dataset
from audiobench.data.shards import ShardWriter


def build_shard(path: Path, n_clips: int, seconds: float, sample_rate: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    s = int(sample_rate * seconds)
    ids = [f"Ybench{i:06d}.wav" for i in range(n_clips)]
    with ShardWriter(path, n_clips, s, 527, sample_rate, ids) as w:
        for a in range(0, n_clips, 64):
            b = min(n_clips, a + 64)
            wav = rng.integers(-12000, 12000, size=(b - a, s), dtype=np.int16)
            tgt = rng.random((b - a, 527)) < 0.01
            w.write(a, wav, tgt)
    return path


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


class NaiveH5(torch.utils.data.Dataset):
    """One clip per __getitem__, the way most research code reads PANNs shards."""

    def __init__(self, path):
        import h5py

        self.path = str(path)
        with h5py.File(self.path, "r") as f:
            self.n = len(f["audio_name"])
        self.f = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import h5py

        if self.f is None:  # opened lazily, once per worker process
            self.f = h5py.File(self.path, "r")
        name = self.f["audio_name"][i].decode()
        wav = torch.from_numpy(self.f["waveform"][i].astype(np.float32) / 32767.0)
        tgt = torch.from_numpy(self.f["target"][i])
        return name, wav, tgt


def time_audiobench(path, batch_size, prefetch):
    ds = open_dataset(path)
    t0 = time.perf_counter()
    n = 0
    checksum = 0.0
    for b in ds.batches(batch_size, prefetch=prefetch):
        n += len(b)
        checksum += float(b.waveform[:, 0].sum())
    dt = time.perf_counter() - t0
    ds.close()
    return n, dt, checksum


def time_naive(path, batch_size, workers):
    dl = torch.utils.data.DataLoader(NaiveH5(path), batch_size=batch_size, shuffle=False, num_workers=workers)
    t0 = time.perf_counter()
    n = 0
    checksum = 0.0
    for names, wav, tgt in dl:
        n += len(names)
        checksum += float(wav[:, 0].sum())
    return n, time.perf_counter() - t0, checksum


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shard", type=Path, help="existing PANNs-layout shard (default: build one in a temp dir)")
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sample-rate", type=int, default=32000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    tmp = None
    if args.shard is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loader_")
        path = Path(tmp.name) / "bench.h5"
        t0 = time.perf_counter()
        build_shard(path, args.clips, args.seconds, args.sample_rate)
        print(f"built {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    else:
        path = args.shard
    try:
        warm_page_cache(path)
        with open_dataset(path) as ds:
            n_clips, s = len(ds), ds.num_samples
        mb_per_clip = s * 2 / 1e6  # int16 audio read from the shard
        print(
            f"shard: {n_clips} clips × {s} samples int16, batch size {args.batch_size}, "
            f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, median of {args.repeats}"
        )
        contenders = [
            ("audiobench batches (prefetch=2)", lambda: time_audiobench(path, args.batch_size, 2)),
            ("audiobench batches (prefetch=0)", lambda: time_audiobench(path, args.batch_size, 0)),
            ("naive DataLoader (num_workers=0)", lambda: time_naive(path, args.batch_size, 0)),
            ("naive DataLoader (num_workers=2)", lambda: time_naive(path, args.batch_size, 2)),
        ]
        rates = {}
        sums = set()
        for name, fn in contenders:
            fn()  # warm-up (imports, worker start-up code paths)
            times = []
            for _ in range(args.repeats):
                n, dt, checksum = fn()
                assert n == n_clips
                times.append(dt)
                sums.add(round(checksum, 3))
            dt = statistics.median(times)
            rates[name] = n_clips / dt
            print(f"{name:34s} {n_clips / dt:9.1f} clips/s {n_clips * mb_per_clip / dt:9.1f} MB/s  ({dt:.3f} s)")
        if len(sums) != 1:
            print(f"WARNING: loaders disagree on the data (checksums {sorted(sums)})", file=sys.stderr)
        ours = rates["audiobench batches (prefetch=2)"]
        naive = {k: v for k, v in rates.items() if k.startswith("naive")}
        best_name = max(naive, key=naive.get)
        print(f"ratio audiobench / naive (num_workers=0): {ours / rates['naive DataLoader (num_workers=0)']:.2f}x")
        print(f"ratio audiobench / naive (num_workers=2): {ours / rates['naive DataLoader (num_workers=2)']:.2f}x")
        print(f"ratio audiobench / best naive ({best_name}): {ours / naive[best_name]:.2f}x (target >= 3x)")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
