"""AudioSet-C corruptions: contract, determinism, gradients, chains, the suite, summary metrics,
plots and the docs page. Physics on real clips: tests/test_corruptions_physics.py."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from audiobench.errors import ConfigError
from audiobench.perturb import PERTURBATIONS
from audiobench.perturb.base import AttackTrace
from audiobench.perturb.corruptions import CORRUPTION_NAMES, CORRUPTIONS, SEVERITY_TABLES
from audiobench.rng import ClipRNG

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
NAMES = ("pink-noise", "brown-noise", "background", "reverb", "lowpass", "highpass", "clipping", "bitcrush", "mp3",
         "resample", "pitch-shift", "speed")


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    """Two short synthetic recordings (a tone and a noise burst) and a labels CSV."""
    import soundfile as sf

    folder = tmp_path_factory.mktemp("bank")
    t = np.arange(8000) / 8000.0
    sf.write(folder / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    (folder / "sub").mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "sub" / "hiss.flac", (0.1 * rng.standard_normal(12000)).astype(np.float32), 24000)
    (folder / "labels.csv").write_text("file,label\ntone.wav,Sine wave\nhiss.flac,Hiss\n")
    return folder


def make(name: str, severity: int = 3, bank=None, **kw):
    if name == "background":
        kw.setdefault("bank", str(bank))
    return PERTURBATIONS.get(name)(severity=severity, **kw).with_sample_rate(SR)


def clips(b: int = 3, n: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    tone = torch.sin(2 * math.pi * 700 * t) * 0.3
    return (tone + 0.2 * torch.randn(b, n, generator=g)).clamp(-0.9, 0.9)


def rng_for(ids, p) -> ClipRNG:
    return ClipRNG.for_clips(7, ids, p.condition_key())


# -- registry and tables ------------------------------------------------------------------------------
def test_twelve_names_registered_with_tables_monotone_in_the_physical_parameter():
    assert CORRUPTION_NAMES == NAMES
    for cls in CORRUPTIONS:
        assert PERTURBATIONS.get(cls.name) is cls
        assert cls.__doc__ and len(cls.__doc__) > 200, cls.name
        assert cls.level_field == "severity" and cls.uses_model is False
        table = cls.table
        assert sorted(table) == [1, 2, 3, 4, 5], cls.name
        first = [table[s][0] if isinstance(table[s], tuple) else table[s] for s in sorted(table)]
        steps = np.diff(np.asarray(first, dtype=float))
        assert (steps > 0).all() if cls.damage_direction == "up" else (steps < 0).all(), (cls.name, first)
    # reverb's second column (DRR) falls as RT60 grows: both make it worse
    drr = [SEVERITY_TABLES["reverb"][2][s][1] for s in range(1, 6)]
    assert (np.diff(drr) < 0).all()


def test_severity_and_naming():
    p = make("lowpass", 2)
    assert p.condition_id == "lowpass:severity=2" and p.param == "severity" and p.level == 2.0
    d = p.to_dict()
    assert d["cutoff_hz"] == 4000.0 and d["severity"] == 2 and d["differentiable"] is True
    r = make("reverb", 5).to_dict()
    assert (r["rt60_s"], r["drr_db"]) == (2.0, -3.0)
    from audiobench.perturb.grid import expand_grid

    assert [c.severity for c in expand_grid("mp3", severity="1,3,5")] == [1, 3, 5]
    for bad in (0, 6, 2.5, True, "x"):
        with pytest.raises(ConfigError):
            PERTURBATIONS.get("clipping")(severity=bad)


def test_rate_checks_are_one_line_config_errors(tmp_path):
    cases = [
        (lambda: PERTURBATIONS.get("lowpass")(severity=1).with_sample_rate(8000), "Nyquist"),
        (lambda: PERTURBATIONS.get("resample")(severity=1).with_sample_rate(8000), "not below"),
        (lambda: PERTURBATIONS.get("mp3")(severity=3).with_sample_rate(20000), "MP3 sample rate"),
        (lambda: PERTURBATIONS.get("mp3")(severity=1).with_sample_rate(8000), "not an MP3 bitrate"),
        (lambda: PERTURBATIONS.get("background")(severity=1), "--noise-bank"),
        (lambda: PERTURBATIONS.get("background")(severity=1, bank=str(tmp_path / "absent")), "not a folder"),
        (lambda: PERTURBATIONS.get("background")(severity=1, bank=str(tmp_path)), "no audio files"),
        (lambda: PERTURBATIONS.get("reverb")(severity=1, rir_bank=str(tmp_path)), "no audio files"),
    ]
    for build, words in cases:
        with pytest.raises(ConfigError, match=words) as exc:
            build()
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="sample_rate"):
        PERTURBATIONS.get("pink-noise")(severity=1)(clips(), rng=ClipRNG([1, 2, 3]))


# -- the perturbation contract ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_contract_new_tensor_range_determinism_batch_independence_and_trace(name, tiny_bank):
    p = make(name, 4, bank=tiny_bank)
    x = clips(3)
    x[1] *= 3.0  # one clip reaching full scale, clamped below
    x = x.clamp(-1, 1)
    keep = x.clone()
    ids = ["a", "b", "c"]
    trace = AttackTrace()
    y = p(x, rng=rng_for(ids, p), trace=trace)
    assert torch.equal(x, keep), "input modified"
    assert y.shape == x.shape and y.dtype == x.dtype and y.data_ptr() != x.data_ptr()
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    assert not torch.equal(y, x)
    for key, values in trace.per_clip.items():
        assert len(values) == 3, key
    assert torch.equal(p(x, rng=rng_for(ids, p)), y)  # same seed, clip and condition -> same output
    # clip "b" alone, and in another batch with other clip mates, gives the same output
    alone = p(x[1:2], rng=rng_for(["b"], p))
    other = p(torch.stack([clips(1, seed=5)[0], x[1]]), rng=rng_for(["z", "b"], p))
    assert torch.allclose(alone[0], y[1], atol=1e-6) and torch.allclose(other[1], y[1], atol=1e-6)


def test_realised_values_recorded():
    x = clips(2)
    t = AttackTrace()
    p = make("pink-noise", 3)
    p(x, rng=rng_for(["a", "b"], p), trace=t)
    assert np.allclose(t.per_clip["realised_snr_db"], 10.0, atol=1e-3)
    t = AttackTrace()
    p = make("reverb", 2)
    p(x, rng=rng_for(["a", "b"], p), trace=t)
    assert set(t.per_clip) == {"rt60_s", "drr_db"} and np.allclose(t.per_clip["drr_db"], 6.0, atol=1e-6)
    t = AttackTrace()
    p = make("mp3", 3)
    p(x, rng=rng_for(["a", "b"], p), trace=t)
    assert np.allclose(t.per_clip["bitrate_kbps"], 64.0, rtol=0.02)
    t = AttackTrace()
    p = make("speed", 1)
    p(x, rng=rng_for(["a", "b"], p), trace=t)
    assert all(v in (pytest.approx(1.05), pytest.approx(1 / 1.05)) for v in t.per_clip["speed_factor"])


def test_silent_clip_stays_silent_under_additive_noise(tiny_bank):
    x = torch.zeros(1, 2000)
    for name in ("pink-noise", "brown-noise", "background"):
        p = make(name, 5, bank=tiny_bank)
        t = AttackTrace()
        assert torch.equal(p(x, rng=rng_for(["s"], p), trace=t), x)
        assert t.per_clip["realised_snr_db"] == [math.inf]


# -- gradients and chains ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [c.name for c in CORRUPTIONS if c.differentiable])
def test_gradients_flow_through_differentiable_corruptions(name, tiny_bank):
    p = make(name, 3, bank=tiny_bank)
    x = clips(2, n=3000) * 0.5
    prepared = p.prepare(x, rng_for(["a", "b"], p))
    z = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad((prepared(z) * w).sum(), z)
    assert torch.isfinite(g).all() and (g.abs().sum(dim=1) > 0).all(), name


@pytest.mark.parametrize("name", ["mp3", "bitcrush"])
def test_non_differentiable_refused_in_chain_unless_straight_through(name):
    from audiobench.perturb.chain import Chain, parse_on

    assert PERTURBATIONS.get(name).differentiable is False
    with pytest.raises(ConfigError, match="straight_through") as exc:
        Chain(base={"perturbation": name, "severity": 3}, attack={"perturbation": "pgd", "eps": 0.001, "steps": 1})
    assert "\n" not in str(exc.value)
    spec = parse_on(f"{name}:severity=3;straight_through=true")
    chain = Chain(base=spec, attack={"perturbation": "pgd", "eps": 0.001, "steps": 1})
    assert chain.base_perturbation.straight_through is True
    # a non-gradient "attack" on top needs no gradient
    Chain(base={"perturbation": name, "severity": 3}, attack={"perturbation": "gaussian", "snr_db": 20})
    # straight-through: forward is the corruption, backward the identity
    p = make(name, 3, straight_through=True)
    x = clips(2, n=3000) * 0.5
    prepared = p.prepare(x, rng_for(["a", "b"], p))
    z = x.clone().requires_grad_(True)
    out = prepared(z)
    assert torch.allclose(out.detach(), make(name, 3).prepare(x, None)(x))
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad((out * w).sum(), z)
    assert torch.equal(g, w)


def _tiny_model():
    from perturb_helpers import TinyConvTagger

    return TinyConvTagger(n_classes=6)


def test_pgd_through_reverb_attacks_the_reverberant_audio():
    """--on reverb:severity=3 with PGD: the model sees reverb(x + delta), |delta| <= eps, and the
    attack's loss on that is higher than on reverb(x)."""
    from audiobench.perturb.attacks import bce_per_clip
    from audiobench.perturb.chain import Chain, parse_on

    base = parse_on("reverb:severity=3")
    chain = Chain(base=base, attack={"perturbation": "pgd", "eps": 0.01, "steps": 5}).with_sample_rate(8000)
    assert chain.condition_id == "pgd/linf:eps=0.01@reverb:severity=3" and chain.needs_sample_rate
    model = _tiny_model()
    x = clips(2, n=4000) * 0.5
    keep = x.clone()
    t = torch.zeros(2, 6)
    t[:, 1] = 1
    ids = ["a", "b"]
    trace = AttackTrace()
    out = chain(x, model=model, targets=t, rng=ClipRNG.for_clips(0, ids, chain.condition_key()), trace=trace)
    assert torch.equal(x, keep) and out.abs().max() <= 1
    reverb = chain.base_perturbation
    plain = reverb(x, rng=ClipRNG.for_clips(0, ids, chain.condition_key()))  # same room: the base draws first
    with torch.no_grad():
        gain = bce_per_clip(model(out), t) - bce_per_clip(model(plain), t)
    assert (gain > 0).all(), gain
    # the difference is a reverberated perturbation of at most eps per sample before the room
    prepared = reverb.prepare(x, ClipRNG.for_clips(0, ids, chain.condition_key()))
    assert torch.allclose(prepared(x).clamp(-1, 1), plain, atol=1e-6)
    assert "rt60_s" in trace.per_clip and len(trace.loss_per_step) == 6
    # straight-through mp3 below PGD runs end to end
    st = Chain(base=parse_on("mp3:severity=5;straight_through=true"), attack={"perturbation": "pgd", "eps": 0.01, "steps": 2})
    st = st.with_sample_rate(8000)
    y = st(x, model=model, targets=t, rng=ClipRNG.for_clips(0, ids, st.condition_key()))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_min_eps_refused_through_a_corruption():
    from audiobench.perturb.chain import Chain

    with pytest.raises(ConfigError, match="min-eps"):
        Chain(base={"perturbation": "reverb", "severity": 2}, attack={"perturbation": "min-eps"})


