"""Metrics: tagging quality (mAP, mAUC, d′, top-k, ECE; accuracy and macro F1 on single-label data),
per-clip output-shift statistics and their robust summaries, bootstrap CIs.

``METRICS`` maps each row name of ``metrics.csv`` to its :class:`~audiobench.metrics.definitions.Metric`
(description, units, formula, kind, the data it applies to). It is the list the aggregator computes:
:func:`audiobench.metrics.condition.condition_metrics` emits exactly its ``condition`` and
``per-clip`` entries. A module that computes run-level summaries elsewhere registers them here with
:func:`register_metric` (kind ``suite``). Importing this package loads no numeric code, so
``audiobench list metrics`` stays instant.
"""

from __future__ import annotations

from audiobench.metrics.definitions import (
    ALL,
    CONDITION,
    METRIC_LIST,
    MIN_EPS,
    MULTI_LABEL,
    PER_CLIP,
    PERTURBATION,
    SINGLE_LABEL,
    STATISTICS,
    SUITE,
    Metric,
    Statistic,
)
from audiobench.registry import Registry

__all__ = [
    "METRICS", "STATISTICS", "Metric", "Statistic", "register_metric",
    "ALL", "MULTI_LABEL", "SINGLE_LABEL", "CONDITION", "PER_CLIP", "MIN_EPS", "PERTURBATION", "SUITE",
]

METRICS: Registry[Metric] = Registry("metric")


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (its ``name`` is the key; a duplicate name is an error)."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register_metric expects a Metric, got {type(metric).__name__}")
    return METRICS.register(metric.name, metric)


for _m in METRIC_LIST:
    register_metric(_m)
del _m
