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

import warnings
from pathlib import Path
from typing import Iterable, Sequence

from audiobench.errors import ResultsError
from audiobench.results.schema import (  # noqa: F401  (re-exported for the report modules)
    CLEAN,
    METRICS_COLUMNS,
    METRICS_CSV,
    RUN_JSON,
    SHARPNESS_KIND,
    RunResult,
    check_metrics_match_run,
    load_run,
    read_run_info,
    read_sharpness,
    safe_name,
)

# Data fields that must agree for runs to be compared side by side, with a human name each.
DATA_IDENTITY = (
    ("name", "data set name"),
    ("manifest_sha256", "data manifest"),
    ("clip_list_hash", "clip list"),
    ("vocab_hash", "label vocabulary"),
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


class RunSet(list):
    """The runs to report (a list of :class:`RunResult`), plus ``sharpness``: the sharpness runs
    found beside them, as (run folder, run.json, sharpness.csv DataFrame)."""

    sharpness: list

    def __init__(self, runs=(), sharpness=()):
        super().__init__(runs)
        self.sharpness = list(sharpness)


def collect_runs(
    paths: Iterable[Path | str] = ("results",),
    *,
    include_incomplete: bool = False,
    allow_mixed: bool = False,
) -> RunSet:
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
    sharpness = []
    for folder in folders:
        info = read_run_info(folder)
        if info.raw.get("kind") == SHARPNESS_KIND:  # a sharpness table, not robustness rows
            if info.complete:
                sharpness.append((folder, info.raw, read_sharpness(folder)))
            continue
        # An unfinished run (interrupted, or failed before its tables) is skipped with a warning
        # before its tables are read: it may have none yet.
        no_tables = not (folder / METRICS_CSV).is_file()
        if not info.complete and (not include_incomplete or no_tables):
            why = "it has no tables yet" if include_incomplete else "pass --include-incomplete to show it"
            warnings.warn(f"skipping incomplete run {info.run_id} ({folder}); {why}", UserWarning, stacklevel=2)
            skipped += 1
            continue
        run = load_run(folder)
        if run.run_id in by_id:
            raise ResultsError(f"run id {run.run_id} appears in two folders: {by_id[run.run_id]} and {folder}")
        by_id[run.run_id] = folder
        runs.append(run)
    if not runs and sharpness:
        return RunSet([], sharpness)
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise ResultsError(
            f"{where}: no complete runs to report ({skipped} incomplete skipped; pass --include-incomplete)"
        )
    if not allow_mixed:
        check_same_data(runs)
    return RunSet(runs, sharpness)
