"""Scheduling: model × job (condition or trust companion) × clip range → stored units.

:class:`Runner` runs one :class:`~audiobench.engine.config.RunConfig` into ``out/<run_id>/``: it
opens the data, plans each model's jobs (:mod:`audiobench.engine.plan`), computes the clip ranges
still missing (resume), deals the batches to the ranks of a torchrun job, runs each batch through
:func:`~audiobench.engine.step.evaluate_batch_splitting` and has rank 0 store every finished
batch as a unit at once; then it aggregates the units into the tables
(:mod:`audiobench.engine.aggregate`). SIGINT/SIGTERM stop it between batches with every finished
unit kept.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from audiobench.device import autocast, parse_device
from audiobench.engine.config import RunConfig
from audiobench.engine.distributed import fail_hook, setup, shard_batches, split_batch, split_batches
from audiobench.engine.plan import Job, ModelPlan, plan_model
from audiobench.engine.rundir import RunFolder, base_meta, now_iso
from audiobench.engine.step import StepSettings, evaluate_batch_splitting
from audiobench.engine.units import (
    check_identities,
    load_units,
    missing_ranges,
    stored_ranges,
    unit_identity,
    write_unit,
)
from audiobench.errors import ConfigError
from audiobench.fileio import atomic_write_npz
from audiobench.results import provenance


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived: the current batch was stored, the run can be resumed."""


class SignalGuard:
    """Turn SIGINT/SIGTERM into a flag checked between batches (so a unit is never half-written)."""

    def __init__(self):
        self.requested: Optional[str] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self):
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


def clean_energy(waveform: torch.Tensor, bad_input: np.ndarray, device: torch.device) -> np.ndarray:
    """Per clip, the sum of squares of the clean clip the perturbation started from (bad clips are
    replaced by silence: 0), computed as the realised SNR computes it (float32 sums on the run's
    device). Stored in every unit and in scores.npz, so verify-run can check each condition's
    realised SNR against its L2 norm: snr_db = 10·log10(clean_energy / l2²)."""
    e = waveform.to(device).float().pow(2).sum(dim=-1).cpu().numpy().astype(np.float64)
    return np.where(np.asarray(bad_input, dtype=bool), 0.0, e)


def _rss_peak_bytes() -> int:
    """This process's peak resident memory: Linux's VmHWM (reset by exec), else ru_maxrss (which
    Linux carries over an exec, so a run started from a large parent would report the parent's)."""
    try:
        with open("/proc/self/status") as f:
            line = next((ln for ln in f if ln.startswith("VmHWM:")), None)
        if line is not None:
            return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return 0


