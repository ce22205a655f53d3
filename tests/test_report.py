"""`audiobench report`: collecting run folders, tables (rich, md, csv) and the HTML report.

The run folders are synthetic but complete: ``make_run_folder`` writes every file of the results
format (run.json, metrics.csv/.parquet, per_clip.csv, per_class.csv, scores.npz, audio/) for two
models, clean + gaussian at 3 SNRs + pgd at 2 eps + a min-eps condition, with seeded random
scores and metrics computed from them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from audiobench.errors import ResultsError
from audiobench.report.collect import safe_name

N_CLASSES = 527
MODELS = ("toy-cnn", "toy-ast")
CONDITIONS = (
    ("none", "none", "", float("nan"), 0.0),
    ("gaussian:snr_db=30", "gaussian", "snr_db", 30.0, 0.3),
    ("gaussian:snr_db=20", "gaussian", "snr_db", 20.0, 0.8),
    ("gaussian:snr_db=10", "gaussian", "snr_db", 10.0, 1.6),
    ("pgd:eps=0.001", "pgd", "eps", 0.001, 2.5),
    ("pgd:eps=0.002", "pgd", "eps", 0.002, 4.0),
    ("min-eps:eps_max=0.01", "min-eps", "eps_max", 0.01, 5.0),
)
SUSPECT_CELL = ("toy-ast", "pgd:eps=0.001")
SUSPECT_REASON = "loss does not increase over the PGD steps"


# -- a synthetic but complete run folder -------------------------------------------------------------
def _ap_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision per class (NaN for classes without positives), vectorised over classes."""
    order = np.argsort(-scores, axis=0, kind="stable")
    t = np.take_along_axis(targets, order, axis=0).astype(float)
    tp = np.cumsum(t, axis=0)
    prec = tp / np.arange(1, len(t) + 1)[:, None]
    npos = t.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(npos > 0, (prec * t).sum(0) / npos, np.nan)


def _auc_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    npos = targets.sum(0)
    nneg = len(targets) - npos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * targets).sum(0) - npos * (npos + 1) / 2) / (npos * nneg)
    return np.where((npos > 0) & (nneg > 0), auc, np.nan)


def _boot(fn, scores, targets, rng, n=20):
    """A CI centred on the point estimate, half-width 1.96 bootstrap standard deviations."""
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(scores), len(scores))
        vals.append(np.nanmean(fn(scores[idx], targets[idx])))
    point, half = float(np.nanmean(fn(scores, targets))), 1.96 * float(np.std(vals))
    return point - half, point + half