def test_gaussian_base_keeps_the_attack_after_it():
    """Li et al.'s cells are unchanged: gaussian / occlusion bases are applied before the attack."""
    from audiobench.perturb.chain import Chain, sees_through

    chain = Chain(base={"perturbation": "gaussian", "snr_db": 20}, attack={"perturbation": "pgd", "eps": 0.01, "steps": 2})
    assert not sees_through(chain.base_perturbation)
    assert sees_through(make("lowpass"))


# -- banks ---------------------------------------------------------------------------------------------
def test_background_bank_choice_labels_hash_and_path_independence(tiny_bank, tmp_path):
    p = make("background", 5, bank=tiny_bank)
    assert p.audio_bank.files == ("sub/hiss.flac", "tone.wav")
    assert p.audio_bank.classes == ("Hiss", "Sine wave")
    d = p.to_dict()
    assert re.fullmatch(r"[0-9a-f]{64}", d["bank_sha256"]) and d["bank_files"] == 2 and d["bank_classes"] == ["Hiss", "Sine wave"]
    ids = [f"c{i}" for i in range(8)]
    t = AttackTrace()
    p(clips(8), rng=rng_for(ids, p), trace=t)
    picks = t.per_clip["bank_clip"]
    assert set(picks) == {0.0, 1.0} and t.per_clip["bank_class"] == picks  # file i has class i here
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_bank, copy)
    q = make("background", 5, bank=copy)
    assert q.condition_key() == p.condition_key() and q.to_dict()["bank_sha256"] == d["bank_sha256"]
    (copy / "tone.wav").write_bytes((copy / "tone.wav").read_bytes()[:-2] + b"\x00\x01")
    assert make("background", 5, bank=copy).to_dict()["bank_sha256"] != d["bank_sha256"]


