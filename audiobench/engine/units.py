"""Unit storage: the engine's source of truth.

A *unit* is the stored result of one (model, condition, clip range): an ``.npz`` file in
``units/<model>/c<NNN>[.<role>]/<start>-<stop>.npz`` (``role`` names a trust companion, e.g.
``c002.fgsm``). Each finished batch is written atomically as soon as it completes, so a run killed
at any moment resumes where it stopped, and the tables are always recomputed from the units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from audiobench.errors import ResultsError
from audiobench.results.schema import UNITS_DIR, safe_name

# per-batch trace arrays: summed (not concatenated) when units are merged
_SUMMED_PER_STEP = ("trace_loss_sum", "trace_n_per_step", "trace_best_loss_sum")
_SUMMED_SCALAR = ("trace_n", "trace_bad_grad")


def unit_dir(run_dir: Path, model: str, cond_index: int, role: Optional[str] = None) -> Path:
    """Folder of one (model, condition[, companion role])'s units."""
    name = f"c{cond_index:03d}" if not role else f"c{cond_index:03d}.{role}"
    return Path(run_dir) / UNITS_DIR / safe_name(model) / name


def unit_path(udir: Path, start: int, stop: int) -> Path:
    return Path(udir) / f"{start:08d}-{stop:08d}.npz"


def stored_ranges(udir: Path) -> List[Tuple[int, int]]:
    """The clip ranges with a stored unit file, sorted."""
    udir = Path(udir)
    if not udir.is_dir():
        return []
    out = []
    for p in udir.glob("*.npz"):
        stem = p.stem
        if "-" not in stem or stem.startswith("."):
            continue
        a, b = stem.split("-", 1)
        if a.isdigit() and b.isdigit() and int(b) > int(a):
            out.append((int(a), int(b)))
    return sorted(out)


def missing_ranges(done: Sequence[Tuple[int, int]], n: int) -> List[Tuple[int, int]]:
    """Clip ranges in [0, n) not covered by ``done``."""
    out, pos = [], 0
    for a, b in sorted(done):
        if a > pos:
            out.append((pos, min(a, n)))
        pos = max(pos, b)
    if pos < n:
        out.append((pos, n))
    return [(a, b) for a, b in out if b > a]


def merge_units(units: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Concatenate per-clip arrays in order; sum the per-step trace sums and the clip counts."""
    out = {}
    for k in units[0]:
        vals = [u[k] for u in units]
        if k in _SUMMED_PER_STEP:
            n = max(len(v) for v in vals)
            out[k] = sum(np.pad(v, (0, n - len(v))) for v in vals) if n else vals[0]
        elif k in _SUMMED_SCALAR:
            out[k] = np.asarray(sum(int(v) for v in vals))
        else:
            out[k] = np.concatenate(vals, axis=0)
    return out


def read_unit(path: Path) -> Dict[str, np.ndarray]:
    """One unit file's arrays (never unpickled); a damaged file is a one-line ResultsError."""
    import zipfile

    if not path.is_file():
        raise ResultsError(f"{path}: stored unit is not a regular file (remove it and resume)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ResultsError(f"{path}: stored unit is damaged ({type(exc).__name__}); remove it and resume") from None


def load_units(udir: Path, n_clips: int) -> Dict[str, np.ndarray]:
    """All stored units of one (model, condition) over its first ``n_clips`` clips, merged in clip
    order; checks full coverage."""
    stop = n_clips
    ranges = stored_ranges(udir)
    if missing_ranges(ranges, n_clips):
        raise ResultsError(f"{udir}: stored units do not cover all {n_clips} clips (resume the run)")
    units, pos = [], 0
    for a, b in ranges:
        if a < pos:  # overlapping unit from a resume with another batch size: skip fully covered
            if b <= pos:
                continue
            raise ResultsError(f"{udir}: overlapping units {a}-{b}")
        units.append(read_unit(unit_path(udir, a, b)))
        pos = b
        if pos >= stop:
            break
    merged = merge_units(units)
    if len(merged["logits"]) != n_clips:
        raise ResultsError(f"{udir}: units hold {len(merged['logits'])} clips, expected {n_clips}")
    return merged
