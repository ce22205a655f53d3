"""Weight-space sharpness (audiobench/analysis/sharpness.py), its command and its report pieces."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from audiobench.analysis.sharpness import (
    COLUMNS, SharpnessSettings, average_sharpness, hessian_max_eigenvalue, measure_sharpness, t_interval,
    worst_sharpness,
)
from audiobench.errors import ConfigError


# -- a quadratic loss with a known Hessian ----------------------------------------------------------
def _quadratic(eigenvalues, seed=0):
    """L(a, b) = ½ (θ - c)ᵀ A (θ - c) with θ = cat(a, b), A = Q diag(eigenvalues) Qᵀ (float64)."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    c = torch.randn(n, generator=g, dtype=torch.float64)
    k = n // 2

    def terms(params):
        theta = torch.cat([params["a"], params["b"]]) - c
        yield 0.5 * theta @ a @ theta

    return a, c, k, terms


def test_power_iteration_is_exact_on_a_quadratic():
    eig = [5.0, 2.0, 1.0, 0.5, -0.3, 0.1]
    a, c, k, terms = _quadratic(eig)
    theta = torch.randn(len(eig), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = {"a": theta[:k].clone(), "b": theta[k:].clone()}  # two tensors: the coupling must be right
    res = hessian_max_eigenvalue(terms, params, iters=500, tol=1e-12, seed=1)
    assert abs(res.eigenvalue - 5.0) < 1e-4 and res.converged
    # the largest *magnitude* eigenvalue, sign kept
    _, _, _, terms_neg = _quadratic([-4.0, 1.0, 0.5, 0.2])
    res = hessian_max_eigenvalue(terms_neg, {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)},
                                 iters=500, tol=1e-12)
    assert abs(res.eigenvalue + 4.0) < 1e-4


def test_average_sharpness_matches_its_expectation_and_grows_with_rho():
    """E[L(w + ρ|w|z)] - L(w) = ½ρ² Σ A_ii w_i² for a quadratic (the linear term has mean 0)."""
    eig = [3.0, 1.0, 0.5, 0.25]
    a, c, k, terms = _quadratic(eig)
    w = c + 0.3  # off the minimum: the first-order term is there, but averages out
    params = {"a": w[:k].clone(), "b": w[k:].clone()}
    rhos = (0.0, 0.05, 0.1, 0.2)
    draws = average_sharpness(terms, params, rhos, draws=400, seed=0)
    assert draws[0.0] == [0.0] * 400
    means = [t_interval(draws[r])[0] for r in rhos]
    assert means[0] == 0.0 and means[1] < means[2] < means[3]
    for r in rhos[1:]:
        mean, lo, hi = t_interval(draws[r])
        expected = 0.5 * r ** 2 * float((torch.diagonal(a) * w ** 2).sum())
        assert lo <= expected <= hi
    again = average_sharpness(terms, params, (0.1,), draws=5, seed=0)
    assert again[0.1] == draws[0.1][:5]  # seeded, and the same z for every rho
    assert average_sharpness(terms, params, (0.1,), draws=5, seed=1)[0.1] != again[0.1]


def test_worst_sharpness_one_step_is_the_first_order_maximiser():
    a, c, k, terms = _quadratic([2.0, 1.0, 0.5, 0.25])
    w = c + torch.tensor([0.5, -0.2, 0.1, 0.4], dtype=torch.float64)
    params = {"a": w[:k].clone(), "b": w[k:].clone()}
    grad = a @ (w - c)
    base = 0.5 * (w - c) @ a @ (w - c)
    for rho in (0.01, 0.1):
        eps = rho * w.abs() * torch.sign(grad)  # the ℓ∞ step: every weight by rho·|w| along the gradient sign
        moved = w + eps - c
        expected = float(0.5 * moved @ a @ moved - base)
        assert math.isclose(worst_sharpness(terms, params, rho, steps=1), expected, rel_tol=1e-9)
    assert worst_sharpness(terms, params, 0.0, steps=3) == 0.0
    vals = [worst_sharpness(terms, params, r, steps=3) for r in (0.01, 0.05, 0.1)]
    assert 0 < vals[0] < vals[1] < vals[2]


def test_t_interval():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(hi - mean, 4.302652729911275 / math.sqrt(3), rel_tol=1e-9)
    assert math.isnan(t_interval([1.0])[1])


@pytest.mark.parametrize("kwargs, match", [
    ({"rhos": (-0.1,)}, "rho"), ({"rhos": (float("nan"),)}, "rho"), ({"rhos": ()}, "rho"),
    ({"draws": 0}, "draws"), ({"steps": 0}, "steps"), ({"measures": ("flat",)}, "measures"),
    ({"hessian_tol": 0.0}, "hessian-tol"),
])
def test_settings_reject_bad_values_in_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as exc:
        SharpnessSettings(**kwargs)
    assert "\n" not in str(exc.value)


# -- on a real (toy) model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_batches():
    from audiobench.data import open_dataset

    with open_dataset(None) as ds:
        return list(ds.batches(4, limit=4))


