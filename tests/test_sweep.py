"""Sweep files: validation, expansion to runs, --dry-run cost, skipping finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from audiobench.cli import cli
from audiobench.errors import ConfigError
from audiobench.sweep import condition_cost, load_sweep, parse_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_example_files_expand():
    toy = load_sweep(CONFIGS / "toy_sweep.yaml")
    assert len(toy.runs) == 2 * 5
    ids = [r.run_id for r in toy.runs]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "toy--toy-cnn--occ-alternate" and ids[-1] == "toy--toy-transformer--pgd"
    assert [c.condition_id for c in toy.runs[4].conditions] == ["none", "pgd/linf:eps=0.001", "pgd/linf:eps=0.002"]
    assert toy.runs[4].conditions[1].steps == 5
    assert load_sweep(CONFIGS / "toy_sweep.yaml").runs[3].run_id == toy.runs[3].run_id  # deterministic
    li = load_sweep(CONFIGS / "li2022.yaml")
    assert {r.model for r in li.runs} == {"cnn14", "ast"}
    kinds = {c.name for r in li.runs for c in r.conditions}
    assert {"occlusion", "gaussian", "feature-gaussian", "pgd"} <= kinds


def test_checkpoints_multiply_the_grid(tmp_path):
    raw = {"name": "ck", "models": ["toy-cnn", "toy-transformer"], "checkpoints": {"toy-cnn": ["a/e1.pt", "a/e2.pt"]},
           "perturbations": [{"kind": "gaussian", "snr_db": [10, 0]}]}
    sw = parse_sweep(raw, tmp_path / "s.yaml")
    assert [r.run_id for r in sw.runs] == ["ck--toy-cnn@e1--gaussian", "ck--toy-cnn@e2--gaussian", "ck--toy-transformer--gaussian"]
    assert sw.runs[0].checkpoint == str(tmp_path / "a/e1.pt") and sw.runs[2].checkpoint is None


@pytest.mark.parametrize("raw, needle", [
    ({"name": "x", "modles": ["toy-cnn"], "models": ["toy-cnn"], "perturbations": [{"kind": "none"}]}, "did you mean 'models'"),
    ({"name": "x", "models": ["toy-cnn"]}, "missing required key 'perturbations'"),
    ({"name": "x", "models": ["toy-cnnn"], "perturbations": [{"kind": "none"}]}, "did you mean"),
    ({"name": "x", "models": ["toy-cnn"], "perturbations": [{"kind": "pgd", "eps": [-0.1]}]}, "perturbations[0] (pgd)"),
    ({"name": "x", "models": ["toy-cnn"], "perturbations": [{"kind": "gaussian", "snr_db": ["loud"]}]}, "not a number"),
    ({"name": "x", "models": ["toy-cnn"], "perturbations": [{"kind": "gaussian", "snr_dbb": [3]}]}, "no option 'snr_dbb'"),
    ({"name": "x", "models": ["toy-cnn"], "perturbations": [{"kind": "pgdd"}]}, "did you mean"),
    ({"name": "x", "models": ["toy-cnn"], "perturbations": [{"kind": "gaussian", "snr_db": 3}, {"kind": "gaussian", "sigma": 0.1}]},
     "distinct 'name'"),
    ({"name": "a/b", "models": ["toy-cnn"], "perturbations": [{"kind": "none"}]}, "plain label"),
    ({"name": "x", "models": ["toy-cnn"], "batch_size": 0, "perturbations": [{"kind": "none"}]}, "batch_size"),
])
def test_invalid_sweeps_are_one_line_errors(tmp_path, raw, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    msg = str(exc.value)
    assert needle.lower() in msg.lower() and str(path) in msg and "\n" not in msg
    res = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])
    assert res.exit_code != 0 and "Traceback" not in res.output and needle.lower() in res.output.lower()


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodels: [toy-cnn\nperturbations: []\n")
    res = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])
    assert res.exit_code != 0 and "not valid YAML" in res.output and "line" in res.output


def test_cost_model():
    from audiobench.perturb import PERTURBATIONS as P

    assert condition_cost(P.get("none")()) == (1, 0)
    assert condition_cost(P.get("gaussian")(snr_db=10)) == (1, 0)
    # pgd: steps grads + final loss + eval, plus the trust companions on every clip (FGSM: its
    # gradient, the loss of its step and its eval; same-L2 noise: its eval)
    assert condition_cost(P.get("pgd")(eps=0.001, steps=10)) == (1 + 11 + 3 + 1, 10 + 1)
    assert condition_cost(P.get("pgd")(eps=0.001, steps=10, restarts=2), trust_checks=False) == (1 + 22, 20)
    assert condition_cost(P.get("universal")(eps=0.001, epochs=3), trust_checks=False) == (4, 3)
    fwd, bwd = condition_cost(P.get("min-eps")(eps_max=0.01, probes=4, steps=5))
    assert bwd == 4 * 5 and fwd > bwd


def test_dry_run_prints_grid_and_cost(tmp_path):
    res = CliRunner().invoke(cli, ["sweep", str(CONFIGS / "toy_sweep.yaml"), "--dry-run", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("sweep toy: 10 run(s)") and "clips per run: 16" in lines[0]
    pgd = next(ln for ln in lines if ln.startswith("new\ttoy--toy-cnn--pgd\t"))
    # per clip: clean 1 + 2 x (eval 1 + 6 PGD + FGSM companion 3 + same-L2 companion 1) forward and
    # 2 x (5 + 1) backward, plus the 10x-eps companion (7 forward, 5 backward) on all 16 clips
    assert pgd.endswith("\t30\t17")
    # totals: per-clip passes x 16 clips, both models
    assert lines[-1].startswith("to run: 10 run(s), about 1,280 forward and 544 backward passes")
    assert not (tmp_path / "toy--toy-cnn--pgd").exists()  # a dry run writes nothing


@pytest.fixture(scope="module")
def small_shard(tmp_path_factory):
    from audiobench.data.shards import write_shard
    from audiobench.data.toy import generate_toy_clips

    ids, wav, tgt = generate_toy_clips(6, seed=3, clip_seconds=1.0)
    path = tmp_path_factory.mktemp("sweep_data") / "toy1s.h5"
    write_shard(path, ids, wav, tgt, 16000)
    return path


def test_sweep_runs_then_skips_finished(tmp_path, small_shard):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "mini", "models": ["toy-cnn"], "data": str(small_shard), "limit": 4, "batch_size": 2, "bootstrap": 10,
        "weights": "random", "perturbations": [{"kind": "gaussian", "snr_db": [10]}, {"kind": "occlusion", "name": "occ",
                                                                                       "pattern": "alternate", "period_s": 0.25}],
    }))
    out = tmp_path / "results"
    res = CliRunner().invoke(cli, ["sweep", str(sweep_file), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for rid in ("mini--toy-cnn--gaussian", "mini--toy-cnn--occ"):
        meta = json.loads((out / rid / "run.json").read_text())
        assert meta["complete"] is True and meta["run_id"] == rid
        assert meta["config"]["limit"] == 4 and meta["seed"] == 0
    ids = [c["id"] for c in json.loads((out / "mini--toy-cnn--gaussian" / "run.json").read_text())["conditions"]]
    assert ids == ["none", "gaussian:snr_db=10"]
    # an interrupted run: its run.json says not complete, so only it is computed again
    p = out / "mini--toy-cnn--occ" / "run.json"
    meta = json.loads(p.read_text())
    meta["complete"] = False
    p.write_text(json.dumps(meta))
    before = (out / "mini--toy-cnn--gaussian" / "metrics.csv").stat().st_mtime_ns
    dry = CliRunner().invoke(cli, ["sweep", str(sweep_file), "--out", str(out), "--dry-run"])
    assert "complete\tmini--toy-cnn--gaussian" in dry.output and "partial\tmini--toy-cnn--occ" in dry.output
    assert "to run: 1 run(s)" in dry.output
    res = CliRunner().invoke(cli, ["sweep", str(sweep_file), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "skip mini--toy-cnn--gaussian (complete)" in res.output and "resume mini--toy-cnn--occ" in res.output
    assert "1 run(s) computed, 1 skipped" in res.output
    assert (out / "mini--toy-cnn--gaussian" / "metrics.csv").stat().st_mtime_ns == before
    assert json.loads(p.read_text())["complete"] is True
