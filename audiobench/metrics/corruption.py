"""Corruption-suite summaries (AudioSet-C): mean corruption mAP, relative robustness, mCE.

Definitions (``m[c, s]``: mAP under corruption c at severity s; ``m0``: clean mAP; ``r``: the same
for a reference model on the same clips):

* ``corruption_map[c]`` = mean over the severities of c of m[c, s];
* ``mean_corruption_map`` = mean over corruptions of corruption_map[c] (each corruption weighs the
  same; with every corruption at the same severities this is the mean over all (c, s));
* ``relative_robustness`` = mean_corruption_map / m0;
* ``corruption_error[c]`` = sum over s of (1 - m[c, s]) (ImageNet-C's per-corruption error, with
  1 - mAP as the error);
* ``mce`` = mean over c of corruption_error[c] / corruption_error_ref[c]
  (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common Corruptions and
  Perturbations"; < 1 means more robust than the reference);
* ``relative_mce`` = mean over c of sum_s (m0 - m[c, s]) / sum_s (r0 - r[c, s]) (the same paper's
  relative mCE: the drop from clean, normalised by the reference's drop).

The scalar functions take floats or equal-shaped arrays (one value per bootstrap resample), so the
bootstrap runs the very same code. :func:`corruption_summary` goes from scores to numbers with
95 % percentile CIs from a bootstrap over clips in which every condition (clean, each corruption,
and the reference model's) is evaluated on the SAME resampled clip sets
(:func:`audiobench.metrics.bootstrap.resample_counts`, drawn once), so the CI of a difference or
ratio reflects the paired design.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from audiobench.metrics.bootstrap import bootstrap_tagging_values, percentile_ci, resample_counts

__all__ = [
    "corruption_maps",
    "mean_corruption_map",
    "relative_robustness",
    "corruption_errors",
    "mce",
    "relative_mce",
    "corruption_summary",
    "SUMMARY_METRICS",
    "PER_CORRUPTION_METRICS",
]

Value = Union[float, np.ndarray]
MapTable = Mapping[Tuple[str, int], Value]

#: the summary metrics (metrics.csv names); mce and relative_mce need a reference model
SUMMARY_METRICS = ("mean_corruption_map", "relative_robustness", "mce", "relative_mce")
#: the per-corruption numbers (metrics.csv names); normalised_ce needs a reference model
PER_CORRUPTION_METRICS = ("corruption_map", "corruption_error", "normalised_ce")


def _by_corruption(maps: MapTable) -> Dict[str, Dict[int, Value]]:
    if not maps:
        raise ValueError("no corruption conditions given")
    out: Dict[str, Dict[int, Value]] = {}
    for (corruption, severity), value in maps.items():
        out.setdefault(str(corruption), {})[int(severity)] = value
    return out


def _same_design(a: MapTable, b: MapTable, what: str) -> None:
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))
        raise ValueError(f"{what} must cover the same (corruption, severity) pairs; they differ at {missing[:3]}")


def corruption_maps(maps: MapTable) -> Dict[str, Value]:
    """corruption -> mean over its severities of mAP."""
    return {c: sum(sev.values()) / len(sev) for c, sev in _by_corruption(maps).items()}


def mean_corruption_map(maps: MapTable) -> Value:
    """Mean over corruptions of the severity-averaged mAP (see module docstring)."""
    per = corruption_maps(maps)
    return sum(per.values()) / len(per)


def _ratio(num: Value, den: Value) -> Value:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def relative_robustness(mean_corruption_map_value: Value, clean_map: Value) -> Value:
    """mean_corruption_map / clean mAP (NaN when the clean mAP is 0)."""
    return _ratio(mean_corruption_map_value, clean_map)


def corruption_errors(maps: MapTable) -> Dict[str, Value]:
    """corruption -> sum over its severities of (1 - mAP)."""
    return {c: sum(1.0 - v for v in sev.values()) for c, sev in _by_corruption(maps).items()}


def mce(maps: MapTable, reference_maps: MapTable) -> Value:
    """ImageNet-C mCE: mean over corruptions of the model's summed error over the reference's."""
    _same_design(maps, reference_maps, "the model's and the reference's conditions")
    ce, ref = corruption_errors(maps), corruption_errors(reference_maps)
    return sum(_ratio(ce[c], ref[c]) for c in ce) / len(ce)


def relative_mce(maps: MapTable, clean_map: Value, reference_maps: MapTable, reference_clean_map: Value) -> Value:
    """ImageNet-C relative mCE: mean over corruptions of sum_s (clean - m[c,s]) / sum_s (ref clean - r[c,s])."""
    _same_design(maps, reference_maps, "the model's and the reference's conditions")
    mine, ref = _by_corruption(maps), _by_corruption(reference_maps)
    terms = [_ratio(sum(clean_map - v for v in mine[c].values()), sum(reference_clean_map - v for v in ref[c].values()))
             for c in mine]
    return sum(terms) / len(terms)


def _row(value: Value, boot: Optional[np.ndarray], level: float) -> Dict[str, float]:
    row = {"value": float(value)}
    if boot is not None:
        row["ci_low"], row["ci_high"] = percentile_ci(boot, level)
    else:
        row["ci_low"] = row["ci_high"] = math.nan
    return row


def corruption_summary(
    condition_scores: Mapping[str, np.ndarray],
    clean_scores: np.ndarray,
    targets: np.ndarray,
    condition_index: Mapping[str, Tuple[str, int]],
    *,
    reference_scores: Optional[Mapping[str, np.ndarray]] = None,
    reference_clean_scores: Optional[np.ndarray] = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Dict[str, object]:
    """The suite's summary numbers for one model, with bootstrap CIs over clips.

    * ``condition_scores``: condition id -> (N, C) scores (logits, or sigmoid(logits) as
      ``condition_metrics`` uses: AP depends only on the order) on the same N clips, same order;
    * ``clean_scores``: (N, C) clean scores; ``targets``: (N, C) bool;
    * ``condition_index``: condition id -> (corruption name, severity) for every id of
      ``condition_scores`` (e.g. ``(p.name, p.severity)`` of each condition);
    * ``reference_scores`` / ``reference_clean_scores``: the reference model's, same ids and clips
      (needed for ``mce`` / ``relative_mce``, which are left out without them);
    * ``n_boot`` resamples from ``seed`` (0: no CIs, NaN bounds).

    Returns ``{"metrics": {name: {"value", "ci_low", "ci_high"}}, "by_corruption": {corruption:
    {"corruption_map": row, "corruption_error": row[, "normalised_ce": row]}}, "n_clips": N}``.
    Point values use all N clips (a clip with a non-finite score drops out of that condition, as in
    the per-condition metrics).
    """
    clean_scores = np.asarray(clean_scores)
    n = clean_scores.shape[0]
    missing = [cid for cid in condition_scores if cid not in condition_index]
    if missing:
        raise ValueError(f"condition_index has no (corruption, severity) for {missing[0]!r}")
    with_ref = reference_scores is not None
    if with_ref:
        if reference_clean_scores is None:
            raise ValueError("reference_scores needs reference_clean_scores")
        if set(reference_scores) != set(condition_scores):
            raise ValueError("reference_scores must hold the same condition ids as condition_scores")
    ones = np.ones((n, 1), dtype=np.uint8)
    counts = resample_counts(n, n_boot, seed) if n_boot > 0 and n > 1 else None

    def maps_of(scores) -> Tuple[float, Optional[np.ndarray]]:
        point = float(bootstrap_tagging_values(scores, targets, ones)["mAP"][0])
        boot = bootstrap_tagging_values(scores, targets, counts)["mAP"] if counts is not None else None
        return point, boot

    def table(scores_by_id):
        point, boot = {}, {}
        for cid, scores in scores_by_id.items():
            key = (str(condition_index[cid][0]), int(condition_index[cid][1]))
            if key in point:
                raise ValueError(f"two conditions map to {key}")
            point[key], boot[key] = maps_of(np.asarray(scores))
        return point, boot

    clean_point, clean_boot = maps_of(clean_scores)
    point, boot = table(condition_scores)
    have_boot = counts is not None

    def both(fn, *args_pairs):
        """fn on the point values and, when bootstrapping, on the per-resample arrays."""
        p = fn(*(a for a, _ in args_pairs))
        b = fn(*(bb for _, bb in args_pairs)) if have_boot else None
        return p, b

    mcm = both(mean_corruption_map, (point, boot))
    metrics = {
        "mean_corruption_map": _row(mcm[0], mcm[1], level),
        "relative_robustness": _row(*both(relative_robustness, mcm, (clean_point, clean_boot)), level),
    }
    cmap = both(corruption_maps, (point, boot))
    cerr = both(corruption_errors, (point, boot))
    by_corruption: Dict[str, Dict[str, Dict[str, float]]] = {
        c: {"corruption_map": _row(cmap[0][c], cmap[1][c] if have_boot else None, level),
            "corruption_error": _row(cerr[0][c], cerr[1][c] if have_boot else None, level)}
        for c in cmap[0]
    }
    if with_ref:
        ref_point, ref_boot = table(reference_scores)
        rclean_point, rclean_boot = maps_of(np.asarray(reference_clean_scores))
        metrics["mce"] = _row(*both(mce, (point, boot), (ref_point, ref_boot)), level)
        metrics["relative_mce"] = _row(*both(relative_mce, (point, boot), (clean_point, clean_boot),
                                             (ref_point, ref_boot), (rclean_point, rclean_boot)), level)
        rerr = both(corruption_errors, (ref_point, ref_boot))
        for c in by_corruption:
            p = _ratio(cerr[0][c], rerr[0][c])
            b = _ratio(cerr[1][c], rerr[1][c]) if have_boot else None
            by_corruption[c]["normalised_ce"] = _row(p, b, level)
    return {"metrics": metrics, "by_corruption": by_corruption, "n_clips": int(n)}