def make_run_folder(
    root: Path,
    run_id: str = "run-a",
    *,
    seed: int = 0,
    n_clips: int = 30,
    models=MODELS,
    clip_prefix: str = "clip",
    data_name: str = "toy",
    complete: bool = True,
    save_audio: int = 2,
    conditions=CONDITIONS,
    single_label: bool = False,
    n_classes: int = None,
    class_names=None,
) -> Path:
    """Write every file of the results format for a seeded synthetic run; returns the folder.

    ``single_label``: one true label per clip (accuracy and macro F1 appear); ``n_classes``: labels
    drawn from the first n classes only (the others have no positive clip)."""
    from scipy.special import expit
    from scipy.stats import norm

    from audiobench.metrics.condition import MIN_EPS_MISSED_CLEAN, PER_CLIP_SHIFT, condition_metrics, min_eps_summary

    rng = np.random.default_rng(seed)
    folder = Path(root) / run_id
    folder.mkdir(parents=True)
    # One id starts with '-' as real AudioSet ids can (URL quoting of audio links).
    clip_ids = np.array([f"{clip_prefix}{i:03d}" for i in range(n_clips - 1)] + [f"-{clip_prefix}x"])
    k = N_CLASSES if n_classes is None else n_classes
    targets = np.zeros((n_clips, N_CLASSES), dtype=bool)
    if not single_label:
        targets[:, :k] = rng.random((n_clips, k)) < 0.03
    targets[np.arange(n_clips), rng.integers(0, k, n_clips)] = True
    if single_label:
        targets[:, 5] = False
        targets[~targets.any(axis=1), 6] = True
    targets[:, 5] = False  # a class with no positives
    names = [f"class {i}" for i in range(N_CLASSES)]
    names[:4] = ["Speech", "Music", "Dog", "Hammer"]
    for i, name in enumerate(class_names or []):
        names[i] = name
    clip_list_hash = hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()
    vocab_hash = hashlib.sha256("\n".join(names).encode()).hexdigest()

    metrics, per_clip, per_class, npz = [], [], [], {"clip_ids": clip_ids, "targets": targets}
    trust, timings = {}, {}
    for mi, model in enumerate(models):
        skill = 2.5 - 0.6 * mi
        clean_logits = (skill * targets + rng.normal(0, 1, targets.shape) - 3).astype(np.float32)
        clean_p = expit(clean_logits)
        clean_ap = _ap_per_class(clean_logits, targets)
        trust[model], timings[model] = {}, {}
        for cid, pert, param, level, strength in conditions:
            logits = (clean_logits + strength * rng.normal(0, 1, targets.shape) - 0.3 * strength * targets
                      ).astype(np.float32)
            p = expit(logits)
            ap, auc = _ap_per_class(logits, targets), _auc_per_class(logits, targets)
            mAP, mAUC = float(np.nanmean(ap)), float(np.nanmean(auc))
            suspect = (model, cid) == SUSPECT_CELL
            base = dict(run_id=run_id, model=model, condition=cid, perturbation=pert, param=param, level=level)
            n_cls = int((targets.sum(0) > 0).sum())

            def row(metric, value, lo=float("nan"), hi=float("nan")):
                metrics.append({**base, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi,
                                "n_clips": n_clips, "n_classes": n_cls, "suspect": suspect})

            row("mAP", mAP, *_boot(_ap_per_class, logits, targets, rng))
            row("mAUC", mAUC, *_boot(_auc_per_class, logits, targets, rng))
            row("d_prime", float(np.sqrt(2) * norm.ppf(mAUC)))
            top1 = np.argmax(p, 1)
            top5 = np.argsort(-p, 1)[:, :5]
            row("top1_hit_rate", float(targets[np.arange(n_clips), top1].mean()))
            row("top5_hit_rate", float(np.take_along_axis(targets, top5, 1).any(1).mean()))
            if cid == "none":
                snr = np.full(n_clips, np.nan)
            elif pert == "gaussian":
                snr = level + rng.normal(0, 0.05, n_clips)
            else:
                snr = 40 - 5 * strength + rng.normal(0, 1, n_clips)
            min_eps = np.full(n_clips, np.nan)
            if pert == "min-eps":
                min_eps = np.exp(rng.normal(np.log(0.002 * (1 + mi)), 0.5, n_clips))
                min_eps[:2] = MIN_EPS_MISSED_CLEAN  # no true label in the top 5 already clean
                min_eps[2] = np.inf  # not broken at eps_max
                for name, value in min_eps_summary(min_eps).items():
                    row(name, value)
            # every other registered metric of a condition (shift statistics with their medians,
            # calibration), computed as the aggregator does, so this folder follows the registry
            res = condition_metrics(clean_logits, logits, targets, n_boot=20, seed=seed, valid=np.ones(n_clips, bool))
            for name, r in res["rows"].items():
                if name not in {"mAP", "mAUC", "d_prime", "top1_hit_rate", "top5_hit_rate"}:
                    row(name, r["value"], r.get("ci_low", float("nan")), r.get("ci_high", float("nan")))
            row("snr_db_mean", float(np.nanmean(snr)) if cid != "none" else float("nan"))
            row("bad_input_clips", 0.0)
            for i, clip in enumerate(clip_ids):
                per_clip.append({**base, "clip_id": clip, "snr_db": snr[i], "linf": 0.001 * strength,
                                 "l2": 0.05 * strength, "top1_hit": bool(targets[i, top1[i]]),
                                 "top5_hit": bool(targets[i, top5[i]].any()),
                                 **{k: res["per_clip"][k][i] for k in PER_CLIP_SHIFT},
                                 "nonfinite": False, "bad_input": False, "min_eps": min_eps[i]})
            for k in range(N_CLASSES):
                for metric, value in (("AP", ap[k]), ("AUC", auc[k])) + (
                        (("delta_AP", ap[k] - clean_ap[k]),) if cid != "none" else ()):
                    per_class.append({**base, "class_index": k, "class_name": names[k], "metric": metric,
                                      "value": value})
            npz[f"logits__{model}__{cid}"] = logits
            bins = np.linspace(0, 1, 21)
            npz[f"hist__{model}__{cid}"] = np.stack([np.histogram(clean_p, bins)[0],
                                                     np.histogram(p, bins)[0]]).astype(np.int64)
            timings[model][cid] = {"wall_s": 0.5 + strength, "peak_mem_bytes": 1 << 20, "clips_per_s": 60.0}
            if pert in ("pgd", "min-eps"):
                trust[model][cid] = {"suspect": suspect, "reasons": [SUSPECT_REASON] if suspect else [],
                                     "loss_per_step": [0.5, 0.6, 0.7], "bad_grad_fraction": 0.0}
            if save_audio and pert != "min-eps":
                import soundfile as sf

                # File-safe folder names, as the engine writes them ("pgd:eps=0.002" -> "pgd_eps=0.002").
                adir = folder / "audio" / model / safe_name(cid)
                adir.mkdir(parents=True)
                for clip in list(clip_ids[:save_audio - 1]) + [clip_ids[-1]]:
                    wav = (0.1 * rng.standard_normal(1600)).astype(np.float32)
                    sf.write(adir / f"{clip}.wav", wav, 16000, subtype="FLOAT")

    info = {
        "run_id": run_id, "complete": complete, "audiobench_version": "0.1.0",
        "config": {"model": list(models), "noise": ["gaussian", "pgd", "min-eps"], "seed": seed},
        "config_hash": hashlib.sha256(run_id.encode()).hexdigest()[:16],
        "versions": {"audiobench": "0.1.0", "torch": "2.11.0", "torchaudio": "2.11.0", "numpy": np.__version__,
                     "python": "3.11"},
        "git_commit": "0123456789abcdef", "device": "cpu", "precision": "fp32", "seed": seed,
        "data": {"name": data_name, "manifest": f"{data_name}.json", "manifest_sha256": "ab" * 32,
                 "clip_list_hash": clip_list_hash, "vocab_hash": vocab_hash, "n_clips": n_clips,
                 "vocab_size": N_CLASSES,
                 "sample_rate": 16000, "clip_seconds": 10.0},
        "models": {m: {"spec": {"family": "cnn"}, "checkpoint": None, "checkpoint_sha256": None} for m in models},
        "conditions": [{"id": cid, "perturbation": pert, "param": param, "level": None if cid == "none" else level,
                        "params": {param: level} if param else {}, "comparable_across_models": True}
                       for cid, pert, param, level, _ in conditions],
        "timings": timings, "trust": trust, "vocab": {"names": names},
        "start_time": "2025-01-01T00:00:00Z", "end_time": "2025-01-01T00:01:00Z",
    }
    (folder / "run.json").write_text(json.dumps(info, indent=1))
    mdf = pd.DataFrame(metrics)
    mdf.to_csv(folder / "metrics.csv", index=False)
    mdf.to_parquet(folder / "metrics.parquet", index=False)
    pd.DataFrame(per_clip).to_csv(folder / "per_clip.csv", index=False)
    pd.DataFrame(per_class).to_csv(folder / "per_class.csv", index=False)
    np.savez_compressed(folder / "scores.npz", **npz)
    return folder


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    make_run_folder(root, "run-a", seed=0)
    return root