@pytest.mark.slow
def test_toy_model_sharpness_is_zero_at_rho_0_grows_and_leaves_weights_bit_identical(toy_batches):
    from audiobench.models import load_model

    model = load_model("toy-cnn", sample_rate=16000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    settings = SharpnessSettings(rhos=(0.0, 0.02, 0.1), draws=2, steps=1, hessian_iters=3)
    table, prov = measure_sharpness({"toy-cnn": model}, toy_batches, settings, run_id="r1")
    assert list(table.columns) == list(COLUMNS) and (table["run_id"] == "r1").all()
    assert (table["n_clips"] == 4).all()
    for measure in ("average_sharpness", "worst_sharpness"):
        vals = table[table["measure"] == measure].sort_values("rho")["value"].tolist()
        assert vals[0] == 0.0 and vals[0] < vals[1] < vals[2], (measure, vals)
    hess = table[table["measure"] == "hessian_max_eig"].iloc[0]
    assert math.isfinite(hess["value"]) and hess["steps"] <= 3
    assert prov["models"]["toy-cnn"]["n_weights"] == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("net."))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_int8_variant_is_refused(toy_batches):
    from audiobench.models import load_model

    with pytest.raises(ConfigError, match="int8"):
        measure_sharpness([load_model("toy-cnn@int8", sample_rate=16000)], toy_batches,
                          SharpnessSettings(measures=("hessian",), hessian_iters=1))


# -- the command ------------------------------------------------------------------------------------
def _cli():
    from audiobench.cli import cli

    return cli


