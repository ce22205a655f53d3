"""What every metric is: the registry entries behind ``metrics.csv``, ``per_clip.csv`` and docs/metrics.md.

Pure data (no numpy), so ``audiobench list metrics`` stays instant. Two kinds of record:

* :class:`Statistic` — a per-clip column of ``per_clip.csv`` (one value per clip and condition);
* :class:`Metric` — a row name of ``metrics.csv``. Its ``kind`` says who computes it:

  - ``condition``: :func:`audiobench.metrics.condition.condition_metrics`, from the condition's
    outputs as a whole (mAP, mAUC, ECE, accuracy, ...);
  - ``per-clip``: also ``condition_metrics``: the mean / median / 90th percentile (``summary``)
    over clips of one :class:`Statistic` (``statistic``);
  - ``min-eps``: :func:`audiobench.metrics.condition.min_eps_summary`, for min-eps conditions;
  - ``perturbation``: the aggregator, from the perturbation's own per-clip record (realised SNR,
    clips refused as bad input);
  - ``suite``: run-level summaries over several conditions, computed outside ``condition_metrics``
    (registered by the module that computes them).

``applies_to`` is ``all``, ``multi-label`` or ``single-label`` (every clip has exactly one true
label). ``condition_metrics`` emits exactly the ``condition`` and ``per-clip`` entries that apply
to the data (tests/test_metrics_condition.py checks it both ways), and docs/metrics.md carries the
table :func:`markdown_table` renders from this module (tests/test_metrics_docs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

CONDITION = "condition"
PER_CLIP = "per-clip"
MIN_EPS = "min-eps"
PERTURBATION = "perturbation"
SUITE = "suite"
KINDS = (CONDITION, PER_CLIP, MIN_EPS, PERTURBATION, SUITE)

ALL = "all"
MULTI_LABEL = "multi-label"
SINGLE_LABEL = "single-label"
APPLIES_TO = (ALL, MULTI_LABEL, SINGLE_LABEL)

SUMMARIES = ("mean", "median", "p90")

#: per-clip min-eps of a clip with a true label but none in the top k already clean (nothing to attack)
MIN_EPS_MISSED_CLEAN = -1.0
_KIND_TEXT = {
    CONDITION: "per condition",
    PER_CLIP: "summary over clips",
    MIN_EPS: "min-eps conditions",
    PERTURBATION: "per condition, from the perturbation",
    SUITE: "per run, over conditions",
}


@dataclass(frozen=True)
class Statistic:
    """One per-clip column of ``per_clip.csv``: ``formula`` in the notation of docs/metrics.md."""

    name: str
    title: str  # short heading for reports
    description: str
    units: str
    formula: str
    undefined: str = "never (finite for every clip used)"
    indicator: bool = False  # 0/1 per clip: summarised by its rate (the mean) only
    mean_name: Optional[str] = None  # metrics.csv name of its mean (default ``<name>_mean``)

    @property
    def summary_names(self) -> Dict[str, str]:
        """summary ("mean", "median", "p90") -> metrics.csv name."""
        out = {"mean": self.mean_name or f"{self.name}_mean"}
        if not self.indicator:
            out["median"] = f"{self.name}_median"
            out["p90"] = f"{self.name}_p90"
        return out


@dataclass(frozen=True)
class Metric:
    """One row name of ``metrics.csv``."""

    name: str
    title: str  # short heading for reports
    description: str
    units: str
    kind: str
    formula: str = ""
    applies_to: str = ALL
    statistic: Optional[str] = None  # per-clip: the Statistic summarised
    summary: Optional[str] = None  # per-clip: "mean", "median" or "p90"
    has_ci: bool = True  # condition_metrics gives it a bootstrap interval (when bootstrapping)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.applies_to not in APPLIES_TO:
            raise ValueError(f"metric {self.name!r}: applies_to must be one of {APPLIES_TO}, got {self.applies_to!r}")
        if (self.kind == PER_CLIP) != (self.statistic is not None and self.summary in SUMMARIES):
            raise ValueError(f"metric {self.name!r}: a per-clip metric names its statistic and summary")

    @property
    def anchor(self) -> str:
        return self.name

    def __str__(self) -> str:
        scope = "" if self.applies_to == ALL else f", {self.applies_to} data only"
        return f"{self.description} [{self.units}; {_KIND_TEXT[self.kind]}{scope}] (docs/metrics.md#{self.anchor})"


# -- per-clip statistics ----------------------------------------------------------------------------
# Notation (docs/metrics.md): x, y = clean and perturbed logits of one clip; p = σ(x), q = σ(y);
# C = number of output classes; T = the clip's true labels, F = the other classes; r_c(s) = rank of
# class c by score s (1 = highest, ties share their mean rank); K_k(s) = the k top-scored classes
# (ties to the lower class index).
STATISTICS: Dict[str, Statistic] = {}


def _stat(*args, **kwargs) -> None:
    s = Statistic(*args, **kwargs)
    if s.name in STATISTICS:
        raise ValueError(f"per-clip statistic {s.name!r} is defined twice")
    STATISTICS[s.name] = s


_stat("kl", "Bernoulli KL(clean ‖ perturbed)",
      "mean over classes of the Bernoulli KL divergence KL(p_c || q_c), probabilities clipped to [1e-7, 1 - 1e-7]",
      "nats",
      "(1/C) Σ_c [p̃_c ln(p̃_c/q̃_c) + (1−p̃_c) ln((1−p̃_c)/(1−q̃_c))], p̃, q̃ = p, q clipped to [1e-7, 1−1e-7]")
_stat("js", "Bernoulli JS",
      "mean over classes of the Bernoulli Jensen-Shannon divergence of p_c and q_c (<= 1)", "bits",
      "(1/C) Σ_c [½ KL₂(p_c || m_c) + ½ KL₂(q_c || m_c)], m_c = (p_c + q_c)/2, Bernoulli KL in log base 2")
_stat("js_normalised", "JS of sum-normalised scores",
      "Jensen-Shannon divergence of the score vectors normalised to sum 1 (blind to a uniform scaling of all "
      "scores; kept for comparison with earlier runs)", "nats",
      "JS(p/Σp || q/Σq) with natural logarithms, in [0, ln 2]", "when every score of the clip underflows to 0")
_stat("top1_flip", "top-1 flip",
      "1 if the top-scored class changed (between any two classes, right or wrong)", "0/1",
      "[argmax_c x ≠ argmax_c y] (lowest index on ties)", indicator=True, mean_name="top1_flip_rate")
_stat("top5_jaccard", "top-5 Jaccard overlap",
      "Jaccard overlap of the clean and perturbed top-5 class sets", "fraction",
      "|K_5(p) ∩ K_5(q)| / |K_5(p) ∪ K_5(q)|")
_stat("top10_spearman", "Spearman ρ over top-10 union",
      "Spearman rank correlation of clean and perturbed scores over the union of the clean and perturbed top-10 "
      "classes", "correlation in [-1, 1]",
      "Spearman ρ of (p_c, q_c) for c ∈ U = K_10(p) ∪ K_10(q), average ranks within U",
      "when p or q is constant over U")
_stat("top10_kendall", "Kendall τ over top-10 union",
      "Kendall rank correlation (tau-b) of clean and perturbed scores over the union of the clean and perturbed "
      "top-10 classes", "correlation in [-1, 1]",
      "Kendall τ_b of (p_c, q_c) for c ∈ U = K_10(p) ∪ K_10(q)", "when p or q is constant over U")
_stat("true_dp", "true-label Δp",
      "mean change of the true labels' scores", "probability",
      "(1/|T|) Σ_{c∈T} (q_c − p_c)", "for a clip without a true label")
_stat("true_dlogit", "true-label Δlogit",
      "mean change of the true labels' logits", "logit",
      "(1/|T|) Σ_{c∈T} (y_c − x_c)", "for a clip without a true label")
_stat("true_rank_change", "true-label rank change",
      "mean change of the true labels' ranks among all classes (positive: pushed down)", "ranks",
      "(1/|T|) Σ_{c∈T} (r_c(q) − r_c(p))", "for a clip without a true label")
_stat("top1_retention", "top-1 retention of true labels",
      "1 if the clean top-1 class is a true label and stays top-1 perturbed, 0 if it is displaced", "0/1",
      "|T ∩ K_1(p) ∩ K_1(q)| / |T ∩ K_1(p)|", "when the clean top-1 class is not a true label",
      indicator=True, mean_name="top1_retention_rate")
_stat("top5_retention", "top-5 retention of true labels",
      "fraction of the true labels in the clean top 5 that stay in the perturbed top 5", "fraction",
      "|T ∩ K_5(p) ∩ K_5(q)| / |T ∩ K_5(p)|", "when no true label is in the clean top 5")
_stat("true_label_drop", "true-label drop below 0.5",
      "fraction of the true labels scored >= 0.5 clean that score < 0.5 perturbed", "fraction",
      "|{c ∈ T: p_c ≥ ½ > q_c}| / |{c ∈ T: p_c ≥ ½}|", "when no true label scores >= 0.5 clean",
      mean_name="true_label_drop_rate")
_stat("false_alarm_new", "new false alarms (non-true classes crossing 0.5)",
      "number of non-true classes that cross 0.5 upwards (false alarms the perturbation creates)", "classes",
      "|{c ∈ F: p_c < ½ ≤ q_c}|")
_stat("max_false_dp", "Δ largest non-true score",
      "change of the largest score among the non-true classes", "probability",
      "max_{c∈F} q_c − max_{c∈F} p_c", "when every class is a true label")
_stat("max_score_change", "Δ max score (confidence)",
      "change of the clip's largest score (confidence)", "probability",
      "max_c q_c − max_c p_c")
_stat("brier", "Brier score",
      "Brier score of the condition's scores against the labels, mean over classes", "probability²",
      "(1/C) Σ_c (q_c − t_c)², t_c = 1 for a true label else 0")

# per_clip.csv columns written for every condition, in order
PER_CLIP_COLUMNS: List[str] = list(STATISTICS)


# -- metrics.csv rows -------------------------------------------------------------------------------
METRIC_LIST: List[Metric] = []


def _metric(*args, **kwargs) -> None:
    METRIC_LIST.append(Metric(*args, **kwargs))


_metric("mAP", "mAP", "mean over classes with >= 1 positive clip of the average precision (scikit-learn's "
        "step-wise AP, ties grouped)", "AP in [0, 1]", CONDITION, "(1/|P|) Σ_{c∈P} AP_c, P = classes with a positive")
_metric("mAUC", "mAUC", "mean over classes with >= 1 positive and >= 1 negative clip of the ROC AUC (ties count "
        "1/2)", "AUC in [0, 1]", CONDITION, "(1/|P'|) Σ_{c∈P'} AUC_c")
_metric("d_prime", "d′", "sqrt(2) * Phi^-1(mAUC): the mAUC as a Gaussian sensitivity index", "d′", CONDITION,
        "√2 · Φ⁻¹(mAUC)")
_metric("top1_hit_rate", "top-1 hit rate", "fraction of clips with a true label whose top-scored class is a "
        "true label (ties count against)", "fraction", CONDITION, "mean_i [best true label outranks all others]")
_metric("top5_hit_rate", "top-5 hit rate", "fraction of clips with a true label that have a true label among "
        "their 5 top-scored classes (ties count against)", "fraction", CONDITION,
        "mean_i [fewer than 5 non-true classes score >= the best true label]")
_metric("ece", "multi-label ECE", "expected calibration error over every (clip, class) score, 15 equal-width "
        "bins on [0, 1]", "probability", CONDITION,
        "Σ_b (n_b / (N·C)) · |mean of t in b − mean of q in b|")
_metric("nonfinite_clips", "clips with non-finite outputs", "number of clips with a NaN or infinite logit "
        "(clean or perturbed); excluded from every other metric", "clips", CONDITION,
        "#{i: a logit of clip i is NaN/±inf}", has_ci=False)
_metric("accuracy", "accuracy", "fraction of clips whose top-scored class (argmax, lowest index on ties) is "
        "their label", "fraction", CONDITION, "mean_i [argmax_c y_ic = label_i]", applies_to=SINGLE_LABEL)
_metric("top5_accuracy", "top-5 accuracy", "fraction of clips whose label is among their 5 top-scored classes "
        "(ties count against; equals top5_hit_rate on single-label data)", "fraction", CONDITION,
        "mean_i [fewer than 5 other classes score >= the label]", applies_to=SINGLE_LABEL)
_metric("macro_f1", "macro F1", "mean over the classes that are some clip's label of the F1 score of the "
        "argmax prediction", "F1 in [0, 1]", CONDITION,
        "(1/|P|) Σ_{c∈P} 2·TP_c / (2·TP_c + FP_c + FN_c), prediction = argmax", applies_to=SINGLE_LABEL)

_SUMMARY_TEXT = {"mean": "mean over clips", "median": "median over clips", "p90": "90th percentile over clips"}
_SUMMARY_FORMULA = {"mean": "mean_i s_i", "median": "median_i s_i (linear interpolation)",
                    "p90": "quantile_0.9,i s_i (linear interpolation)"}
for _s in STATISTICS.values():
    for _summary, _name in _s.summary_names.items():
        _what = "rate over clips" if _s.indicator else _SUMMARY_TEXT[_summary]
        _metric(_name, _s.title if _s.indicator else f"{_s.title}, {_summary}",
                f"{_what} of: {_s.description}", _s.units, PER_CLIP,
                f"{_SUMMARY_FORMULA[_summary]}, s = {_s.name} (clips where it is defined)",
                statistic=_s.name, summary=_summary)

_metric("min_eps_median", "min-eps median", "median (linear interpolation) of the min-eps over the clips whose "
        "clean output had a true label in the top k; unreachable clips count as +inf", "linf eps (waveform units)",
        MIN_EPS, "median of e_i over attacked clips, ∞ kept", has_ci=False)
_metric("min_eps_q25", "min-eps 25th percentile", "25th percentile (linear interpolation) of the min-eps over the "
        "attacked clips, unreachable = +inf", "linf eps (waveform units)", MIN_EPS,
        "quantile_0.25 of e_i over attacked clips", has_ci=False)
_metric("min_eps_q75", "min-eps 75th percentile", "75th percentile (linear interpolation) of the min-eps over the "
        "attacked clips, unreachable = +inf", "linf eps (waveform units)", MIN_EPS,
        "quantile_0.75 of e_i over attacked clips", has_ci=False)
_metric("min_eps_attacked_clips", "min-eps attacked clips", "clips with a true label in the clean top k (the "
        "clips the min-eps search attacks)", "clips", MIN_EPS, "#{i: e_i ≥ 0 or e_i = ∞}", has_ci=False)
_metric("min_eps_unreachable_clips", "min-eps unreachable clips", "attacked clips not broken by PGD at eps_max "
        "(min-eps +inf)", "clips", MIN_EPS, "#{i: e_i = ∞}", has_ci=False)
_metric("min_eps_missed_clean_clips", "min-eps clips missed clean", "clips with a true label but none in the top "
        "k already clean (nothing to attack; left out of the quantiles)", "clips", MIN_EPS,
        "#{i: e_i = −1}", has_ci=False)
_metric("snr_db_mean", "mean realised SNR", "mean over clips of the realised SNR of the perturbation (clean "
        "signal power / power of the added change)", "dB", PERTURBATION, "mean_i 10·log10(Σx² / Σ(x'−x)²)",
        has_ci=False)
_metric("bad_input_clips", "clips refused as bad input", "clips left out by --on-bad-clip skip (NaN/inf or "
        "out-of-range input samples)", "clips", PERTURBATION, "#{i: bad input}", has_ci=False)
# corruption suite (audiobench/metrics/corruption.py): one row per model, written when a run holds
# corruption conditions; mce, relative_mce and normalised_ce need a reference model
_metric("mean_corruption_map", "mean corruption mAP", "mean over corruptions of the mAP averaged over their "
        "severities", "mAP", SUITE, "mean_c mean_s m[c, s]")
_metric("relative_robustness", "relative robustness", "mean_corruption_map divided by the clean mAP", "ratio",
        SUITE, "mean_corruption_map / m0")
_metric("mce", "mCE", "ImageNet-C mean corruption error: mean over corruptions of the error summed over "
        "severities, divided by the reference model's", "ratio (< 1: more robust than the reference)", SUITE,
        "mean_c Σ_s (1 − m[c, s]) / Σ_s (1 − r[c, s])")
_metric("relative_mce", "relative mCE", "ImageNet-C relative mCE: mean over corruptions of the mAP drop from "
        "clean summed over severities, divided by the reference model's", "ratio", SUITE,
        "mean_c Σ_s (m0 − m[c, s]) / Σ_s (r0 − r[c, s])")
_metric("corruption_map", "corruption mAP", "one corruption: its mAP averaged over severities", "mAP", SUITE,
        "mean_s m[c, s]")
_metric("corruption_error", "corruption error", "one corruption: ImageNet-C's CE, the error 1 − mAP summed over "
        "severities", "sum of errors", SUITE, "Σ_s (1 − m[c, s])")
_metric("normalised_ce", "normalised CE", "one corruption: corruption_error divided by the reference model's",
        "ratio", SUITE, "Σ_s (1 − m[c, s]) / Σ_s (1 − r[c, s])")
del _s, _summary, _name, _what


def condition_metric_names(single_label: bool) -> List[str]:
    """The metrics.csv names :func:`~audiobench.metrics.condition.condition_metrics` emits."""
    skip = MULTI_LABEL if single_label else SINGLE_LABEL
    return [m.name for m in METRIC_LIST if m.kind in (CONDITION, PER_CLIP) and m.applies_to != skip]


def per_clip_metrics() -> Iterable[Metric]:
    return (m for m in METRIC_LIST if m.kind == PER_CLIP)


# -- renamed and retired names (docs/metrics.md lists them) ------------------------------------------
#: old name -> (what happened, what to read instead)
CHANGED_NAMES: Dict[str, tuple] = {
    "kl_mean": ("redefined: was the SUM over classes of the Bernoulli KL per clip, now the MEAN over classes "
                "(old value = C × new value)", "kl_mean, kl_median, kl_p90"),
    "js_mean": ("redefined: was the JS divergence of the sum-normalised score vectors in nats (blind to a "
                "uniform drop of all scores), now the mean per-class Bernoulli JS in bits",
                "js_mean; the old number is js_normalised_mean"),
    "js (per_clip.csv)": ("redefined as the mean per-class Bernoulli JS in bits", "js; old: js_normalised"),
    "kl (per_clip.csv)": ("redefined as the mean (not sum) over classes", "kl"),
    "entropy_delta_mean": ("retired: the mean binary entropy over all classes cannot see a score moving from 0.9 "
                           "to 0.1 (H(0.9) = H(0.1)) and is diluted by near-zero classes",
                           "true_dp_mean, max_score_change_mean"),
    "spearman_mean": ("retired: Spearman over all classes is dominated by the hundreds of near-zero classes "
                      "(true labels pushed to 0.01 still give ρ ≥ 0.9999)", "top10_spearman_mean, top10_kendall_mean"),
    "abs_dp_mean": ("retired: mean |Δp| over all classes is diluted by the near-zero classes",
                    "true_dp_mean, max_false_dp_mean, false_alarm_new_mean"),
    "min_eps_median, min_eps_q25, min_eps_q75": (
        "redefined: were 'inverted_cdf' quantiles over every labelled clip, with clips already missed clean "
        "counted as eps 0; now linear-interpolation quantiles over the attacked clips only",
        "min_eps_missed_clean_clips, min_eps_unreachable_clips, min_eps_attacked_clips"),
    "min_eps = 0 (per_clip.csv)": ("a clip already missed clean is now recorded as −1 (not 0)",
                                   "min_eps_missed_clean_clips"),
    "d_prime ci_low / ci_high": ("redefined: were percentiles of the resampled d′ (interpolation towards the "
                                 "+inf of perfect resamples gave +inf); now d′ of the mAUC interval's ends, an end "
                                 "at exactly 1 (0) taken halfway to the data's mAUC resolution", "d_prime"),
    "top1_hit_rate, top5_hit_rate ci_low / ci_high": ("added: these rows had no interval before",
                                                      "top1_hit_rate, top5_hit_rate"),
}


def markdown_table(metrics: Iterable[Metric] = None) -> str:
    """The metric table of docs/metrics.md (one row per metrics.csv name, anchored by name)."""
    metrics = list(METRIC_LIST if metrics is None else metrics)
    lines = ["| metric | kind | applies to | units | definition | formula |", "|---|---|---|---|---|---|"]
    for m in metrics:
        cells = [f'<a id="{m.anchor}"></a>`{m.name}`', m.kind, m.applies_to, m.units, m.description, m.formula]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def statistics_table() -> str:
    """The per-clip statistic table of docs/metrics.md (one row per per_clip.csv column)."""
    lines = ["| per_clip.csv column | units | definition | formula | undefined (NaN) | metrics.csv summaries |",
             "|---|---|---|---|---|---|"]
    for s in STATISTICS.values():
        cells = [f'<a id="stat-{s.name}"></a>`{s.name}`', s.units, s.description, s.formula, s.undefined,
                 ", ".join(f"`{n}`" for n in s.summary_names.values())]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def changes_table() -> str:
    lines = ["| old name | what changed | read instead |", "|---|---|---|"]
    for old, (what, instead) in CHANGED_NAMES.items():
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in (f"`{old}`", what, instead)) + " |")
    return "\n".join(lines)