@pytest.fixture(scope="module")
def run_a(results_dir) -> Path:
    return results_dir / "run-a"


def _copy_run(src: Path, dst_root: Path, name: str) -> Path:
    dst = dst_root / name
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def run_b_same_data(tmp_path_factory) -> Path:
    """A second run on the same clips (same clip ids, vocabulary, manifest) with one model."""
    root = tmp_path_factory.mktemp("results_b")
    return make_run_folder(root, "run-b", seed=1, models=("toy-cnn",), save_audio=0)


@pytest.fixture(scope="module")
def run_other_clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results_c")
    return make_run_folder(root, "run-c", seed=2, models=("toy-cnn",), clip_prefix="other", save_audio=0)


def _metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv", keep_default_na=False, na_values=[""])


def _value(run: Path, model: str, cond: str, metric: str) -> pd.Series:
    m = _metrics(run)
    return m[(m.model == model) & (m.condition == cond) & (m.metric == metric)].iloc[0]


# -- collect --------------------------------------------------------------------------------------------
def test_collect_accepts_results_dir_and_run_folder(results_dir, run_a):
    from audiobench.report import collect_runs

    a = collect_runs([results_dir])
    b = collect_runs([run_a, results_dir])  # the same folder twice counts once
    assert [r.run_id for r in a] == [r.run_id for r in b] == ["run-a"]
    assert a[0].models == list(MODELS)
    assert len(a[0].metrics) == len(_metrics(run_a))


def test_conditions_ordered_clean_first_then_mild_to_strong(run_a):
    from audiobench.report import collect_runs
    from audiobench.report.tables import ReportView

    view = ReportView(collect_runs([run_a]))
    assert [c.id for c in view.conditions] == [c[0] for c in CONDITIONS]
    assert [c.id for c in view.min_eps_conditions()] == ["min-eps:eps_max=0.01"]


def test_mixed_clip_lists_refused_unless_allowed(run_a, run_other_clips):
    from audiobench.report import collect_runs

    with pytest.raises(ResultsError) as exc:
        collect_runs([run_a, run_other_clips])
    msg = str(exc.value)
    assert "\n" not in msg and "run-a" in msg and "run-c" in msg and "clip list" in msg and "--allow-mixed" in msg
    runs = collect_runs([run_a, run_other_clips], allow_mixed=True)
    assert [r.run_id for r in runs] == ["run-a", "run-c"]


def test_other_vocabulary_refused(run_a, tmp_path):
    from audiobench.report import collect_runs

    other = _copy_run(run_a, tmp_path, "run-v")
    info = json.loads((other / "run.json").read_text())
    info["run_id"], info["data"]["vocab_hash"] = "run-v", "0" * 64
    (other / "run.json").write_text(json.dumps(info))
    m = _metrics(other)
    m["run_id"] = "run-v"
    m.to_csv(other / "metrics.csv", index=False)
    with pytest.raises(ResultsError, match="run-a and run-v differ in label vocabulary"):
        collect_runs([run_a, other])


def _drop_cell(m):
    return m[~((m.model == "toy-ast") & (m.condition == "gaussian:snr_db=20"))]


def _rename_run(m):
    m.loc[3, "run_id"] = "run-z"
    return m


def _unknown_model(m):
    extra = m.iloc[:1].copy()
    extra["model"] = "toy-extra"
    return pd.concat([m, extra])


def _unknown_condition(m):
    m.loc[m.condition == "pgd:eps=0.002", "condition"] = "pgd:eps=0.004"
    return m


def _duplicate_row(m):
    return pd.concat([m, m.iloc[[10]]])


@pytest.mark.parametrize("edit,needle", [
    (_drop_cell, "no rows for model toy-ast under condition gaussian:snr_db=20"),
    (_rename_run, "run_id run-z"),
    (_unknown_model, "toy-extra"),
    (_unknown_condition, "pgd:eps=0.004"),
    (_duplicate_row, "appears twice"),
])
def test_hand_edited_metrics_refused(run_a, tmp_path, edit, needle):
    from audiobench.report import collect_runs

    run = _copy_run(run_a, tmp_path, "run-a")
    edit(_metrics(run)).to_csv(run / "metrics.csv", index=False)
    with pytest.raises(ResultsError) as exc:
        collect_runs([run])
    msg = str(exc.value)
    assert needle in msg and "metrics.csv" in msg and "edited by hand" in msg and "\n" not in msg


