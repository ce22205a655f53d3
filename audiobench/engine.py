"""The loop: model × condition × clip range → stored units → tidy tables.

One clip's path through the engine::

    Dataset.batches ─► Batch(clip_ids, waveform, targets) ─► perturbation(waveform, model, targets, rng)
        ─► model(perturbed) logits ─► unit file units/<model>/<cond>/<start>-<stop>.npz
        ─► (all units) metrics.tagging / metrics.shift / bootstrap ─► metrics.csv, per_clip.csv ...

Units are the source of truth: each finished (model, condition, clip range) is written atomically
as soon as it completes, so a run killed at any moment resumes where it stopped, and the
aggregate tables are always recomputed from the stored units (never accumulated in memory
across a crash). Randomness comes only from per-clip generators seeded by (seed, clip id,
condition), so results do not depend on batch size, order, device count or resume points.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from audiobench.errors import ConfigError, ResultsError
from audiobench.perturb.base import AttackTrace, Perturbation
from audiobench.rng import ClipRNG

UNIT_DIR = "units"


@dataclass
class RunConfig:
    """Everything that defines a run. ``result_config()`` is the part that changes numbers."""

    models: List[str]
    conditions: List[Perturbation]  # the clean condition first
    data: Optional[str] = None
    data_root: Optional[str] = None
    checkpoints: Dict[str, Optional[str]] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 16
    limit: Optional[int] = None
    seed: int = 0
    out: Path = Path("results")
    run_id: Optional[str] = None
    resume: bool = False
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; losses stay fp32)
    bootstrap: int = 1000
    save_audio: int = 0
    weights: str = "default"  # "default" | "random" (benchmarks only)
    trust_checks: bool = True
    on_bad_clip: str = "fail"  # "fail" | "skip" for NaN/inf/out-of-range input samples

    def result_config(self) -> Dict[str, Any]:
        """The resolved config that determines the numbers (hashed; resume must match it)."""
        return {
            "models": list(self.models),
            "conditions": [c.to_dict() for c in self.conditions],
            "data": self.data,
            "checkpoints": {m: self.checkpoints.get(m) for m in self.models},
            "limit": self.limit,
            "seed": self.seed,
            "precision": self.precision,
            "bootstrap": self.bootstrap,
            "weights": self.weights,
            "trust_checks": self.trust_checks,
            "on_bad_clip": self.on_bad_clip,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ConfigError(f"--precision {precision!r}: choose fp32 or bf16")


# --- unit storage -------------------------------------------------------------------------------
def unit_dir(run_dir: Path, model: str, cond_index: int) -> Path:
    return Path(run_dir) / UNIT_DIR / model / f"c{cond_index:03d}"


def stored_ranges(udir: Path) -> List[tuple]:
    if not udir.is_dir():
        return []
    out = []
    for p in udir.glob("*.npz"):
        stem = p.stem
        if "-" not in stem or stem.startswith("."):
            continue
        a, b = stem.split("-", 1)
        if a.isdigit() and b.isdigit():
            out.append((int(a), int(b)))
    return sorted(out)


def missing_ranges(done: Sequence[tuple], n: int) -> List[tuple]:
    """Clip ranges in [0, n) not covered by ``done`` (sorted, non-overlapping by construction)."""
    out, pos = [], 0
    for a, b in sorted(done):
        if a > pos:
            out.append((pos, min(a, n)))
        pos = max(pos, b)
    if pos < n:
        out.append((pos, n))
    return [(a, b) for a, b in out if b > a]


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived: the current batch was stored, the run can be resumed."""


class _SignalGuard:
    """Turn SIGINT/SIGTERM into a flag checked between batches (so a unit is never half-written)."""

    def __init__(self):
        self.requested: Optional[str] = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# --- per-clip geometry of a perturbation ---------------------------------------------------------
def perturbation_geometry(clean: torch.Tensor, pert: torch.Tensor) -> Dict[str, np.ndarray]:
    delta = (pert.float() - clean.float())
    energy = clean.float().pow(2).sum(dim=1)
    noise = delta.pow(2).sum(dim=1)
    snr = 10.0 * torch.log10(energy / noise)
    snr = torch.where(noise == 0, torch.full_like(snr, math.inf), snr)
    return {
        "snr_db": snr.cpu().numpy().astype(np.float64),
        "linf": delta.abs().amax(dim=1).cpu().numpy().astype(np.float64),
        "l2": noise.sqrt().cpu().numpy().astype(np.float64),
    }