def test_reverb_from_a_measured_rir_bank(tmp_path):
    import soundfile as sf

    from audiobench.perturb.corruptions.room import schroeder_rt60, severity_band, synthetic_rir

    for i, rt in enumerate((0.25, 0.45, 0.8)):
        h = synthetic_rir(ClipRNG([i]), rt, 3.0, SR)[0].numpy()
        sf.write(tmp_path / f"rir{i}.wav", np.concatenate([np.zeros(40), 0.9 * h / np.abs(h).max()]).astype(np.float32), SR)
    assert severity_band(1)[0] == 0 and severity_band(5)[1] == math.inf
    p = make("reverb", 3, rir_bank=str(tmp_path))
    t = AttackTrace()
    y = p(clips(4), rng=rng_for(list("abcd"), p), trace=t)
    assert t.per_clip["rir_clip"] == [2.0] * 4 and np.allclose(t.per_clip["rt60_s"], 0.8, rtol=0.15)
    assert y.shape == (4, 4000)
    with pytest.raises(ConfigError, match="RT60 in"):
        make("reverb", 5, rir_bank=str(tmp_path))
    assert "rir_bank_sha256" in p.to_dict()
    assert float(schroeder_rt60(synthetic_rir(ClipRNG([9]), 0.5, 0.0, SR), SR)[0]) == pytest.approx(0.5, rel=0.15)