def test_incomplete_run_skipped_with_warning_or_included(run_a, tmp_path):
    from audiobench.report import collect_runs

    root = tmp_path / "results"
    run = _copy_run(run_a, root, "run-a")
    info = json.loads((run / "run.json").read_text())
    info["complete"] = False
    (run / "run.json").write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="skipping incomplete run run-a"):
        with pytest.raises(ResultsError, match="no complete runs"):
            collect_runs([root])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.run_id for r in collect_runs([root], include_incomplete=True)] == ["run-a"]


@pytest.mark.parametrize("name,content,needle", [
    ("run.json", "{not json", "run.json: not valid JSON"),
    ("run.json", None, "run.json: file is missing"),
    ("metrics.csv", None, "metrics.csv: file is missing"),
    ("metrics.csv", "a,b\n1,2\n", "metrics.csv: missing column(s) run_id"),
])
def test_missing_or_corrupt_files(run_a, tmp_path, name, content, needle):
    from audiobench.report import collect_runs

    run = _copy_run(run_a, tmp_path, "run-a")
    if content is None:
        (run / name).unlink()
    else:
        (run / name).write_text(content)
    with pytest.raises(ResultsError) as exc:
        collect_runs([run])
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_corrupt_scores_npz_named_when_html_needs_it(run_a, tmp_path):
    from audiobench.report import collect_runs, render_html

    run = _copy_run(run_a, tmp_path, "run-a")
    (run / "scores.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    runs = collect_runs([run])
    with pytest.raises(ResultsError, match=r"scores\.npz: cannot be read"):
        render_html(runs, tmp_path / "out" / "report.html")


# -- text formats ---------------------------------------------------------------------------------------
def test_table_has_map_drop_ci_and_suspect(run_a):
    from audiobench.report import collect_runs, render

    text = render(collect_runs([run_a]), "table", width=160)
    clean = _value(run_a, "toy-cnn", "none", "mAP")
    pert = _value(run_a, "toy-cnn", "pgd:eps=0.002", "mAP")
    line = next(ln for ln in text.splitlines() if "pgd:eps=0.002" in ln)
    drop = pert.value - clean.value
    assert f"{pert.value:.3f}" in line and f"[{pert.ci_low:.3f}, {pert.ci_high:.3f}]" in line
    assert f"{drop:+.3f}" in line and f"{100 * drop / clean.value:+.1f}%" in line
    sus = [ln for ln in text.splitlines() if "⚠ suspect" in ln]
    assert len(sus) == 1 and "pgd:eps=0.001" in sus[0]
    assert SUSPECT_REASON in text and "min-eps" in text
    for c in CONDITIONS:
        assert c[0] in text


def test_md_has_expected_cells(run_a):
    from audiobench.report import collect_runs, render

    md = render(collect_runs([run_a]), "md")
    n_cls = int(_value(run_a, "toy-cnn", "none", "mAP").n_classes)
    assert f"| condition | toy-cnn (30 clips, {n_cls} classes) | toy-ast (30 clips, {n_cls} classes) |" in md
    for metric in ("## mAP", "## mAUC", "## d′", "### Bernoulli KL(clean ‖ perturbed) (mean over clips)",
                   "### top-1 flip", "### Spearman ρ over top-10 union (mean over clips)",
                   "### true-label rank change (mean over clips)", "### multi-label ECE"):
        assert metric in md, metric
    # the toy data set is not AudioSet eval: the mAP heading says what the mAP is over
    assert f"## mAP (mAP over {n_cls} classes present in 30 clips of toy; not comparable to AudioSet eval mAP)" in md
    clean = _value(run_a, "toy-ast", "none", "mAP")
    v = _value(run_a, "toy-ast", "gaussian:snr_db=20", "mAP")
    d = v.value - clean.value
    cell = f"{v.value:.3f} [{v.ci_low:.3f}, {v.ci_high:.3f}] ({d:+.3f}, {100 * d / clean.value:+.1f}%)"
    row = next(ln for ln in md.splitlines() if ln.startswith("| gaussian:snr_db=20 |"))
    assert row.rstrip(" |").split(" | ")[2] == cell
    s = _value(run_a, "toy-ast", "pgd:eps=0.001", "mAUC")
    assert f"{s.value:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}] ⚠" in md
    med = _value(run_a, "toy-cnn", "min-eps:eps_max=0.01", "min_eps_median")
    assert f"| toy-cnn | min-eps:eps_max=0.01 | {med.value:.3g} |" in md
    assert ("| model | condition | median | IQR [q25, q75] | attacked clips | unreachable (∞) | missed clean | clips "
            "| classes |") in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| toy-cnn | min-eps:eps_max=0.01 |"))
    assert row.endswith(f"| 28 | 1 | 2 | 30 | {n_cls} |")  # 2 clips missed clean, 1 unreachable (make_run_folder)
    assert f"toy-ast / `pgd:eps=0.001`: {SUSPECT_REASON}" in md


def test_csv_is_the_concatenated_tidy_rows(run_a, run_b_same_data):
    from audiobench.report import collect_runs, render

    text = render(collect_runs([run_a, run_b_same_data]), "csv")
    a = (run_a / "metrics.csv").read_text().splitlines()
    b = (run_b_same_data / "metrics.csv").read_text().splitlines()
    assert text.splitlines() == a + b[1:]
    got = pd.read_csv(io.StringIO(text))
    want = pd.concat([pd.read_csv(run_a / "metrics.csv"), pd.read_csv(run_b_same_data / "metrics.csv")],
                     ignore_index=True)
    pd.testing.assert_frame_equal(got, want)


def test_same_model_in_two_runs_gets_run_labels(run_a, run_b_same_data):
    from audiobench.report import collect_runs, render

    md = render(collect_runs([run_a, run_b_same_data]), "md")
    header = next(ln for ln in md.splitlines() if ln.startswith("| condition |"))
    labels = [cell.split(" (")[0] for cell in header.strip("| ").split(" | ")]
    assert labels == ["condition", "toy-cnn [run-a]", "toy-ast", "toy-cnn [run-b]"]


# -- HTML -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_a_plots(run_a):
    from audiobench.report import collect_runs
    from audiobench.report.plots import all_plots
    from audiobench.report.tables import ReportView

    return all_plots(ReportView(collect_runs([run_a])))


@pytest.fixture(scope="module")
def html_report(run_a, run_a_plots, tmp_path_factory):
    from audiobench.report import collect_runs, render_html

    out = tmp_path_factory.mktemp("html") / "site" / "report.html"
    html_path, pngs = render_html(collect_runs([run_a]), out, plots=run_a_plots)
    return html_path, pngs


def test_html_is_self_contained_with_png_images(html_report):
    html_path, pngs = html_report
    html = html_path.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html
    imgs = re.findall(r"<img\b[^>]*>", html)
    # 2 curves (gaussian snr_db, pgd eps) + 2 histogram grids + 1 min-eps + 2 ΔAP
    assert len(imgs) == 7 == len(pngs)
    for tag in imgs:
        m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert m, tag[:80]
        assert base64.b64decode(m.group(1), validate=True)[:8] == b"\x89PNG\r\n\x1a\n"
    for p in pngs:
        assert p.parent == html_path.parent / "report_files" and p.read_bytes()[:4] == b"\x89PNG"
    for section in ("Robustness curves", "Score histograms", "min-eps distribution", "Per-class ΔAP",
                    "Suspect flags", SUSPECT_REASON):
        assert section in html


def test_html_links_audio_by_relative_path(html_report, run_a):
    from urllib.parse import unquote

    html_path, _ = html_report
    html = html_path.read_text(encoding="utf-8")
    srcs = re.findall(r'<audio [^>]*src="([^"]+)"', html)
    wavs = sorted(run_a.glob("audio/*/*/*.wav"))
    assert len(srcs) == len(wavs) > 0
    for s in srcs:
        assert not s.startswith(("/", "file:", "http")), s
        target = (html_path.parent / unquote(s)).resolve()
        assert target in {w.resolve() for w in wavs}
    # Columns are condition ids from run.json, mapped back from the file-safe folder names.
    heads = re.findall(r"<th>([^<]+)</th>", html.split('id="audio"')[1])
    assert set(heads) == {c[0] for c in CONDITIONS if not c[0].startswith("min-eps")}
    cell = re.search(r'<th class="l">clip</th>(.*?)</tr><tr><td class="l">([^<]+)</td>(.*?)</tr>',
                     html.split('id="audio"')[1])
    cols = re.findall(r"<th>([^<]+)</th>", cell.group(1))
    links = re.findall(r'<audio [^>]*src="([^"]+)"', cell.group(3))
    for cond, link in zip(cols, links):
        assert unquote(link).endswith(f"/{safe_name(cond)}/{cell.group(2)}.wav")


def test_delta_ap_uses_strongest_condition_and_20_classes(run_a):
    from audiobench.report import collect_runs
    from audiobench.report.plots import delta_ap_extremes
    from audiobench.report.tables import ReportView

    view = ReportView(collect_runs([run_a]))
    for e in view.entries:
        cond, least, most = delta_ap_extremes(view, e)
        swept = [c for c, *_ in CONDITIONS if c != "none" and not c.startswith("min-eps")]
        assert cond == min(swept, key=lambda c: _value(run_a, e.model, c, "mAP").value)
        pc = pd.read_csv(run_a / "per_class.csv")
        d = pc[(pc.model == e.model) & (pc.condition == cond) & (pc.metric == "delta_AP")].dropna(subset=["value"])
        assert len(least) == len(most) == 20
        assert np.allclose(sorted(least.value), np.sort(d.value.to_numpy())[:20])
        assert np.allclose(sorted(most.value), np.sort(d.value.to_numpy())[-20:])
        assert 5 not in set(least.class_index) | set(most.class_index)  # class without positives


# -- what the tables say about the numbers (issue 14) ----------------------------------------------
MACRO = "$\\undefinedmacro$"  # matplotlib mathtext: unescaped, drawing it raises
SCRIPT = "<script>alert(1)</script>"
CROWDED = (("none", "none", "", float("nan"), 0.0),
           ("gaussian:snr_db=20", "gaussian", "snr_db", 20.0, 0.8),  # one level: drawn as a bar
           (f"impulse/{MACRO}", "impulse", "", float("nan"), 1.5),  # no numeric level: a bar too
           *((f"occlusion/{MACRO}-long-variant-name:period_s={p}", "occlusion", "period_s", p, 1.0)
             for p in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)),
           ("min-eps:eps_max=0.01", "min-eps", "eps_max", 0.01, 5.0))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """Model, condition and class names that matplotlib and markdown would interpret, ten levels of
    one sweep, single-level conditions and only 11 classes with a positive (ΔAP panels must split)."""
    root = tmp_path_factory.mktemp("hostile")
    return make_run_folder(root, "run-h", models=(f"{MACRO} model with a rather long name", SCRIPT),
                           conditions=CROWDED, n_classes=12, save_audio=1, n_clips=20,
                           class_names=[f"{MACRO} a class name long enough to be shortened", SCRIPT])


