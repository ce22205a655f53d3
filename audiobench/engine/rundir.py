"""The run folder and its provenance: where a run writes, and what run.json records.

A new run's folder is created only when its first result is about to be written, so a run that
fails before that (missing weights, a bad checkpoint, a model that fails its probe) leaves no
folder behind; a folder this invocation created is also removed when the run fails before it
stored any unit. A folder that holds results is never removed. Re-running a complete run keeps
``"complete": true`` in run.json until its recomputed tables are written.
"""

from __future__ import annotations

import contextlib
import shutil
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

from audiobench.errors import ConfigError, ResultsError
from audiobench.results import folder as F
from audiobench.results import provenance as P
from audiobench.results import schema as S

RUN_ID_MAX = 200  # characters; file systems allow 255 bytes per name


def check_run_id(run_id: str) -> str:
    """A run id must be a plain, printable folder name."""
    if not isinstance(run_id, str) or not run_id.strip() or run_id != run_id.strip():
        raise ConfigError(f"--run-id {run_id!r}: must be a plain folder name (no leading/trailing spaces)")
    if "/" in run_id or "\\" in run_id or run_id in (".", "..") or run_id.startswith("."):
        raise ConfigError(f"--run-id {run_id!r}: must be a plain folder name")
    if any(unicodedata.category(ch).startswith("C") for ch in run_id):
        raise ConfigError(f"--run-id {run_id!r}: must be a plain folder name (no control characters)")
    if len(run_id) > RUN_ID_MAX:
        raise ConfigError(f"--run-id is {len(run_id)} characters long; at most {RUN_ID_MAX} are allowed")
    return run_id


def new_run_id(config_hash: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config_hash[:8]}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """``out/<run_id>/`` of one run, from preparation to the final run.json."""

    def __init__(self, out: Path, run_id: Optional[str], config_hash: str, *, resume: bool,
                 log: Callable[[str], None] = lambda m: None):
        self.out = Path(out)
        self.config_hash = config_hash
        self.resume = bool(resume)
        self.log = log
        self.named = run_id is not None  # --run-id given (else a new id from time and config hash)
        self.run_id = check_run_id(run_id) if run_id is not None else new_run_id(config_hash)
        self.path = self.out / self.run_id
        self.previous: Optional[S.RunInfo] = None  # run.json of an earlier attempt, if any
        self.created_here = False
        self._lock: Optional[contextlib.ExitStack] = None

    # -- before any work -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check the output folder and an earlier run.json; creates nothing."""
        F.check_writable_parent(self.out)
        if self.out.exists():
            F.ensure_writable_dir(self.out)
        if self.path.exists() and not self.path.is_dir():
            raise ResultsError(f"{self.path}: exists and is not a directory")
        if (self.path / S.RUN_JSON).exists():
            info = S.read_run_info(self.path)
            if info.config_hash != self.config_hash:
                raise ResultsError(
                    f"{self.path}: refusing to resume: the resolved config differs from the stored run "
                    f"(stored {str(info.config_hash)[:12]}, now {self.config_hash[:12]}); use another --run-id"
                )
            if info.complete and not self.resume:
                self.log(f"run {self.run_id} is already complete; recomputing tables from its stored units")
            self.previous = info
        elif self.resume and self.named:
            raise ResultsError(f"{self.path}: nothing to resume (no run.json)")

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def previously_complete(self) -> bool:
        return bool(self.previous is not None and self.previous.complete)

    # -- the folder ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator["RunFolder"]:
        """Hold the folder's lock for the run (taken now for an existing folder, at creation for a
        new one); on failure, remove a folder this invocation created that holds no results."""
        stack = contextlib.ExitStack()
        self._lock = stack
        try:
            with stack:
                if self.exists:
                    stack.enter_context(F.run_lock(self.path))
                yield self
        except BaseException:
            self._remove_if_empty()
            raise
        finally:
            self._lock = None

    def materialise(self, meta: Dict[str, Any]) -> None:
        """Create the folder (if it does not exist yet), lock it and write run.json."""
        if not self.exists:
            F.ensure_writable_dir(self.out)
            try:
                self.path.mkdir()
            except FileExistsError:  # another process created it just now: its lock decides
                pass
            except OSError as exc:
                raise ResultsError(f"{self.path}: cannot create the run folder ({exc.strerror or exc})") from None
            else:
                self.created_here = True
            if self._lock is not None:
                self._lock.enter_context(F.run_lock(self.path))
        self.write_meta(meta)

    def write_meta(self, meta: Dict[str, Any]) -> None:
        """run.json as it stands now; a previously complete run stays complete until the caller
        writes the final, complete run.json."""
        if self.previously_complete and not meta.get("complete"):
            return
        S.write_run_info(self.path, meta)

    def _holds_results(self) -> bool:
        units = self.path / S.UNITS_DIR
        if units.is_dir() and any(units.rglob("*.npz")):
            return True
        return any((self.path / n).exists() for n in (S.METRICS_CSV, S.SCORES_NPZ, S.PER_CLIP_CSV))

    def _remove_if_empty(self) -> None:
        if self.created_here and self.path.is_dir() and not self._holds_results():
            shutil.rmtree(self.path, ignore_errors=True)
            self.created_here = False


def base_meta(run_id: str, config, result_config: Dict[str, Any], config_hash: str, dataset, n_clips: int,
              clip_ids, device) -> Dict[str, Any]:
    """run.json of a new run before any model is loaded."""
    from audiobench.data.shards import clip_list_hash

    data = dataset.describe()
    data["n_clips"] = n_clips
    data["used_clip_list_hash"] = clip_list_hash(clip_ids)  # the clips this run used (after --limit)
    versions = P.versions()
    return {
        "run_id": run_id,
        "complete": False,
        "audiobench_version": versions["audiobench"],
        "config": {
            **result_config,
            "device": config.device,
            "batch_size": config.batch_size,
            "out": str(config.out),
            "save_audio": config.save_audio,
        },
        "config_hash": config_hash,
        "versions": versions,
        "git_commit": P.git_commit(),
        "device": P.device_name(device),
        "precision": config.precision,
        "seed": config.seed,
        "data": data,
        "models": {},
        "conditions": [condition_info(c) for c in config.conditions],
        "timings": {},
        "trust": {},
        "vocab": {"names": [dataset.vocab.name_of(i) for i in range(dataset.vocab.size)]},
        "start_time": now_iso(),
        "end_time": None,
    }


def condition_info(c) -> Dict[str, Any]:
    """One condition's entry of run.json's ``conditions``."""
    return {
        "id": c.condition_id,
        "perturbation": c.name,
        # the clean condition has no swept parameter: param "" and level null (NaN in tables)
        "param": "" if c.name == "none" else c.param,
        "level": None if c.name == "none" else c.level,
        "params": c.to_dict(),
        "comparable_across_models": bool(getattr(c, "comparable_across_models", True)),
    }