# -- the suite ---------------------------------------------------------------------------------------------
def test_suite_expands_and_states_what_it_skipped(tiny_bank, tmp_path):
    from audiobench.perturb.suites import SUITES, describe_suite, expand_suite

    assert "audioset-c" in SUITES
    conds, skipped = expand_suite("audioset-c")
    assert len(conds) == 55 and {c.name for c in conds} == set(NAMES) - {"background"}
    assert len(skipped) == 1 and "background" in skipped[0] and "--noise-bank" in skipped[0]
    conds, skipped = expand_suite("audioset-c", noise_bank=str(tiny_bank), severities=(1, 3, 5))
    assert not skipped and len(conds) == 36
    assert [c.condition_id for c in conds[:3]] == ["pink-noise:severity=1", "pink-noise:severity=3", "pink-noise:severity=5"]
    assert len({c.condition_key() for c in conds}) == 36
    assert all(c.rir_bank is None for c in conds if c.name == "reverb")  # synthetic rooms by default
    with pytest.raises(ConfigError):
        expand_suite("audioset-c", severities=(0,))
    with pytest.raises(Exception, match="(?i)did you mean"):
        expand_suite("audioset")
    rows = describe_suite("audioset-c")
    assert len(rows) == 60 and ("reverb:severity=5", "rt60_s=2 s, drr_db=-3 dB") in rows


# -- summary metrics ---------------------------------------------------------------------------------------
def test_summary_formulas_exact():
    from audiobench.metrics import corruption as C

    m = {("a", 1): 0.8, ("a", 2): 0.6, ("b", 1): 0.5, ("b", 2): 0.3}
    ref = {("a", 1): 0.6, ("a", 2): 0.4, ("b", 1): 0.5, ("b", 2): 0.5}
    assert C.corruption_maps(m) == pytest.approx({"a": 0.7, "b": 0.4})
    assert C.mean_corruption_map(m) == pytest.approx(0.55)
    assert C.relative_robustness(0.55, 0.9) == pytest.approx(0.55 / 0.9)
    assert C.corruption_errors(m) == pytest.approx({"a": 0.6, "b": 1.2})
    assert C.mce(m, ref) == pytest.approx((0.6 / 1.0 + 1.2 / 1.0) / 2)
    assert C.relative_mce(m, 0.9, ref, 0.7) == pytest.approx(((0.1 + 0.3) / (0.1 + 0.3) + (0.4 + 0.6) / (0.2 + 0.2)) / 2)
    assert math.isnan(C.relative_robustness(0.5, 0.0))
    with pytest.raises(ValueError):
        C.mce(m, {("a", 1): 0.5})