@pytest.fixture(scope="module")
def hostile_plots(hostile_run):
    from audiobench.report import collect_runs
    from audiobench.report.plots import all_plots
    from audiobench.report.tables import ReportView

    return all_plots(ReportView(collect_runs([hostile_run])))  # mathtext names must not raise here


@pytest.mark.slow
def test_hostile_names_render_inert_in_every_format(hostile_run, hostile_plots):
    from audiobench.report import collect_runs, render
    from audiobench.report.html import build_html

    runs = collect_runs([hostile_run])
    md = render(runs, "md")
    assert "<script" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "](" not in md.replace("] (", "")  # no markdown link syntax produced from names
    html = build_html(runs, hostile_plots, base_dir=hostile_run.parent, assets_url="report_files")
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert len(re.findall(r"<img\b", html)) == len(hostile_plots) >= 6
    text = render(runs, "table", width=200)
    assert SCRIPT in text and MACRO in text  # the terminal shows names as they are (rich Text, no markup)


@pytest.mark.slow
def test_every_plot_is_laid_out_without_overlap_or_clipping(run_a_plots, hostile_plots):
    """Crowded sweeps, long and hostile names, few classes: every figure's text stays apart and
    inside the figure (Plot.layout lists what does not); the standard report is checked as well."""
    names = {p.name for p in hostile_plots}
    assert "single-level" in names and any(n.startswith("curve-occlusion") for n in names)
    for p in hostile_plots:
        assert p.layout == (), (p.name, p.layout)
    for p in run_a_plots:
        assert p.layout == (), (p.name, p.layout)


