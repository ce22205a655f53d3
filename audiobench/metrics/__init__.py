"""Metrics: tagging quality (mAP, mAUC, d′, top-k), output-shift statistics, bootstrap CIs.

``METRICS`` maps each metric name written to ``metrics.csv`` to a one-line description.
"""

from __future__ import annotations

from audiobench.registry import Registry

METRICS: Registry[str] = Registry("metric")

# Condition-level metrics written to metrics.csv (name -> one-line description). Registered here,
# without importing the numeric modules, so `audiobench list metrics` stays instant.
_DESCRIPTIONS = {
    "mAP": "mean over classes with >= 1 positive of average precision (scikit-learn AP, ties grouped)",
    "mAUC": "mean over classes with >= 1 positive and >= 1 negative of ROC AUC (ties count 1/2)",
    "d_prime": "sqrt(2) * Phi^-1(mAUC): AUC as a Gaussian sensitivity index",
    "top1_hit_rate": "fraction of labelled clips whose top-scored class is a true label (ties count against)",
    "top5_hit_rate": "fraction of labelled clips with a true label among the 5 top-scored classes",
    "kl_mean": "mean over clips of sum over classes of Bernoulli KL(p_clean || p_perturbed), nats",
    "js_mean": "mean over clips of the Jensen-Shannon divergence of the sum-normalised score vectors, nats",
    "entropy_delta_mean": "mean over clips of the change (perturbed - clean) of mean per-class binary entropy, nats",
    "top1_flip_rate": "fraction of clips whose top-scored class changed under the perturbation",
    "top5_jaccard_mean": "mean over clips of the Jaccard overlap of clean and perturbed top-5 class sets",
    "spearman_mean": "mean over clips of the Spearman rank correlation of clean and perturbed scores",
    "abs_dp_mean": "mean over clips and classes of |p_perturbed - p_clean|",
    "true_label_drop_rate": "mean over clips of the fraction of true labels scored >= 0.5 clean that fell below 0.5",
    "snr_db_mean": "mean over clips of the realised SNR of the perturbation, dB (clean signal / added change)",
    "nonfinite_clips": "number of clips with a NaN or infinite logit (excluded from the other metrics)",
    "bad_input_clips": "clips left out by --on-bad-clip skip (NaN/inf or out-of-range input samples)",
    "min_eps_median": "median over clips of the smallest linf eps removing every true label from the top 5",
    "min_eps_q25": "25th percentile over clips of the min-eps (smallest deactivating linf eps)",
    "min_eps_q75": "75th percentile over clips of the min-eps (smallest deactivating linf eps)",
    "mean_corruption_map": "corruption suite: mean over corruptions of the severity-averaged mAP",
    "relative_robustness": "corruption suite: mean_corruption_map / clean mAP",
    "mce": "corruption suite: ImageNet-C mCE, mean over corruptions of sum_s (1 - mAP) / the reference model's",
    "relative_mce": "corruption suite: ImageNet-C relative mCE, mean over corruptions of the mAP drop / the reference's",
    "corruption_map": "corruption suite, one corruption: its mAP averaged over severities",
    "corruption_error": "corruption suite, one corruption: sum over severities of (1 - mAP), ImageNet-C's CE",
    "normalised_ce": "corruption suite, one corruption: corruption_error / the reference model's",
}
for _name, _text in _DESCRIPTIONS.items():
    METRICS.register(_name, _text)
del _name, _text
