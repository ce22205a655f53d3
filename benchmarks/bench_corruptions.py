"""Benchmark: the AudioSet-C corruptions' throughput against the model's forward pass.

    python benchmarks/bench_corruptions.py                      # CPU, 8 clips of 10 s at 32 kHz
    python benchmarks/bench_corruptions.py --device cuda --batch-size 64
    python benchmarks/bench_corruptions.py --quick              # 4 clips of 4 s

For each corruption (at ``--severity``, default 3) it times what the engine does per batch: the
per-clip generators (``ClipRNG.for_clips``) and the corruption's call on a batch already on the
device. The baseline, measured in the same process on the same batch, is the evaluation forward
of efficientat-mn04 with random weights (``weights="random"``; the cost does not depend on the
weights) under no_grad: a corruption condition costs one such forward per clip. The ratio
corruption / forward is the figure of merit (issue #16: each within 3x, or explained).

``background`` uses ``--noise-bank`` or, without one, four seeded noise files written to a
temporary folder at 44.1 kHz (decoded and resampled once, then served from the in-memory cache,
as in a run). Timings on a shared machine are noisy: the median of ``--repeats`` runs is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from audiobench.models import load_model
from audiobench.perturb import PERTURBATIONS
from audiobench.perturb.corruptions import CORRUPTION_NAMES
from audiobench.rng import ClipRNG


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 on cpu, 64 on cuda")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--severity", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--model", default="efficientat-mn04")
    p.add_argument("--noise-bank", default=None)
    p.add_argument("--only", default=None, help="comma-separated corruption names")
    p.add_argument("--quick", action="store_true", help="4 clips of 4 s, 2 repeats")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.batch_size is None:
        a.batch_size = 64 if a.device.startswith("cuda") else 8
    if a.quick:
        a.batch_size, a.clip_seconds, a.repeats = min(a.batch_size, 4), min(a.clip_seconds, 4.0), min(a.repeats, 2)
    return a


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up (first-call set-up, caches, kernels)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def temporary_bank(folder: Path) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(0)
    for i in range(4):
        sf.write(folder / f"noise{i}.wav", (0.1 * rng.standard_normal(44100 * 10)).astype(np.float32), 44100)
    return folder


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    n = int(round(a.clip_seconds * a.sample_rate))
    g = torch.Generator().manual_seed(0)
    x = ((torch.rand(a.batch_size, n, generator=g) - 0.5) * 0.5).to(device)
    ids = [f"clip{i}" for i in range(a.batch_size)]
    model = load_model(a.model, weights="random", sample_rate=a.sample_rate, device=str(device)).eval()

    def forward():
        with torch.no_grad():
            model(x)

    t_model = timed(forward, device, a.repeats)
    names = a.only.split(",") if a.only else list(CORRUPTION_NAMES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bank = a.noise_bank or str(temporary_bank(Path(tmp)))
        for name in names:
            kw = {"bank": bank} if name == "background" else {}
            p = PERTURBATIONS.get(name)(severity=a.severity, **kw).with_sample_rate(a.sample_rate)

            def corrupt():
                rng = ClipRNG.for_clips(0, ids, p.condition_key(), device)
                p(x, rng=rng)

            t = timed(corrupt, device, a.repeats)
            rows.append({"corruption": name, "seconds_per_batch": t, "clips_per_s": a.batch_size / t, "ratio_to_forward": t / t_model})
    head = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"device {device}, batch {a.batch_size} x {a.clip_seconds:g} s at {a.sample_rate} Hz, severity {a.severity}")
    print(head)
    print(f"baseline: {a.model} forward (random weights, no_grad): {t_model * 1000:.1f} ms per batch, "
          f"{a.batch_size / t_model:.1f} clips/s")
    print(f"{'corruption':<12} {'clips/s':>9} {'ms/batch':>9} {'x forward':>10}")
    for r in rows:
        print(f"{r['corruption']:<12} {r['clips_per_s']:>9.1f} {r['seconds_per_batch'] * 1000:>9.1f} {r['ratio_to_forward']:>10.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"setup": head, "forward_s": t_model, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