def test_curves_start_from_the_clean_point(run_a):
    from audiobench.report import collect_runs
    from audiobench.report.plots import curve_figure, sweep_groups
    from audiobench.report.tables import ReportView

    view = ReportView(collect_runs([run_a]))
    for pert, param, conds in sweep_groups(view):
        fig = curve_figure(view, pert, param, conds)
        ax = fig.axes[0]
        fig.draw_without_rendering()
        assert [t.get_text() for t in ax.get_xticklabels()][0] == "clean"
        clean_x = ax.get_xticks()[0]
        points = [ln for ln in ax.get_lines() if ln.get_gid() == "clean-point"]
        assert len(points) == len(view.entries)
        for e, ln in zip(view.entries, points):
            assert ln.get_xdata()[0] == clean_x
            assert ln.get_ydata()[0] == pytest.approx(_value(run_a, e.model, "none", "mAP").value)
        levels = sorted(c.level for c in conds)
        mild = levels[-1] if "snr" in param else levels[0]
        assert (clean_x > mild) if "snr" in param else (clean_x < mild)  # beyond the mild end


def test_single_level_conditions_are_labelled_bars(hostile_run):
    from matplotlib.patches import Rectangle

    from audiobench.report import collect_runs
    from audiobench.report.plots import single_level_conditions, single_level_figure
    from audiobench.report.tables import ReportView

    view = ReportView(collect_runs([hostile_run]))
    assert [c.id for c in single_level_conditions(view)] == ["gaussian:snr_db=20", f"impulse/{MACRO}"]
    fig = single_level_figure(view)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["clean", "gaussian:snr_db=20", "impulse/\\$\\undefinedmacro\\$"]  # $ escaped for matplotlib
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert len(bars) == 3 * 2  # 3 categories x 2 models
    labels = {t.get_text() for t in ax.texts}
    v = _value(hostile_run, "<script>alert(1)</script>", "gaussian:snr_db=20", "mAP").value
    assert f"{v:.3f}" in labels  # each bar carries its value