class Runner:
    """Runs one :class:`RunConfig`; see the module docstring."""

    def __init__(self, config: RunConfig, *, progress: bool = True, log: Callable[[str], None] | None = None):
        self.config = config
        self.progress_enabled = progress
        self.log = log or (lambda msg: None)
        config.validate()
        # under torchrun: join the job (gloo, or NCCL on cuda:LOCAL_RANK); else a one-rank no-op
        self.dist, self.device = setup(parse_device(config.device))
        self.folder: Optional[RunFolder] = None
        self.run_id: Optional[str] = None
        self.meta: Dict[str, Any] = {}
        self.plans: Dict[str, ModelPlan] = {}
        self._models_for_latent: Dict[str, Any] = {}

    # -- preparation -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Open the data, resolve the config and (rank 0) check the run folder; creates nothing."""
        with self.dist.step("preparing the run"):
            self._prepare_local()
        self.run_id = self.dist.broadcast(self.run_id)
        if len(set(self.dist.all_gather(self.config_hash))) > 1:
            raise ConfigError("the ranks of this job resolved different configs (same command and data on every rank?)")

    def _prepare_local(self) -> None:
        from audiobench.data import open_dataset

        cfg = self.config
        self.dataset = open_dataset(cfg.data, cfg.data_root)
        n = len(self.dataset) if cfg.limit is None else min(len(self.dataset), int(cfg.limit))
        if n <= 0:
            raise ConfigError("the dataset selection is empty (zero clips; check --limit and the data)")
        self.n_clips = n
        # perturbations that work in seconds or Hz (occlusion) need the dataset's rate
        cfg.conditions = [c.with_sample_rate(self.dataset.sample_rate) if c.needs_sample_rate else c for c in cfg.conditions]
        self.clip_ids = list(self.dataset.clip_ids[:n])
        rc = cfg.result_config()
        rc["data_identity"] = {
            "clip_list_hash": self.dataset.clip_list_hash,
            "vocab_hash": self.dataset.vocab_hash,
            "n_clips": n,
        }
        self.result_config = rc
        self.config_hash = provenance.config_hash(rc)
        self.settings = StepSettings(seed=cfg.seed, precision=cfg.precision, on_bad_clip=cfg.on_bad_clip,
                                     record_attack_l2=cfg.trust_checks, keep_perturbed=cfg.save_audio > 0,
                                     sample_rate=int(self.dataset.sample_rate))
        if self.dist.is_main:  # only rank 0 touches the result folder
            self.folder = RunFolder(cfg.out, cfg.run_id, self.config_hash, resume=cfg.resume, log=self.log)
            self.folder.prepare()
            self.run_id = self.folder.run_id

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out) / str(self.run_id)

    def _materialise(self) -> None:
        """Create the run folder and write run.json, just before the first result is stored."""
        if self.dist.is_main:
            self.folder.materialise(self.meta)

    def _write_meta(self) -> None:
        if self.dist.is_main and self.folder.exists:
            self.folder.write_meta(self.meta)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run (or resume) every model and job, then write the tables. Returns the run folder."""
        self.prepare()
        main = self.dist.is_main
        session = self.folder.session() if main else contextlib.nullcontext()
        with session, SignalGuard() as guard:
            meta = base_meta(self.run_id, self.config, self.result_config, self.config_hash, self.dataset,
                             self.n_clips, self.clip_ids, self.device)
            previous = self.folder.previous if main else None
            if previous is not None:  # resuming: keep the first start time and earlier timings
                meta["start_time"] = previous.raw.get("start_time", meta["start_time"])
                meta["timings"] = previous.raw.get("timings") or {}
            meta["world_size"] = self.dist.world_size
            self.meta = meta
            try:
                self._load_models()
                self._craft_sources(guard)
                self._sources = {}  # source-only models are no longer needed
                for model_name in self.config.models:
                    self._run_model(model_name, guard)
            except StopRequested:
                meta["end_time"] = now_iso()
                self._write_meta()
                raise
            if not main:  # the other ranks are done: rank 0 aggregates the stored units alone
                return self.run_dir
            from audiobench.engine.aggregate import aggregate_run

            self._materialise()
            aggregate_run(self.run_dir, meta, self.dataset, self.n_clips, self.plans, models=self._models_for_latent)
            meta["complete"] = True
            meta["end_time"] = now_iso()
            self.folder.write_meta(meta)
        return self.run_dir

    def _load_model(self, name: str):
        """Resolve model ``name`` (registered, plugin, module:factory, hf:, @variant, or an object
        given to the API), then check it can do what the conditions ask and probe it on a short
        batch, so a broken model is one line before any work starts."""
        from audiobench.fastpath import prepare_for_attack
        from audiobench.models.contract import check_capabilities, needs_gradient, probe_model
        from audiobench.models.resolve import resolve_model

        cfg = self.config
        source = cfg.model_objects.get(name, name)
        model = resolve_model(
            source, checkpoint=cfg.checkpoints.get(name), device=self.device, sample_rate=self.dataset.sample_rate,
            weights=cfg.weights, label_map=cfg.label_map, dataset_vocab=self.dataset.vocab,
            name=name if name in cfg.model_objects else None,
        )
        check_capabilities(model, cfg.conditions, latent_metrics=False)
        probe = probe_model(model, sample_rate=self.dataset.sample_rate, n_classes=self.dataset.vocab.size,
                            needs_grad=needs_gradient(cfg.conditions), device=self.device)
        # The fast path is the default: frozen weights (input-only gradients) and, for CNNs on
        # CUDA under bf16, channels_last. fp32 keeps the default layout so its results are
        # bit-identical to the plain path on every device.
        model = prepare_for_attack(model, self.device, precision=cfg.precision,
                                   channels_last="auto" if cfg.precision != "fp32" else False)
        return model, probe

    def _load_models(self) -> None:
        """Load, check and probe every model (and every transfer source) before the first job."""
        from audiobench.models.resolve import model_provenance

        self._models = {}
        self._sources = {}
        sources = [m for c in self.config.conditions if c.name == "transfer" for m in c.sources]
        for model_name in dict.fromkeys(list(self.config.models) + sources):
            with self.dist.step(f"loading model {model_name}"):
                model, probe = self._load_model(model_name)
            provenance = getattr(model, "provenance", None) or model_provenance(model)
            # transfer sources that are not targets are recorded apart (they have no result rows)
            where = "models" if model_name in self.config.models else "transfer_sources"
            self.meta.setdefault(where, {})[model_name] = {
                "spec": model.spec.to_dict(),
                "checkpoint": getattr(model, "checkpoint_path", None),
                "checkpoint_sha256": getattr(model, "checkpoint_sha256", None),
                "provenance": provenance,
                "probe": probe,
                "variant": getattr(model, "variant_info", None),  # quantization recipe and weight bytes
            }
            if len({m["checkpoint_sha256"] for m in self.dist.all_gather(self.meta[where][model_name])}) > 1:
                raise ConfigError(f"model {model_name}: the ranks of this job loaded different checkpoints")
            if model_name in self.config.models:
                self._models[model_name] = model
            if model_name in sources:
                self._sources[model_name] = model

    def _run_model(self, model_name: str, guard: SignalGuard) -> None:
        model = self._models.pop(model_name)
        plan = plan_model(self.config.conditions, self.n_clips, trust_checks=self.config.trust_checks)
        self.plans[model_name] = plan
        self._write_meta()
        for job in plan.jobs:
            self._run_job(model_name, model, job, guard)
            self._write_meta()
        # keep only what the latent metrics need (the head), drop the rest of the model
        self._models_for_latent[model_name] = model if model.spec.has_embedding else None

    def _progress(self):
        if not self.progress_enabled:
            return contextlib.nullcontext(None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from audiobench.progress import ClipsPerSecondColumn, stderr_console

        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), ClipsPerSecondColumn(),
            TimeRemainingColumn(), console=stderr_console(), transient=False,
        )

    def _parent_l2(self, model_name: str, job: Job) -> Optional[np.ndarray]:
        """The per-clip L2 norms of the attack's own change, for a same-L2 companion."""
        if job.companion is None or not job.companion.same_l2_as_parent:
            return None
        from audiobench.engine.units import unit_dir

        ident = {"config_hash": self.config_hash, "model": model_name, "job": f"c{job.parent:03d}"}
        u = load_units(unit_dir(self.run_dir, model_name, job.parent), self.n_clips, ident)
        # a see-through chain records its delta's size before the corruption (pc_attack_l2); a
        # chain on a base its change after the base (attack_l2); a plain attack: l2
        for key in ("pc_attack_l2", "attack_l2", "l2"):
            if key in u:
                return np.asarray(u[key], dtype=np.float64)
        return None

    def _run_job(self, model_name: str, model, job: Job, guard: SignalGuard) -> None:
        """One job of one model over every clip range still missing."""
        cond = job.condition
        udir = job.unit_dir(self.run_dir, model_name)
        source = None
        if job.companion is None and cond.name == "transfer":
            source = self._source_dir(cond)

        def prepare():
            if job.companion is None and cond.requires_fit:
                with self.dist.solo_errors(f"fitting {model_name} {cond.condition_id}"):
                    self._fit(model, cond, udir, unit_identity(self.config_hash, model_name, job.key + ".fit", 0, 0))
            return self.dist.broadcast(self._parent_l2(model_name, job) if self.dist.is_main else None)

        def compute(batch, parent_l2):
            l2 = None if parent_l2 is None else parent_l2[batch.start:batch.start + len(batch)]
            crafted = None if source is None else self._crafted(source, batch)
            return evaluate_batch_splitting(model, cond, batch, self.settings, device=self.device,
                                            companion=job.companion, parent_l2=l2, crafted=crafted)

        def stored(start, ids, pert):
            if pert is not None:
                self._save_audio(model_name, cond, start, ids, pert)

        wall, clips = self._run_batches(udir, model_name, job.key, job.n_clips, f"{model_name} {job.label}", guard,
                                        prepare, compute, stored)
        if job.companion is None and clips:
            self._record_timing(model_name, cond.condition_id, wall, clips)

    def _run_batches(self, udir: Path, owner: str, key: str, n_clips: int, label: str, guard: SignalGuard,
                     prepare, compute, stored=None):
        """Compute and store the missing clip ranges of one job folder ``udir``: rank 0 finds what
        is stored, the batches are dealt to the ranks round by round, rank 0 writes each finished
        batch as a unit (identity: this run's config hash, ``owner``, ``key``). Returns (wall
        seconds, clips computed)."""
        from audiobench.data.dataset import BatchIterator

        cfg, dist = self.config, self.dist
        main = dist.is_main
        # rank 0 reads what is stored (units are the source of truth) and tells the others; a unit
        # that this run did not compute (copied from another run) is refused before any work
        if main:
            check_identities(udir, {"config_hash": self.config_hash, "model": owner, "job": key})
        todo = dist.broadcast(missing_ranges(stored_ranges(udir), n_clips) if main else None)
        if not todo:
            return 0.0, 0
        self._materialise()
        if main:
            udir.mkdir(parents=True, exist_ok=True)
        context = prepare()
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
                task = progress.add_task(label, total=n_clips, completed=n_clips - remaining)
            stream = iter(it)
            for k in range(rounds):
                result, error = None, None
                if k < len(mine):
                    try:
                        fail_hook(dist, k)
                        batch = next(stream)
                        with self._step_progress(progress, task, label, batch):
                            unit = compute(batch, context)
                        unit["clean_energy"] = clean_energy(batch.waveform, unit["bad_input"], self.device)
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
                        write_unit(udir, start, start + len(ids), unit,
                                   unit_identity(self.config_hash, owner, key, start, start + len(ids)))
                        if stored is not None:
                            stored(start, ids, pert)
                        if progress is not None:
                            progress.advance(task, len(ids))
                failed = any(g[2] for g in gathered) if main else False
                stop = next((g[1] for g in gathered if g[1]), None) if main else None
                failed, stop = dist.broadcast((failed, stop))
                if failed:  # every rank learns who failed and why; rank 0 reports it
                    dist.agree(error, f"computing {label}")
                if stop:
                    raise StopRequested(stop)
        return time.perf_counter() - t0, remaining

    @staticmethod
    def _step_progress(progress, task, label: str, batch):
        """Show the gradient steps of the batch being computed in the task's description."""
        if progress is None:
            return contextlib.nullcontext()
        from audiobench.progress import on_attack_steps

        count = [0]

        def bump():
            count[0] += 1
            progress.update(task, description=f"{label} (clips {batch.start}-{batch.start + len(batch)}: "
                                              f"gradient step {count[0]})")

        @contextlib.contextmanager
        def scope():
            with on_attack_steps(bump):
                yield
            if count[0]:
                progress.update(task, description=label)

        return scope()

    # -- transfer attacks ------------------------------------------------------------------------
    def _source_dir(self, cond) -> Path:
        from audiobench.engine.units import source_dir

        return source_dir(self.run_dir, cond.source, self._transfer_index[cond.condition_id])

    def _craft_sources(self, guard: SignalGuard) -> None:
        """Craft every transfer condition's clips once on its source (model or ensemble), before
        any target scores them; stored as units so a resume reuses them."""
        from audiobench.engine.step import craft_batch
        from audiobench.perturb.transfer import EnsembleSource

        self._transfer_index = {}
        crafted_any = False
        for ci, cond in enumerate(self.config.conditions):
            if cond.name != "transfer":
                continue
            self._transfer_index[cond.condition_id] = ci
            members = [self._sources[m] for m in cond.sources]
            source = members[0] if len(members) == 1 else EnsembleSource(members).eval()
            attack = cond.attack_perturbation
            udir = self._source_dir(cond)

            def compute(batch, _context, source=source, attack=attack):
                return craft_batch(source, attack, batch, self.settings, device=self.device)

            self._run_batches(udir, f"source:{cond.source}", f"c{ci:03d}", self.n_clips,
                              f"crafting {attack.condition_id} on {cond.source}", guard, lambda: None, compute)
            crafted_any = True
        if crafted_any:
            self._write_meta()

    def _crafted(self, udir: Path, batch) -> torch.Tensor:
        """The crafted clips of ``batch``'s range (from the source's stored units)."""
        from audiobench.engine.units import load_range

        ident = None  # checked when the crafting loop ran (check_identities)
        arr = load_range(udir, batch.start, batch.start + len(batch), "perturbed", ident)
        return torch.from_numpy(arr)

    def _record_timing(self, model_name: str, condition_id: str, wall: float, clips: int) -> None:
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _rss_peak_bytes()
        timing = self.meta["timings"].setdefault(model_name, {}).setdefault(condition_id, {"wall_s": 0.0, "clips": 0})
        timing["wall_s"] = float(timing.get("wall_s", 0.0)) + wall
        timing["clips"] = int(timing.get("clips", 0)) + clips
        timing["clips_per_s"] = timing["clips"] / timing["wall_s"] if timing["wall_s"] > 0 else None
        timing["peak_mem_bytes"] = int(max(peak, timing.get("peak_mem_bytes", 0) or 0))

    def _fit(self, model, cond, udir: Path, identity: Dict[str, Any]) -> None:
        """Learn a dataset-level perturbation (``universal``) once; stored so a resume reuses it."""
        path = udir / "fitted_state.npz"
        dist = self.dist
        stored = None
        if dist.is_main and path.exists():
            from audiobench.engine.units import read_unit

            stored = read_unit(path)
        stored = dist.broadcast(stored)
        if stored is not None:
            cond.load_state({k: torch.from_numpy(v) for k, v in stored.items()})
            return
        cfg = self.config
        if not dist.active:

            def batches():
                yield from self.dataset.batches(cfg.batch_size, start=0, stop=self.n_clips, device=self.device)

            hook = None
        else:
            batches, hook = self._sharded_fit_batches()
        with autocast(self.device, cfg.precision):
            cond.fit(model, batches, device=self.device, rng_seed=cfg.seed, grad_hook=hook)
        # every rank took the same steps; rank 0's delta is the one stored and used everywhere
        state = dist.broadcast({k: v.detach().cpu().numpy() for k, v in cond.state_dict().items()})
        if dist.active:
            cond.load_state({k: torch.from_numpy(v) for k, v in state.items()})
        if dist.is_main:
            import json

            from audiobench.engine.units import IDENTITY_KEY

            atomic_write_npz(path, **state, **{IDENTITY_KEY: np.asarray(json.dumps(identity, sort_keys=True))})

    def _sharded_fit_batches(self):
        """Batches and gradient hook for fitting across ranks: each single-process batch is split
        between the ranks and the gradients of the parts are summed (all-reduce), so each step
        is the single-process step up to float summation order. A rank whose part is empty feeds
        one clip and contributes a zero gradient, so every rank calls the all-reduce each step."""
        from audiobench.data.dataset import BatchIterator

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

    def _save_audio(self, model_name: str, cond, start: int, clip_ids, pert: np.ndarray) -> None:
        """Write the first clips of a condition as float32 WAV so people can listen."""
        import soundfile as sf

        from audiobench.fileio import AtomicFile
        from audiobench.results.schema import audio_path

        n = min(len(clip_ids), self.config.save_audio - start)
        for i in range(max(n, 0)):
            path = audio_path(self.run_dir, model_name, cond.condition_id, clip_ids[i])
            with AtomicFile(path, suffix=".wav") as f:
                sf.write(f.file, pert[i].astype(np.float32), self.dataset.sample_rate, subtype="FLOAT", format="WAV")
