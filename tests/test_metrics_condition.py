"""condition_metrics emits exactly the registry's metrics; all intervals share one set of resamples;
min-eps summaries are ordinary quantiles over the attacked clips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audiobench.metrics import METRICS, Metric
from audiobench.metrics.bootstrap import bootstrap_means, bootstrap_tagging_values, percentile_ci, resample_counts
from audiobench.metrics.condition import PER_CLIP_SHIFT, condition_metrics, min_eps_summary
from audiobench.metrics.definitions import (
    CONDITION,
    MIN_EPS,
    MIN_EPS_MISSED_CLEAN,
    MULTI_LABEL,
    PER_CLIP,
    SINGLE_LABEL,
    STATISTICS,
    condition_metric_names,
)


def _multi(seed=0, n=40, c=30):
    rng = np.random.default_rng(seed)
    t = rng.random((n, c)) < 0.08
    t[np.arange(n), rng.integers(0, c, n)] = True
    x = rng.normal(-2, 1.5, size=(n, c)) + 3 * t
    y = x + rng.normal(0, 1, size=(n, c))
    return x, y, t


def _single(seed=1, n=40, c=10):
    rng = np.random.default_rng(seed)
    t = np.zeros((n, c), bool)
    t[np.arange(n), rng.integers(0, c, n)] = True
    x = rng.normal(0, 1, size=(n, c)) + 2 * t
    y = x + rng.normal(0, 1, size=(n, c))
    return x, y, t


def _registered(applies_skip: str) -> set:
    return {name for name, m in METRICS.items() if m.kind in (CONDITION, PER_CLIP) and m.applies_to != applies_skip}


@pytest.mark.parametrize("data,single", [(_multi, False), (_single, True)])
def test_emitted_names_are_exactly_the_registry(data, single):
    x, y, t = data()
    res = condition_metrics(x, y, t, n_boot=30, seed=3, valid=np.ones(len(x), bool))
    assert res["single_label"] is single
    skip = MULTI_LABEL if single else SINGLE_LABEL
    assert set(res["rows"]) == _registered(skip) == set(condition_metric_names(single))
    assert list(res["rows"]) == condition_metric_names(single)  # registry order
    assert {"accuracy", "top5_accuracy", "macro_f1"} <= set(res["rows"]) if single else \
        not ({"accuracy", "top5_accuracy", "macro_f1"} & set(res["rows"]))
    for name, row in res["rows"].items():
        m = METRICS.get(name)
        assert ("ci_low" in row) == m.has_ci and ("ci_high" in row) == m.has_ci, name
        if m.has_ci and not math.isnan(row["value"]):
            assert row["ci_low"] <= row["ci_high"], name
    assert set(res["per_clip"]) == set(PER_CLIP_SHIFT) == set(STATISTICS)


def test_single_label_override_and_detection_on_all_clips():
    x, y, t = _single()
    valid = np.ones(len(x), bool)
    assert not condition_metrics(x, y, t, n_boot=0, seed=0, valid=valid, single_label=False)["single_label"]
    t2 = t.copy()
    t2[0, :] = True  # one multi-label clip ...
    valid[0] = False  # ... even when it is left out, the data set is multi-label: same rows everywhere
    res = condition_metrics(x, y, t2, n_boot=0, seed=0, valid=valid)
    assert not res["single_label"] and "accuracy" not in res["rows"]


def test_single_label_values_and_intervals():
    from sklearn.metrics import f1_score

    x, y, t = _single(n=60)
    res = condition_metrics(x, y, t, n_boot=200, seed=5, valid=np.ones(60, bool))
    labels, pred = t.argmax(1), y.argmax(1)
    assert res["rows"]["accuracy"]["value"] == pytest.approx((labels == pred).mean())
    assert res["rows"]["macro_f1"]["value"] == pytest.approx(
        f1_score(labels, pred, labels=sorted(set(labels)), average="macro", zero_division=0))
    counts = resample_counts(60, 200, 5)
    f1s = []
    for r in range(200):
        idx = np.repeat(np.arange(60), counts[:, r])
        f1s.append(f1_score(labels[idx], pred[idx], labels=sorted(set(labels[idx])), average="macro", zero_division=0))
    lo, hi = np.percentile(f1s, [2.5, 97.5])
    assert (res["rows"]["macro_f1"]["ci_low"], res["rows"]["macro_f1"]["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)


def test_every_interval_comes_from_the_same_resamples():
    from audiobench.metrics.calibration import expected_calibration_error
    from audiobench.metrics.condition import sigmoid
    from audiobench.metrics.shift import shift_statistics

    x, y, t = _multi(n=50)
    valid = np.ones(50, bool)
    valid[[3, 17]] = False  # left out: the resamples are drawn over the 48 clips used
    res = condition_metrics(x, y, t, n_boot=150, seed=9, valid=valid)
    counts = resample_counts(48, 150, 9)
    per = shift_statistics(x[valid], y[valid], t[valid])
    ref = bootstrap_means({"kl": per["kl"]}, counts=counts)["kl"]
    assert (res["rows"]["kl_mean"]["ci_low"], res["rows"]["kl_mean"]["ci_high"]) == pytest.approx(ref, abs=1e-15)
    tag = bootstrap_tagging_values(sigmoid(y[valid]), t[valid], counts)
    assert (res["rows"]["mAP"]["ci_low"], res["rows"]["mAP"]["ci_high"]) == pytest.approx(percentile_ci(tag["mAP"]))
    eces = []
    for r in range(150):
        idx = np.repeat(np.arange(48), counts[:, r])
        eces.append(expected_calibration_error(y[valid][idx], t[valid][idx]))
    assert (res["rows"]["ece"]["ci_low"], res["rows"]["ece"]["ci_high"]) == pytest.approx(
        tuple(np.percentile(eces, [2.5, 97.5])), abs=1e-12)
    for k in PER_CLIP_SHIFT:
        assert np.isnan(res["per_clip"][k][[3, 17]]).all()


def test_no_bootstrap_no_intervals_and_nonfinite_counted():
    x, y, t = _multi()
    y[5, 2] = np.nan
    res = condition_metrics(x, y, t, n_boot=0, seed=0, valid=np.ones(len(x), bool))
    assert all("ci_low" not in r for r in res["rows"].values())
    assert res["rows"]["nonfinite_clips"]["value"] == 1 and res["n_clips"] == len(x) - 1
    assert not res["use"][5] and np.isnan(res["per_clip"]["kl"][5])


# -- min-eps ------------------------------------------------------------------------------------------
def test_min_eps_rows_are_the_registry_min_eps_metrics():
    names = {name for name, m in METRICS.items() if m.kind == MIN_EPS}
    assert set(min_eps_summary(np.array([0.001, 0.002]))) == names


def test_min_eps_median_is_the_ordinary_median_over_attacked_clips():
    # the example: clips at [0, 2e-5, 0.00252, 0.00648] where 0 was a clip already missed clean
    me = np.array([MIN_EPS_MISSED_CLEAN, 2e-5, 0.00252, 0.00648, np.nan])
    s = min_eps_summary(me)
    hit = np.array([2e-5, 0.00252, 0.00648])
    assert s["min_eps_median"] == float(np.median(hit))
    assert s["min_eps_q25"] == float(np.quantile(hit, 0.25)) and s["min_eps_q75"] == float(np.quantile(hit, 0.75))
    assert s["min_eps_missed_clean_clips"] == 1 and s["min_eps_attacked_clips"] == 3
    assert s["min_eps_unreachable_clips"] == 0
    legacy = min_eps_summary(np.array([0.0, 2e-5, 0.00252, 0.00648]))  # how earlier versions wrote it
    assert legacy == s
    rng = np.random.default_rng(0)
    v = rng.gamma(2, 0.001, size=17)
    assert min_eps_summary(v)["min_eps_median"] == float(np.median(v))


def test_min_eps_unreachable_clips_stay_infinite_and_are_counted():
    s = min_eps_summary(np.array([0.001, 0.002, math.inf, math.inf, MIN_EPS_MISSED_CLEAN]))
    assert s["min_eps_median"] == math.inf  # h = 1.5: between 0.002 and inf
    assert s["min_eps_q25"] == pytest.approx(np.quantile([0.001, 0.002, 9, 9], 0.25))
    assert s["min_eps_q75"] == math.inf
    assert (s["min_eps_unreachable_clips"], s["min_eps_attacked_clips"], s["min_eps_missed_clean_clips"]) == (2, 4, 1)
    empty = min_eps_summary(np.array([MIN_EPS_MISSED_CLEAN, np.nan]))
    assert math.isnan(empty["min_eps_median"]) and empty["min_eps_attacked_clips"] == 0


def test_metric_entries_read_well_and_validate():
    text = str(METRICS.get("kl_mean"))
    assert "nats" in text and "docs/metrics.md#kl_mean" in text and "\n" not in text
    assert "single-label data only" in str(METRICS.get("accuracy"))
    with pytest.raises(ValueError, match="kind"):
        Metric("x", "x", "x", "x", "bogus")
    with pytest.raises(ValueError, match="per-clip"):
        Metric("x", "x", "x", "x", PER_CLIP)