def test_delta_ap_panels_never_show_a_class_twice(hostile_run):
    from audiobench.report import collect_runs
    from audiobench.report.plots import delta_ap_extremes
    from audiobench.report.tables import ReportView

    view = ReportView(collect_runs([hostile_run]))
    pc = pd.read_csv(hostile_run / "per_class.csv")
    for e in view.entries:
        cond, least, most = delta_ap_extremes(view, e)
        d = pc[(pc.model == e.model) & (pc.condition == cond) & (pc.metric == "delta_AP")].dropna(subset=["value"])
        assert 5 < len(d) < 2 * 20  # fewer classes with a positive than the two panels could hold
        assert not set(least.class_index) & set(most.class_index)
        assert set(least.class_index) | set(most.class_index) == set(d.class_index)  # split in halves
        assert (len(least), len(most)) == ((len(d) + 1) // 2, len(d) // 2)
        assert least.value.max() <= most.value.min()


def _table_headers(md: str) -> list[list[str]]:
    lines = md.splitlines()
    return [ln.strip("| ").split(" | ") for ln, nxt in zip(lines, lines[1:]) if nxt.startswith("|---")]


def test_every_table_column_has_a_header_with_counts(run_a):
    from rich.table import Table

    from audiobench.report import collect_runs, render
    from audiobench.report.html import build_html
    from audiobench.report.tables import ReportView, table_renderables

    runs = collect_runs([run_a])
    md = render(runs, "md")
    n_cls = int(_value(run_a, "toy-cnn", "none", "mAP").n_classes)
    headers = _table_headers(md)
    assert len(headers) > 20
    for h in headers:
        assert all(cell.strip() for cell in h), h
        if h[0] == "condition":  # a metric table: every model column gives its clips and classes
            assert all(c.endswith(f"(30 clips, {n_cls} classes)") for c in h[1:]), h
    for t in table_renderables(ReportView(runs)):
        if isinstance(t, Table):
            assert all(str(col.header).strip() for col in t.columns), [str(c.header) for c in t.columns]
    html = build_html(runs, [], base_dir=run_a.parent, assets_url="x")
    assert not re.search(r"<th[^>]*>\s*</th>", html)
    assert f"toy-cnn (30 clips, {n_cls} classes)</th>" in html


def test_map_says_when_it_is_not_audioset_eval_map(run_a, tmp_path):
    from audiobench.report import collect_runs
    from audiobench.report.tables import ReportView, map_note

    assert "not comparable to AudioSet eval mAP" in map_note(ReportView(collect_runs([run_a])))
    run = _copy_run(run_a, tmp_path, "run-a")
    info = json.loads((run / "run.json").read_text())
    info["data"].update(name="audioset-eval", used_clip_list_hash=info["data"]["clip_list_hash"])
    (run / "run.json").write_text(json.dumps(info))
    assert map_note(ReportView(collect_runs([run]))) is None  # the whole eval set: comparable
    info["data"]["used_clip_list_hash"] = "0" * 64  # run with --limit
    (run / "run.json").write_text(json.dumps(info))
    note = map_note(ReportView(collect_runs([run])))
    assert "audioset-eval (a subset)" in note and "not comparable" in note


def test_median_is_shown_where_it_disagrees_with_the_mean(run_a, tmp_path):
    from audiobench.report import collect_runs, render

    run = _copy_run(run_a, tmp_path, "run-a")
    m = _metrics(run)
    sel = (m.model == "toy-cnn") & (m.condition == "pgd:eps=0.002")
    med = float(m.loc[sel & (m.metric == "kl_median"), "value"].iloc[0])
    m.loc[sel & (m.metric == "kl_mean"), "value"] = 10 * med  # one clip dominating the mean
    m.loc[sel & (m.metric == "kl_mean"), ["ci_low", "ci_high"]] = [5 * med, 20 * med]
    m.to_csv(run / "metrics.csv", index=False)
    md = render(collect_runs([run]), "md")
    table = md.split("### Bernoulli KL(clean ‖ perturbed) (mean over clips)")[1].split("###")[0]
    row = next(ln for ln in table.splitlines() if ln.startswith("| pgd:eps=0.002 |"))
    assert f"· median {med:.4g}" in row.split(" | ")[1]
    assert "· median" not in row.split(" | ")[2]  # toy-ast's mean and median agree
    others = [ln for ln in table.splitlines() if ln.startswith("| gaussian")]
    assert others and not any("median" in ln for ln in others)


def test_cell_over_fewer_clips_says_so(run_a, tmp_path):
    from audiobench.report import collect_runs, render

    run = _copy_run(run_a, tmp_path, "run-a")
    m = _metrics(run)
    m.loc[(m.model == "toy-ast") & (m.condition == "pgd:eps=0.002"), "n_clips"] = 28
    m.to_csv(run / "metrics.csv", index=False)
    md = render(collect_runs([run]), "md")
    row = next(ln for ln in md.splitlines() if ln.startswith("| pgd:eps=0.002 |"))
    assert row.rstrip(" |").endswith("n=28") and "n=" not in row.split(" | ")[1]


def test_single_label_runs_show_accuracy_and_macro_f1(run_a, tmp_path):
    from audiobench.report import collect_runs, render
    from audiobench.report.html import build_html

    run = make_run_folder(tmp_path, "run-s", single_label=True, save_audio=0, models=("toy-cnn",),
                          conditions=CONDITIONS[:1] + CONDITIONS[5:6])
    m = _metrics(run)
    assert {"accuracy", "top5_accuracy", "macro_f1"} <= set(m.metric)
    acc = _value(run, "toy-cnn", "pgd:eps=0.002", "accuracy")
    runs = collect_runs([run])
    md = render(runs, "md")
    for heading in ("## accuracy", "## top-5 accuracy", "## macro F1"):
        assert heading in md
    assert f"{acc.value:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}]" in md
    text = render(runs, "table", width=220)
    assert "accuracy" in text and "macro F1" in text and f"{acc.value:.3f}" in text
    html = build_html(runs, [], base_dir=tmp_path, assets_url="x")
    assert "<h3>accuracy</h3>" in html and "<h3>macro F1</h3>" in html
    assert "accuracy" not in set(_metrics(run_a).metric)  # multi-label data keeps its metrics


def test_markdown_text_is_inert():
    from audiobench.report.tables import md_code, md_text

    assert md_text("a|b\nc") == "a\\|b c"
    assert md_text("[x](javascript:alert(1))") == "[x]\\(javascript:alert(1))"
    assert md_text("<img src=x onerror=alert(1)> & `code`") == "&lt;img src=x onerror=alert(1)&gt; &amp; \\`code\\`"
    assert md_text("back\\slash|") == "back\\\\slash\\|"
    assert md_code("pgd:eps=0.001") == "`pgd:eps=0.001`" and md_code("a`b") == "`` a`b ``"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_html_renders_in_headless_chromium(html_report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium)")
    html_path, _ = html_report
    shot = tmp_path / "shot.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (2000, 1280)
    assert float(img[..., :3].std()) > 0.05  # not a blank page


# -- CLI ------------------------------------------------------------------------------------------------
def _cli(args):
    from audiobench.cli import cli

    return CliRunner().invoke(cli, args)


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stderr
    for n in needles:
        assert n in err[0]


def test_cli_table_default_and_outputs(results_dir, tmp_path):
    r = _cli(["report", str(results_dir)])
    assert r.exit_code == 0, r.output
    assert "toy-cnn" in r.stdout and "pgd:eps=0.002" in r.stdout and "⚠ suspect" in r.stdout
    out = tmp_path / "t.md"
    r = _cli(["report", str(results_dir), "--format", "md", "--out", str(out)])
    assert r.exit_code == 0 and out.read_text().startswith("# audiobench report")
    r = _cli(["report", str(results_dir / "run-a"), "--format", "csv"])
    assert r.exit_code == 0 and r.stdout == (results_dir / "run-a" / "metrics.csv").read_text()


def test_cli_html_default_out_and_default_results_dir(results_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_error(_cli(["report"]), "results: no such results folder")
    shutil.copytree(results_dir, tmp_path / "results")
    r = _cli(["report", "--format", "html"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report.html").is_file() and len(list((tmp_path / "report_files").glob("*.png"))) == 7


def test_cli_errors_are_one_line(run_a, run_other_clips, tmp_path):
    _one_line_error(_cli(["report", str(tmp_path / "missing")]), "missing: no such results folder")
    _one_line_error(_cli(["report", str(run_a), str(run_other_clips)]), "run-a", "run-c", "clip list")
    assert _cli(["report", str(run_a), str(run_other_clips), "--allow-mixed", "--format", "md"]).exit_code == 0
    edited = _copy_run(run_a, tmp_path, "run-a")
    _drop_cell(_metrics(edited)).to_csv(edited / "metrics.csv", index=False)
    _one_line_error(_cli(["report", str(edited)]), "edited by hand")


def test_cli_incomplete_warning_line(run_a, tmp_path):
    run = _copy_run(run_a, tmp_path / "res", "run-a")
    info = json.loads((run / "run.json").read_text())
    info["complete"] = False
    (run / "run.json").write_text(json.dumps(info))
    r = _cli(["report", str(tmp_path / "res")])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("warning: skipping incomplete run run-a") and "no complete runs" in lines[1]
    r = _cli(["report", str(tmp_path / "res"), "--include-incomplete", "--format", "md"])
    assert r.exit_code == 0 and "INCOMPLETE" in r.stdout


# -- from a real `audiobench run` folder --------------------------------------------------------------
@pytest.mark.slow
def test_report_from_a_real_run_folder(tmp_path):
    """run (toy-cnn, random weights: only the folder matters here) then report in every format."""
    from urllib.parse import unquote

    results = tmp_path / "results"
    r = _cli(["run", "--model", "toy-cnn", "--noise", "gaussian,pgd", "--snr", "20,10", "--eps", "0.001,0.002",
              "--steps", "2", "--limit", "4", "--bootstrap", "20", "--save-audio", "1", "--random-weights",
              "--quiet", "--out", str(results)])
    assert r.exit_code == 0, r.output[-3000:]
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    t = _cli(["report", str(results)])
    assert t.exit_code == 0, t.output
    assert "gaussian:snr_db=10" in t.stdout and "none (clean)" in t.stdout
    c = _cli(["report", str(results), "--format", "csv"])
    assert c.exit_code == 0 and c.stdout == (run / "metrics.csv").read_text()
    out = tmp_path / "site" / "report.html"
    h = _cli(["report", str(results), "--format", "html", "--out", str(out)])
    assert h.exit_code == 0, h.output
    html = out.read_text(encoding="utf-8")
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == len(list((tmp_path / "site" / "report_files").glob("*.png"))) >= 3
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)
    srcs = re.findall(r'<audio [^>]*src="([^"]+)"', html)
    assert srcs and all((out.parent / unquote(s)).is_file() for s in srcs)
    assert "gaussian:snr_db=10</th>" in html.split('id="audio"')[1]  # folder name mapped back to the id


def test_feature_domain_conditions_are_marked_not_comparable(tmp_path):
    """A run with a feature-domain condition: the report marks it † with a note, in every format."""
    from click.testing import CliRunner

    from audiobench.cli import cli
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(6, seed=3, clip_seconds=1.0)
    write_shard(tmp_path / "d.h5", ids, wav, tgt, 16000)
    res = CliRunner().invoke(cli, ["run", "--model", "toy-cnn", "--data", str(tmp_path / "d.h5"), "--noise",
                                   "feature-gaussian", "--sigma", "0.5", "--out", str(tmp_path / "r"), "--quiet",
                                   "--bootstrap", "0", "--run-id", "f"])
    assert res.exit_code == 0, res.output
    for fmt in ("table", "md"):
        out = CliRunner().invoke(cli, ["report", str(tmp_path / "r"), "--format", fmt, "--width", "200"])
        assert out.exit_code == 0, out.output
        assert "feature-gaussian:sigma=0.5 †" in out.output and "not comparable across models" in out.output