@pytest.mark.slow
def test_command_writes_its_table_and_run_json(tmp_path):
    args = ["sharpness", "--model", "toy-cnn", "--limit", "8", "--rho", "0.01,0.05", "--draws", "2", "--steps", "1",
            "--hessian-iters", "2", "--out", str(tmp_path), "--run-id", "s1", "--quiet"]
    res = CliRunner().invoke(_cli(), args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "s1"
    table = pd.read_csv(run_dir / "sharpness.csv")
    assert list(table.columns) == list(COLUMNS)
    assert set(table["measure"]) == {"loss", "average_sharpness", "worst_sharpness", "hessian_max_eig"}
    assert (table["n_clips"] == 8).all() and (table["model"] == "toy-cnn").all()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["kind"] == "sharpness" and meta["complete"] and meta["run_id"] == "s1"
    assert meta["models"]["toy-cnn"]["checkpoint_sha256"]
    assert meta["data"]["n_clips"] == 8 and meta["data"]["used_clip_list_hash"]
    assert meta["seed"] == 0 and meta["versions"]["torch"] and meta["config"]["settings"]["rhos"] == [0.01, 0.05]
    assert "average_sharpness" in meta["definitions"]
    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code == 1 and "already exists; choose another --run-id" in again.output


@pytest.mark.parametrize("extra, match", [
    (["--model", "toy-cnnn"], "unknown model"), (["--model", "toy-cnn@int3"], "unknown variant"),
    (["--rho", "-0.1"], "rho"), (["--rho", "nan"], "rho"), (["--rho", "x"], "not a number"),
    (["--draws", "0"], "draws"), (["--limit", "0"], "limit"),
])
def test_command_bad_inputs_are_one_line(tmp_path, extra, match):
    res = CliRunner().invoke(_cli(), ["sharpness", "--out", str(tmp_path), "--quiet"] + extra)
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and lines[0].startswith("Error:")
    assert not list(tmp_path.iterdir())  # nothing written


# -- report -----------------------------------------------------------------------------------------
def _fake_tables():
    rows = []
    for model, avg, worst, eig in (("m1", 0.01, 0.1, 2.0), ("m2", 0.03, 0.4, 7.0)):
        rows.append(dict(run_id="s", model=model, measure="loss", rho=0.0, value=0.1))
        for rho in (0.01, 0.05):
            rows.append(dict(run_id="s", model=model, measure="average_sharpness", rho=rho, value=avg * rho / 0.05,
                             ci_low=0.0, ci_high=avg))
            rows.append(dict(run_id="s", model=model, measure="worst_sharpness", rho=rho, value=worst * rho / 0.05))
        rows.append(dict(run_id="s", model=model, measure="hessian_max_eig", rho=float("nan"), value=eig))
    sharp = pd.DataFrame(rows)
    m = []
    for run, model, clean, pgd, corr in (("r1", "m1", 0.9, 0.5, (0.8, 0.7)), ("r2", "m1", 0.9, 0.4, (0.8, 0.6)),
                                         ("r2", "m2", 0.8, 0.2, (0.5, 0.5)), ("r2", "m3", 0.7, 0.1, (0.6, 0.6))):
        m.append(dict(run_id=run, model=model, condition="none", perturbation="none", param="", level=None,
                      metric="mAP", value=clean))
        m.append(dict(run_id=run, model=model, condition="pgd/linf:eps=0.002", perturbation="pgd", param="eps",
                      level=0.002, metric="mAP", value=pgd))
        m.append(dict(run_id=run, model=model, condition="pgd/linf:eps=0.002", perturbation="pgd", param="eps",
                      level=0.002, metric="mAUC", value=0.99))
        for name, v in zip(("reverb/rt60=0.5", "mp3/kbps=32"), corr):
            m.append(dict(run_id=run, model=model, condition=name, perturbation=name.split("/")[0], param="x",
                          level=1.0, metric="mAP", value=v))
        m.append(dict(run_id=run, model=model, condition="gaussian/snr=10", perturbation="gaussian", param="snr_db",
                      level=10.0, metric="mAP", value=0.0))  # not a corruption of the suite: ignored
    return sharp, pd.DataFrame(m)


def test_report_table_joins_sharpness_and_robustness():
    from audiobench.report.sharpness import sharpness_table

    sharp, metrics = _fake_tables()
    t = sharpness_table(sharp, metrics).set_index("model")
    assert list(t.index) == ["m1", "m2"]  # m3 has no sharpness rows
    assert t.loc["m1", "average_sharpness@rho=0.05"] == 0.01 and t.loc["m2", "hessian_max_eig"] == 7.0
    assert math.isclose(t.loc["m1", "drop mAP pgd/linf:eps=0.002"], 0.5)  # the latest run (r2) wins
    assert math.isclose(t.loc["m1", "drop mAP corruptions"], 0.9 - 0.7)  # mean of 0.1 and 0.3; gaussian ignored
    assert t.loc["m2", "n corruption conditions"] == 2
    only = sharpness_table(sharp, None, rho=0.01)
    assert [c for c in only.columns if "@" in c] == ["average_sharpness@rho=0.01", "worst_sharpness@rho=0.01"]


def test_terminal_shows_the_wide_sharpness_table_transposed():
    from audiobench.report.sections import terminal_shape
    from audiobench.report.sharpness import sharpness_table

    sharp, metrics = _fake_tables()
    t = sharpness_table(sharp, metrics)
    header, rows = terminal_shape(list(t.columns), [[str(v) for v in r] for r in t.itertuples(index=False)])
    assert header == ["model", "m1", "m2"] and [r[0] for r in rows] == list(t.columns[1:])
    narrow = (["model", "a"], [["m1", "1"]])
    assert terminal_shape(*narrow) == (["model", "a"], [["m1", "1"]])


def test_report_plots():
    from audiobench.report.sharpness import sharpness_curves, sharpness_vs_robustness

    sharp, metrics = _fake_tables()
    plots = sharpness_vs_robustness(sharp, metrics)
    assert len(plots) == 1 and plots[0].png.startswith(b"\x89PNG") and plots[0].section == "sharpness"
    assert sharpness_vs_robustness(sharp, metrics[metrics["model"] == "m3"]) == []
    curves = sharpness_curves(sharp)
    assert len(curves) == 1 and curves[0].png.startswith(b"\x89PNG")


def test_command_default_rho_is_the_library_default():
    from audiobench.analysis.sharpness import DEFAULT_RHOS
    from audiobench.commands.sharpness import DEFAULT_RHO, _floats

    assert _floats("--rho", DEFAULT_RHO) == DEFAULT_RHOS


def test_docs_page_matches_the_code():
    import re
    from pathlib import Path

    from audiobench.analysis.sharpness import ROW_MEASURES
    from audiobench.report.sharpness import CORRUPTIONS

    page = (Path(__file__).resolve().parents[1] / "docs" / "quantization-and-sharpness.md").read_text()
    section = page.split("## Sharpness", 1)[1].split("\n## ", 1)[0]
    measures = set(re.findall(r"^\| `([a-z_]+)`", section, flags=re.M))
    assert measures == {"loss", *ROW_MEASURES.values()}
    assert ", ".join(COLUMNS) in " ".join(section.split())
    assert ", ".join(CORRUPTIONS) in " ".join(section.split())


@pytest.mark.slow
def test_fp16_variant_weight_gradients_are_not_loss_scaled(toy_batches):
    """The fp16 variant scales its backward pass for input gradients; sharpness turns that off,
    so its Hessian is the float model's up to half precision, not 2^10 times it."""
    from audiobench.models import load_model

    settings = SharpnessSettings(measures=("hessian",), hessian_iters=4, hessian_tol=1e-2)
    batches = [(toy_batches[0].waveform[:2, :32000], toy_batches[0].targets[:2])]  # 2 clips x 2 s
    ref, _ = measure_sharpness([load_model("toy-cnn", sample_rate=16000)], batches, settings)
    half = load_model("toy-cnn@fp16", sample_rate=16000)
    got, _ = measure_sharpness([half], batches, settings)
    assert half.grad_scale > 1  # restored after the measurement
    a, b = float(ref["value"].iloc[-1]), float(got["value"].iloc[-1])
    assert math.isfinite(b) and abs(b - a) <= 0.2 * abs(a), (a, b)