def test_summary_from_scores_with_paired_bootstrap():
    from audiobench.metrics.corruption import corruption_summary
    from audiobench.metrics.tagging import tagging_metrics

    rng = np.random.default_rng(0)
    n, c = 60, 5
    targets = rng.random((n, c)) < 0.3
    targets[0] = True
    clean = targets + rng.normal(0, 0.5, (n, c))
    conds = {f"k:severity={s}": targets + rng.normal(0, 0.5 + 0.4 * s, (n, c)) for s in (1, 2)}
    conds.update({f"j:severity={s}": targets + rng.normal(0, 0.3 + 0.5 * s, (n, c)) for s in (1, 2)})
    index = {cid: (cid.split(":")[0], int(cid[-1])) for cid in conds}
    out = corruption_summary(conds, clean, targets, index, n_boot=100, seed=1)
    maps = {cid: tagging_metrics(s, targets)["mAP"] for cid, s in conds.items()}
    mcm = np.mean([np.mean([maps[f"{k}:severity={s}"] for s in (1, 2)]) for k in "kj"])
    row = out["metrics"]["mean_corruption_map"]
    assert row["value"] == pytest.approx(mcm) and row["ci_low"] <= row["ci_high"]
    assert out["metrics"]["relative_robustness"]["value"] == pytest.approx(mcm / tagging_metrics(clean, targets)["mAP"])
    assert "mce" not in out["metrics"] and set(out["by_corruption"]) == {"k", "j"}
    assert out == corruption_summary(conds, clean, targets, index, n_boot=100, seed=1)  # reproducible
    # the model as its own reference: mCE is 1 in every resample (same clip resamples throughout)
    self_ref = corruption_summary(conds, clean, targets, index, reference_scores=conds, reference_clean_scores=clean,
                                  n_boot=100, seed=1)
    for name in ("mce", "relative_mce"):
        r = self_ref["metrics"][name]
        assert r["value"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0) and r["ci_high"] == pytest.approx(1.0)
    assert self_ref["by_corruption"]["k"]["normalised_ce"]["value"] == pytest.approx(1.0)
    none = corruption_summary(conds, clean, targets, index, n_boot=0)
    assert math.isnan(none["metrics"]["mean_corruption_map"]["ci_low"])


def test_metric_names_registered():
    from audiobench.metrics import METRICS
    from audiobench.metrics.corruption import PER_CORRUPTION_METRICS, SUMMARY_METRICS

    for name in SUMMARY_METRICS + PER_CORRUPTION_METRICS:
        assert name in METRICS


# -- report figures ------------------------------------------------------------------------------------------
def _metrics_frame():
    import pandas as pd

    rows = []
    for model, base in (("toy-cnn", 0.6), ("mn04", 0.8)):
        rows.append(dict(run_id="r", model=model, condition="none", perturbation="none", param="none", level=0.0,
                         metric="mAP", value=base, ci_low=base - 0.05, ci_high=base + 0.05, n_clips=8, n_classes=5, suspect=False))
        for name in ("lowpass", "reverb", "mp3"):
            for s in range(1, 6):
                v = base - 0.05 * s
                rows.append(dict(run_id="r", model=model, condition=f"{name}:severity={s}", perturbation=name, param="severity",
                                 level=float(s), metric="mAP", value=v, ci_low=v - 0.04, ci_high=v + 0.04, n_clips=8,
                                 n_classes=5, suspect=False))
                rows.append(dict(rows[-1], metric="mAUC", value=0.9))
    return pd.DataFrame(rows)


def test_heatmap_and_curves_from_metrics_rows():
    from matplotlib.figure import Figure

    from audiobench.report.corruptions import corruption_heatmap, corruption_rows, severity_curves

    df = _metrics_frame()
    assert len(corruption_rows(df)) == 30
    fig = corruption_heatmap(df, corruptions=NAMES)
    assert isinstance(fig, Figure)
    im = fig.axes[0].images[0].get_array()
    assert im.shape == (2, 3) and im[0, 0] == pytest.approx(0.65)  # sorted models: mn04 first; lowpass
    drop = corruption_heatmap(df, value="drop").axes[0].images[0].get_array()
    assert drop[1, 0] == pytest.approx(1 - 0.45 / 0.6)
    curves = severity_curves(df)
    assert isinstance(curves, Figure) and sum(ax.get_visible() for ax in curves.axes) == 3
    with pytest.raises(ValueError):
        corruption_heatmap(df[df["perturbation"] == "none"])


# -- docs ---------------------------------------------------------------------------------------------------
def test_docs_page_table_matches_the_code():
    text = (ROOT / "docs" / "corruptions.md").read_text()
    section = text.split("## Severity table", 1)[1].split("\n## ", 1)[0]
    found = {}
    for line in section.splitlines():
        m = re.match(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|(.*)\|\s*$", line)
        if m:
            found[m.group(1)] = [c.strip() for c in m.group(3).split("|")]
    assert list(found) == list(NAMES)
    for name, cells in found.items():
        param, unit, table = SEVERITY_TABLES[name]
        want = [", ".join(f"{v:g}" for v in (table[s] if isinstance(table[s], tuple) else (table[s],))) for s in range(1, 6)]
        assert cells == want, name