# --- the runner ---------------------------------------------------------------------------------
class Runner:
    """Runs one :class:`RunConfig` into ``out/<run_id>/``; see the module docstring."""

    def __init__(self, config: RunConfig, *, progress: bool = True, log: Callable[[str], None] | None = None):
        self.config = config
        self.progress_enabled = progress
        self.log = log or (lambda msg: None)
        from audiobench.distributed import setup

        # under torchrun: join the job (gloo, or NCCL on cuda:LOCAL_RANK); else a one-rank no-op
        self.dist, self.device = setup(resolve_device(config.device))

    # -- setup -----------------------------------------------------------------------------------
    def _open_data(self):
        from audiobench.data import open_dataset

        ds = open_dataset(self.config.data, self.config.data_root)
        n = len(ds) if self.config.limit is None else min(len(ds), int(self.config.limit))
        if n <= 0:
            raise ConfigError("the dataset selection is empty (zero clips; check --limit and the data)")
        return ds, n

    def _new_run_id(self, chash: str) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{chash[:8]}"

    def prepare(self):
        """Open the data, resolve the config and (rank 0) the run folder; every rank agrees on the run id."""
        self.meta = None
        with self.dist.step("preparing the run"):
            self._prepare_local()
        self.run_id = self.dist.broadcast(getattr(self, "run_id", None))
        self.run_dir = Path(self.config.out) / self.run_id
        if len(set(self.dist.all_gather(self.config_hash))) > 1:
            raise ConfigError("the ranks of this job resolved different configs (same command and data on every rank?)")

    def _prepare_local(self):
        from audiobench import results as R

        cfg = self.config
        if cfg.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
        if cfg.on_bad_clip not in ("fail", "skip"):
            raise ConfigError(f"--on-bad-clip must be fail or skip, got {cfg.on_bad_clip!r}")
        autocast_context(self.device, cfg.precision)  # validates the name
        self.dataset, self.n_clips = self._open_data()
        # perturbations that work in seconds or Hz (occlusion) need the dataset's rate
        cfg.conditions = [
            c.with_sample_rate(self.dataset.sample_rate) if getattr(c, "needs_sample_rate", False) else c
            for c in cfg.conditions
        ]
        self.clip_ids = list(self.dataset.clip_ids[: self.n_clips])
        rc = cfg.result_config()
        rc["data_identity"] = {
            "clip_list_hash": self.dataset.clip_list_hash,
            "vocab_hash": self.dataset.vocab_hash,
            "n_clips": self.n_clips,
        }
        self.result_config = rc
        self.config_hash = R.config_hash(rc)
        if self.dist.is_main:  # only rank 0 touches the result folder
            self._prepare_folder()

    def _prepare_folder(self) -> None:
        from audiobench import results as R

        cfg = self.config
        out = R.ensure_writable_dir(Path(cfg.out))
        run_id = cfg.run_id or self._new_run_id(self.config_hash)
        if "/" in run_id or run_id in (".", "..") or not run_id.strip():
            raise ConfigError(f"--run-id {run_id!r}: must be a plain folder name")
        self.run_id = run_id
        self.run_dir = out / run_id
        existing = (self.run_dir / R.RUN_JSON).exists()
        if existing:
            meta = R.read_run_json(self.run_dir)
            if meta.get("config_hash") != self.config_hash:
                raise ResultsError(
                    f"{self.run_dir}: refusing to resume: the resolved config differs from the stored run "
                    f"(stored {str(meta.get('config_hash'))[:12]}, now {self.config_hash[:12]}); use another --run-id"
                )
            if meta.get("complete") and not cfg.resume:
                self.log(f"run {run_id} is already complete; recomputing tables from its stored units")
            self.meta = meta
        else:
            if cfg.resume and cfg.run_id:
                raise ResultsError(f"{self.run_dir}: nothing to resume (no run.json)")
            self.meta = None
        R.ensure_writable_dir(self.run_dir)

    def _base_meta(self) -> Dict[str, Any]:
        from audiobench import results as R

        cfg = self.config
        from audiobench.data.shards import clip_list_hash

        data = self.dataset.describe()
        data["n_clips"] = self.n_clips
        data["used_clip_list_hash"] = clip_list_hash(self.clip_ids)  # the clips this run used (after --limit)
        return {
            "run_id": self.run_id,
            "complete": False,
            "audiobench_version": R.versions()["audiobench"],
            "config": {
                **self.result_config,
                "device": cfg.device,
                "batch_size": cfg.batch_size,
                "out": str(cfg.out),
                "save_audio": cfg.save_audio,
            },
            "config_hash": self.config_hash,
            "versions": R.versions(),
            "git_commit": R.git_commit(),
            "device": R.device_name(self.device),
            "precision": cfg.precision,
            "seed": cfg.seed,
            "data": data,
            "models": {},
            "conditions": [
                {
                    "id": c.condition_id,
                    "perturbation": c.name,
                    # the clean condition has no swept parameter: param "" and level null (NaN in tables)
                    "param": "" if c.name == "none" else c.param,
                    "level": None if c.name == "none" else c.level,
                    "params": c.to_dict(),
                    "comparable_across_models": bool(getattr(c, "comparable_across_models", True)),
                }
                for c in cfg.conditions
            ],
            "timings": {},
            "trust": {},
            "vocab": {"names": [self.dataset.vocab.name_of(i) for i in range(self.dataset.vocab.size)]},
            "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "end_time": None,
        }

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run (or resume) every (model, condition), then write the tables. Returns the run folder."""
        from audiobench import results as R

        self.prepare()
        main = self.dist.is_main
        with contextlib.ExitStack() as stack:
            with self.dist.step("locking the run folder"):
                if main:  # rank 0 is the only writer
                    stack.enter_context(R.run_lock(self.run_dir))
            guard = stack.enter_context(_SignalGuard())
            meta = self._base_meta()
            if self.meta:  # resuming: keep the first start time and earlier timings
                meta["start_time"] = self.meta.get("start_time", meta["start_time"])
                meta["timings"] = self.meta.get("timings", {})
            self.meta = meta
            meta["world_size"] = self.dist.world_size
            if main:
                R.atomic_write_json(self.run_dir / R.RUN_JSON, meta)
            try:
                for model_name in self.config.models:
                    self._run_model(model_name, guard)
            except StopRequested:
                if main:
                    meta["end_time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    R.atomic_write_json(self.run_dir / R.RUN_JSON, meta)
                raise
            if not main:  # the other ranks are done: rank 0 aggregates the stored units alone
                return self.run_dir
            from audiobench.aggregate import aggregate_run

            aggregate_run(self.run_dir, meta, self.dataset, self.n_clips, models=self._loaded_for_latent)
            meta["complete"] = True
            meta["end_time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            R.atomic_write_json(self.run_dir / R.RUN_JSON, meta)
        return self.run_dir

    _loaded_for_latent: Dict[str, Any] = {}

    def _load_model(self, name: str):
        from audiobench.fastpath import prepare_for_attack
        from audiobench.models import load_model

        model = load_model(
            name,
            checkpoint=self.config.checkpoints.get(name),
            device=self.device,
            sample_rate=self.dataset.sample_rate,
            weights=self.config.weights,
        )
        # The fast path is the default: frozen weights (input-only gradients) and, for CNNs on
        # CUDA under bf16, channels_last. fp32 keeps the default layout so its results are
        # bit-identical to the plain path on every device.
        return prepare_for_attack(model, self.device, precision=self.config.precision,
                                  channels_last="auto" if self.config.precision != "fp32" else False)

    def _run_model(self, model_name: str, guard: _SignalGuard) -> None:
        from audiobench import results as R

        main = self.dist.is_main
        with self.dist.step(f"loading model {model_name}"):
            model = self._load_model(model_name)
        self.meta["models"][model_name] = {
            "spec": model.spec.to_dict(),
            "checkpoint": getattr(model, "checkpoint_path", None),
            "checkpoint_sha256": getattr(model, "checkpoint_sha256", None),
        }
        if len({m["checkpoint_sha256"] for m in self.dist.all_gather(self.meta["models"][model_name])}) > 1:
            raise ConfigError(f"model {model_name}: the ranks of this job loaded different checkpoints")
        if main:
            R.atomic_write_json(self.run_dir / R.RUN_JSON, self.meta)
        for ci, cond in enumerate(self.config.conditions):
            self._run_condition(model_name, model, ci, cond, guard)
            if main:
                R.atomic_write_json(self.run_dir / R.RUN_JSON, self.meta)
        if self.config.trust_checks:
            from audiobench.trust import run_tenfold_checks

            # the 10x-eps check covers only the first clips: rank 0 computes it, the others wait
            with self.dist.step(f"the 10x-eps trust check of {model_name}"):
                if main:
                    run_tenfold_checks(self, model_name, model)
        # keep only the head for the latent metrics (cheap), drop the rest of the model
        self._loaded_for_latent = {**self._loaded_for_latent, model_name: model if model.spec.has_embedding else None}

    def _progress(self):
        if not self.progress_enabled:
            return contextlib.nullcontext(None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from audiobench.progress import ClipsPerSecondColumn, stderr_console

        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), ClipsPerSecondColumn(),
            TimeRemainingColumn(), console=stderr_console(), transient=False,
        )

    def _run_condition(self, model_name: str, model, ci: int, cond: Perturbation, guard: _SignalGuard) -> None:
        from audiobench import results as R

        from audiobench.data.batch import Batch
        from audiobench.data.dataset import BatchIterator
        from audiobench.distributed import fail_hook, shard_batches, split_batches

        cfg = self.config
        main, dist = self.dist.is_main, self.dist
        udir = unit_dir(self.run_dir, model_name, ci)
        # rank 0 reads what is stored (units are the source of truth) and tells the others
        todo = dist.broadcast(missing_ranges(stored_ranges(udir), self.n_clips) if main else None)
        if not todo:
            return
        if main:
            udir.mkdir(parents=True, exist_ok=True)
        if getattr(cond, "requires_fit", False):
            with dist.solo_errors(f"fitting {model_name} {cond.condition_id}"):
                self._fit(model_name, model, ci, cond, udir)
        remaining = sum(b - a for a, b in todo)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        # the single-process batches, dealt round-robin: round k = batches k*world .. k*world+world-1
        batches = split_batches(todo, cfg.batch_size)
        mine = shard_batches(batches, dist.rank, dist.world_size)
        rounds = -(-len(batches) // dist.world_size)
        t0 = time.perf_counter()
        show = self._progress() if main else contextlib.nullcontext(None)
        it = BatchIterator(self.dataset, mine, self.device, 2)
        with show as progress, contextlib.closing(it):
            task = None
            if progress is not None:
                task = progress.add_task(f"{model_name} {cond.condition_id}", total=self.n_clips, completed=self.n_clips - remaining)
            stream = iter(it)
            for k in range(rounds):
                result, error = None, None
                if k < len(mine):
                    try:
                        fail_hook(dist, k)
                        batch = next(stream)
                        unit = self._process_batch_splitting(model, cond, batch)
                        result = (batch.start, list(batch.clip_ids), unit, unit.pop("_pert", None))
                    except Exception as exc:
                        if not dist.active:
                            raise
                        error = exc
                # every rank reports each round (rank 0 writes the units), so a failure or a stop
                # signal anywhere stops every rank after this round, with the finished units stored
                gathered = dist.gather((result, guard.requested, error is not None))
                if main:
                    for res, _, _ in gathered:
                        if res is None:
                            continue
                        start, ids, unit, pert = res
                        R.atomic_write_npz(udir / f"{start:08d}-{start + len(ids):08d}.npz", **unit)
                        if pert is not None:
                            self._save_audio(model_name, cond, Batch(ids, torch.empty(0), torch.empty(0), start), pert)
                        if progress is not None:
                            progress.advance(task, len(ids))
                failed = any(g[2] for g in gathered) if main else False
                stop = next((g[1] for g in gathered if g[1]), None) if main else None
                failed, stop = dist.broadcast((failed, stop))
                if failed:  # every rank learns who failed and why; rank 0 reports it
                    dist.agree(error, f"computing {model_name} {cond.condition_id}")
                if stop:
                    raise StopRequested(stop)
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _rss_peak_bytes()
        timing = self.meta["timings"].setdefault(model_name, {}).setdefault(cond.condition_id, {"wall_s": 0.0, "clips": 0})
        timing["wall_s"] = float(timing.get("wall_s", 0.0)) + wall
        timing["clips"] = int(timing.get("clips", 0)) + remaining
        timing["clips_per_s"] = timing["clips"] / timing["wall_s"] if timing["wall_s"] > 0 else None
        timing["peak_mem_bytes"] = int(max(peak, timing.get("peak_mem_bytes", 0) or 0))

    def _fit(self, model_name: str, model, ci: int, cond, udir: Path) -> None:
        """Learn a dataset-level perturbation (``universal``) once; stored so a resume reuses it."""
        from audiobench import results as R

        path = udir / "fitted_state.npz"
        dist = self.dist
        stored = None
        if dist.is_main and path.exists():
            with np.load(path) as z:
                stored = {k: z[k] for k in z.files}
        stored = dist.broadcast(stored)
        if stored is not None:
            cond.load_state({k: torch.from_numpy(v) for k, v in stored.items()})
            return
        cfg = self.config
        if not dist.active:

            def batches():
                for b in self.dataset.batches(cfg.batch_size, start=0, stop=self.n_clips, device=self.device):
                    yield b

            hook = None
        else:
            batches, hook = self._sharded_fit_batches()
        with autocast_context(self.device, cfg.precision):
            cond.fit(model, batches, device=self.device, rng_seed=cfg.seed, grad_hook=hook)
        # every rank took the same steps; rank 0's delta is the one stored and used everywhere
        state = dist.broadcast({k: v.detach().cpu().numpy() for k, v in cond.state_dict().items()})
        if dist.active:
            cond.load_state({k: torch.from_numpy(v) for k, v in state.items()})
        if dist.is_main:
            R.atomic_write_npz(path, **state)

    def _sharded_fit_batches(self):
        """Batches and gradient hook for fitting across ranks: each single-process batch is split
        between the ranks and the gradients of the parts are summed (all-reduce), so each step
        is the single-process step up to float summation order. A rank whose part is empty feeds
        one clip and contributes a zero gradient, so every rank calls the all-reduce each step."""
        from audiobench.data.dataset import BatchIterator
        from audiobench.distributed import split_batch, split_batches

        dist, cfg = self.dist, self.config
        parts, empty = [], []
        for a, b in split_batches([(0, self.n_clips)], cfg.batch_size):
            lo, hi = split_batch(a, b, dist.rank, dist.world_size)
            empty.append(hi <= lo)
            parts.append((lo, hi) if hi > lo else (a, a + 1))
        current = {"empty": False}

        def batches():
            it = BatchIterator(self.dataset, parts, self.device, 2)
            with contextlib.closing(it):
                for batch, is_empty in zip(it, empty):
                    current["empty"] = is_empty
                    yield batch

        def hook(g: torch.Tensor) -> torch.Tensor:
            return dist.all_reduce_sum(torch.zeros_like(g) if current["empty"] else g)

        return batches, hook

    def _process_batch_splitting(self, model, cond, batch) -> Dict[str, np.ndarray]:
        """Process a batch; on CUDA out-of-memory, split it in halves and retry (same results:
        every random draw is per clip)."""
        try:
            return self._process_batch(model, cond, batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                from audiobench.errors import AudiobenchError

                raise AudiobenchError(
                    f"CUDA out of memory on a single clip ({batch.clip_ids[0]}) of condition {cond.condition_id}; "
                    f"free GPU memory, use --precision bf16, or run with --device cpu"
                ) from None
            torch.cuda.empty_cache()
            half = len(batch) // 2
            warnings.warn(f"CUDA out of memory at batch size {len(batch)}; retrying as {half} + {len(batch) - half}")
            from audiobench.data.batch import Batch

            parts = [
                Batch(batch.clip_ids[:half], batch.waveform[:half], batch.targets[:half], batch.start),
                Batch(batch.clip_ids[half:], batch.waveform[half:], batch.targets[half:], batch.start + half),
            ]
            units = [self._process_batch_splitting(model, cond, p) for p in parts]
            return merge_units(units)

    def _process_batch(self, model, cond, batch) -> Dict[str, np.ndarray]:
        from audiobench.errors import DataError

        cfg = self.config
        clean = batch.waveform.to(self.device, non_blocking=True)
        targets = batch.targets.to(self.device, non_blocking=True)
        bad = ~torch.isfinite(clean).all(dim=1) | (clean.abs() > 1.0).any(dim=1)
        if bool(bad.any()):
            first = batch.clip_ids[int(torch.nonzero(bad)[0, 0])]
            if cfg.on_bad_clip == "fail":
                raise DataError(
                    f"clip {first!r}: waveform has NaN/inf or samples outside [-1, 1] "
                    f"({int(bad.sum())} such clip(s) in this batch); use --on-bad-clip skip to leave them out"
                )
            clean = torch.where(bad[:, None], torch.zeros_like(clean), clean)
            if not getattr(cond, "name", "") or cond.name == "none":  # warn once per batch, on the clean pass
                warnings.warn(f"--on-bad-clip skip: leaving out {int(bad.sum())} clip(s) with NaN/inf or out-of-range "
                              f"samples (first: {first!r}); counted as bad_input_clips")
        rng = ClipRNG.for_clips(cfg.seed, batch.clip_ids, cond.condition_key(), self.device)
        trace = AttackTrace()
        want_emb = bool(model.spec.has_embedding)
        with autocast_context(self.device, cfg.precision):
            if getattr(cond, "domain", "waveform") == "feature":
                with torch.no_grad():
                    feats = model.features(clean)
                feats_p = cond.perturb_features(feats, model=model, targets=targets, rng=rng, trace=trace)
                pert = clean
                with torch.no_grad():
                    logits, emb = _forward_features(model, feats_p, want_emb)
            else:
                pert = cond(clean, model=model, targets=targets, rng=rng, trace=trace)
                with torch.no_grad():
                    logits, emb = _forward_features(model, model.features(pert), want_emb)
        unit: Dict[str, np.ndarray] = {
            "clip_ids": np.asarray(batch.clip_ids, dtype=str),
            "logits": logits.float().cpu().numpy(),
            "bad_input": bad.cpu().numpy(),
            **perturbation_geometry(clean, pert),
        }
        if emb is not None:
            unit["embedding"] = emb.float().cpu().numpy()
        if cfg.save_audio and batch.start < cfg.save_audio and getattr(cond, "domain", "waveform") != "feature":
            unit["_pert"] = pert.detach().float().cpu().numpy()
        unit.update(trace_arrays(trace))
        if cfg.trust_checks and getattr(cond, "uses_model", False) and getattr(cond, "param", None) == "eps":
            from audiobench.trust import reference_logits

            unit.update(reference_logits(self, model, cond, clean, pert, targets, batch.clip_ids))
        return unit

    def _save_audio(self, model_name, cond, batch, pert: np.ndarray) -> None:
        """Write the first clips of a condition as float32 WAV so people can listen."""
        import soundfile as sf

        n = min(len(batch), self.config.save_audio - batch.start)
        folder = self.run_dir / "audio" / model_name / _safe_name(cond.condition_id)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(max(n, 0)):
            path = folder / f"{_safe_name(batch.clip_ids[i])}.wav"
            sf.write(str(path), pert[i].astype(np.float32), self.dataset.sample_rate, subtype="FLOAT")


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)


def _forward_features(model, feats, want_emb: bool):
    if want_emb:
        emb = model.embed_features(feats)
        return model.head(emb), emb
    return model.forward_features(feats), None


def trace_arrays(trace: AttackTrace) -> Dict[str, np.ndarray]:
    out = {
        "trace_loss_sum": np.asarray(trace.loss_sum_per_step, dtype=np.float64),
        "trace_n_per_step": np.asarray(trace.n_per_step, dtype=np.int64),
        "trace_n": np.asarray(trace.n_clips, dtype=np.int64),
        "trace_bad_grad": np.asarray(trace.bad_grad_clips, dtype=np.int64),
    }
    for k, v in getattr(trace, "per_clip", {}).items():
        out[f"pc_{k}"] = np.asarray(v, dtype=np.float64)
    return out


def merge_units(units: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    out = {}
    for k in units[0]:
        vals = [u[k] for u in units]
        if k in ("trace_loss_sum", "trace_n_per_step"):
            n = max(len(v) for v in vals)
            out[k] = sum(np.pad(v, (0, n - len(v))) for v in vals) if n else vals[0]
        elif k in ("trace_n", "trace_bad_grad"):
            out[k] = np.asarray(sum(int(v) for v in vals))
        else:
            out[k] = np.concatenate(vals, axis=0)
    return out


def load_units(udir: Path, n_clips: int) -> Dict[str, np.ndarray]:
    """All stored units of one (model, condition), merged in clip order; checks full coverage."""
    ranges = stored_ranges(udir)
    if missing_ranges(ranges, n_clips):
        raise ResultsError(f"{udir}: stored units do not cover all {n_clips} clips (resume the run)")
    units, pos = [], 0
    for a, b in ranges:
        if a < pos:  # overlapping unit from a resume with another batch size: skip fully covered
            if b <= pos:
                continue
            raise ResultsError(f"{udir}: overlapping units {a}-{b}")
        with np.load(udir / f"{a:08d}-{b:08d}.npz") as z:
            units.append({k: z[k] for k in z.files})
        pos = b
        if pos >= n_clips:
            break
    merged = merge_units(units)
    if len(merged["logits"]) != n_clips:
        raise ResultsError(f"{udir}: units hold {len(merged['logits'])} clips, expected {n_clips}")
    return merged


def _rss_peak_bytes() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return 0
