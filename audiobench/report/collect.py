"""Load run folders written by ``audiobench run`` and check they can be shown side by side.

A run folder is ``results/<run_id>/`` (layout in the results-format notes): ``run.json`` holds
provenance, ``metrics.csv`` the tidy rows. ``collect_runs`` accepts results directories (folders
holding run folders) and run folders themselves, skips unfinished runs with a warning, refuses a
folder whose ``metrics.csv`` disagrees with its ``run.json`` (edited by hand), and refuses runs on
different data unless ``allow_mixed``. Every refusal is a one-line
:class:`~audiobench.errors.ResultsError` naming the file or the two runs.

``per_clip.csv``, ``per_class.csv`` and ``scores.npz`` are read lazily (only the HTML report
needs them), with the same one-line errors when missing or corrupt.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

from audiobench.errors import ResultsError

METRICS_COLUMNS = (
    "run_id", "model", "condition", "perturbation", "param", "level",
    "metric", "value", "ci_low", "ci_high", "n_clips", "n_classes", "suspect",
)
PER_CLIP_REQUIRED = ("run_id", "model", "condition", "perturbation", "param", "level", "clip_id", "min_eps")
PER_CLASS_REQUIRED = (
    "run_id", "model", "condition", "perturbation", "param", "level",
    "class_index", "class_name", "metric", "value",
)
_TEXT_COLUMNS = ("run_id", "model", "condition", "perturbation", "param", "clip_id", "class_name", "metric")
_RUN_KEYS = ("run_id", "complete", "data", "models", "conditions")
# Data fields that must agree for runs to be compared side by side, with a human name each.
DATA_IDENTITY = (
    ("name", "data set name"),
    ("manifest_sha256", "data manifest"),
    ("clip_list_hash", "clip list"),
    ("vocab_hash", "label vocabulary"),
)
CLEAN = "none"


def _read_csv(path: Path, required: Sequence[str]):
    import pandas as pd

    if not path.is_file():
        raise ResultsError(f"{path}: file is missing")
    try:
        # Only empty cells are missing values: a model called "NA" stays a string.
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], low_memory=False)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ResultsError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {_first_line(exc)})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {', '.join(missing)}")
    for col in _TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype(object).fillna("").astype(str)  # all-empty columns parse as float64
    for col in ("level", "value", "ci_low", "ci_high", "min_eps"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "suspect" in df.columns:
        df["suspect"] = df["suspect"].map(_as_bool)
    return df


def _as_bool(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes")
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return False
    return bool(x)


def safe_name(s: str) -> str:
    """The file-safe form of a condition id or clip id used for audio/ folders and files."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class RunResult:
    """One run folder: ``info`` is run.json, ``metrics`` the tidy rows of metrics.csv."""

    path: Path
    info: dict
    metrics: "object"  # pandas.DataFrame
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    @property
    def models(self) -> list[str]:
        return list(self.info["models"])

    @property
    def conditions(self) -> list[dict]:
        return list(self.info["conditions"])

    @property
    def data(self) -> dict:
        return dict(self.info.get("data") or {})

    def trust(self, model: str, condition: str) -> dict:
        return dict(((self.info.get("trust") or {}).get(model) or {}).get(condition) or {})

    @cached_property
    def per_clip(self):
        df = _read_csv(self.path / "per_clip.csv", PER_CLIP_REQUIRED)
        self._check_run_id(df, "per_clip.csv")
        return df

    @cached_property
    def per_class(self):
        df = _read_csv(self.path / "per_class.csv", PER_CLASS_REQUIRED)
        self._check_run_id(df, "per_class.csv")
        return df

    @cached_property
    def scores(self) -> dict:
        """scores.npz as a dict of arrays (read without pickle)."""
        import zipfile

        import numpy as np

        path = self.path / "scores.npz"
        if not path.is_file():
            raise ResultsError(f"{path}: file is missing")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ResultsError(f"{path}: cannot be read as .npz ({type(exc).__name__}: {_first_line(exc)})") from None

    def histogram(self, model: str, condition: str):
        """The (2, 20) clean/perturbed score histogram, or None when the run did not store it."""
        h = self.scores.get(f"hist__{model}__{condition}")
        if h is None:
            return None
        if h.ndim != 2 or h.shape[0] != 2:
            raise ResultsError(
                f"{self.path / 'scores.npz'}: hist__{model}__{condition} has shape {tuple(h.shape)}, expected (2, bins)"
            )
        return h

    def audio_files(self) -> list[tuple[str, str, Path]]:
        """(model, condition id, path) of every WAV under audio/<model>/<condition>/, sorted.

        The engine writes condition folders under a file-safe name ("pgd/linf:eps=0.002" ->
        "pgd_linf_eps=0.002"); they are mapped back to the condition ids of run.json.
        """
        root = self.path / "audio"
        if not root.is_dir():
            return []
        ids = {}
        for c in self.conditions:
            ids.setdefault(safe_name(str(c["id"])), str(c["id"]))
            ids[str(c["id"])] = str(c["id"])
        out = []
        for wav in sorted(root.glob("*/*/*.wav")):
            out.append((wav.parent.parent.name, ids.get(wav.parent.name, wav.parent.name), wav))
        return out

    def _check_run_id(self, df, name: str) -> None:
        ids = set(df["run_id"].unique()) if len(df) else set()
        if ids and ids != {self.run_id}:
            other = sorted(ids - {self.run_id})
            raise ResultsError(
                f"{self.path / name}: rows carry run_id {', '.join(other[:3])} but run.json says "
                f"{self.run_id} (results folder edited by hand?)"
            )


