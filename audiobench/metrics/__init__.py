"""Metrics: tagging quality (mAP, mAUC, d′, top-k), output-shift statistics, bootstrap CIs.

``METRICS`` maps each metric name written to ``metrics.csv`` to a one-line description.
"""

from __future__ import annotations

from audiobench.registry import Registry

METRICS: Registry[str] = Registry("metric")