def load_run(path: Path | str) -> RunResult:
    """Read and check one run folder (run.json + metrics.csv)."""
    path = Path(path)
    run_json = path / "run.json"
    if not run_json.is_file():
        raise ResultsError(f"{run_json}: file is missing (not a run folder)")
    try:
        info = json.loads(run_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{run_json}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(info, dict):
        raise ResultsError(f"{run_json}: expected a JSON object, got {type(info).__name__}")
    missing = [k for k in _RUN_KEYS if k not in info]
    if missing:
        raise ResultsError(f"{run_json}: missing key(s) {', '.join(missing)}")
    if not isinstance(info["models"], dict) or not isinstance(info["conditions"], list):
        raise ResultsError(f"{run_json}: 'models' must be an object and 'conditions' a list")
    for c in info["conditions"]:
        if not isinstance(c, dict) or "id" not in c:
            raise ResultsError(f"{run_json}: every entry of 'conditions' needs an 'id'")
    metrics = _read_csv(path / "metrics.csv", METRICS_COLUMNS)
    run = RunResult(path=path, info=info, metrics=metrics)
    check_metrics_match_run(run)
    return run


def check_metrics_match_run(run: RunResult) -> None:
    """metrics.csv must hold exactly the run's models and conditions, one row per metric."""
    m = run.metrics
    where = run.path / "metrics.csv"
    hint = "(results folder edited by hand?)"
    run._check_run_id(m, "metrics.csv")
    models = set(run.models)
    seen_models = set(m["model"].unique())
    if seen_models - models:
        raise ResultsError(
            f"{where}: rows for model(s) {', '.join(sorted(seen_models - models))} not listed in run.json {hint}"
        )
    listed = [str(c["id"]) for c in run.conditions]
    allowed = set(listed) | {CLEAN}
    seen_conds = set(m["condition"].unique())
    if seen_conds - allowed:
        raise ResultsError(
            f"{where}: rows for condition(s) {', '.join(sorted(seen_conds - allowed))} not listed in run.json {hint}"
        )
    present = set(zip(m["model"], m["condition"]))
    for model in run.models:
        for cond in listed:
            if (model, cond) not in present:
                raise ResultsError(f"{where}: no rows for model {model} under condition {cond} {hint}")
    dup = m.duplicated(["model", "condition", "metric"], keep=False)
    if dup.any():
        r = m[dup].iloc[0]
        raise ResultsError(f"{where}: metric {r['metric']} appears twice for {r['model']} / {r['condition']} {hint}")
    by_id = {str(c["id"]): c for c in run.conditions}
    for (cond, pert), _ in m.groupby(["condition", "perturbation"]):
        expected = CLEAN if cond == CLEAN else str(by_id[cond].get("perturbation", pert))
        if pert != expected:
            raise ResultsError(
                f"{where}: condition {cond} has perturbation {pert!r} but run.json says {expected!r} {hint}"
            )


def find_run_folders(paths: Iterable[Path | str]) -> list[Path]:
    """Expand each argument: a run folder (has run.json) or a folder of run folders."""
    found: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ResultsError(f"{p}: no such results folder")
        if not p.is_dir():
            raise ResultsError(f"{p}: not a folder (give a results folder or a run folder)")
        if (p / "run.json").exists():
            candidates = [p]
        elif any((p / name).exists() for name in ("metrics.csv", "scores.npz", "per_clip.csv")):
            raise ResultsError(f"{p / 'run.json'}: file is missing (a run folder without its provenance)")
        else:
            candidates = sorted(c for c in p.iterdir() if c.is_dir() and (c / "run.json").exists())
            if not candidates:
                raise ResultsError(f"{p}: no run folders (folders with a run.json) inside")
        for c in candidates:
            key = c.resolve()
            if key not in seen:
                seen.add(key)
                found.append(c)
    return found


def check_same_data(runs: Sequence[RunResult]) -> None:
    """Refuse runs whose data set, manifest, clip list or vocabulary differ."""
    if not runs:
        return
    ref = runs[0]
    for other in runs[1:]:
        for key, label in DATA_IDENTITY:
            a, b = ref.data.get(key), other.data.get(key)
            if a != b:
                raise ResultsError(
                    f"runs {ref.run_id} and {other.run_id} differ in {label} "
                    f"(data.{key} {_short(a)} vs {_short(b)}); pass --allow-mixed to compare them anyway"
                )


def _short(v) -> str:
    s = str(v)
    return s[:12] + "…" if len(s) > 13 else s


def collect_runs(
    paths: Iterable[Path | str] = ("results",),
    *,
    include_incomplete: bool = False,
    allow_mixed: bool = False,
) -> list[RunResult]:
    """Load every run folder under ``paths`` that can be reported together.

    Incomplete runs (``complete: false``) are skipped with a :class:`UserWarning` unless
    ``include_incomplete``. Raises ResultsError when nothing is left, when two folders hold the
    same run id, or when the runs' data differ and ``allow_mixed`` is false.
    """
    paths = list(paths) or ["results"]
    folders = find_run_folders(paths)
    runs: list[RunResult] = []
    skipped = 0
    by_id: dict[str, Path] = {}
    for folder in folders:
        run = load_run(folder)
        if not run.complete and not include_incomplete:
            warnings.warn(
                f"skipping incomplete run {run.run_id} ({folder}); pass --include-incomplete to show it",
                UserWarning,
                stacklevel=2,
            )
            skipped += 1
            continue
        if run.run_id in by_id:
            raise ResultsError(f"run id {run.run_id} appears in two folders: {by_id[run.run_id]} and {folder}")
        by_id[run.run_id] = folder
        runs.append(run)
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise ResultsError(
            f"{where}: no complete runs to report ({skipped} incomplete skipped; pass --include-incomplete)"
        )
    if not allow_mixed:
        check_same_data(runs)
    return runs
