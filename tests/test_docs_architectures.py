"""docs/architectures.md stays true: its table against the registry (names, parameter counts, weight
files, URLs, licences, reference mAP, front-end numbers) and its hostile-case ids against the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audiobench.models import MODELS, load_model

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text()
DOCUMENTED = ("psla-effnet", "resnet-attention", "efficientat-dymn04", "efficientat-dymn10", "efficientat-dymn20",
              "efficientat-mn40-as-ext")


def _rows():
    rows = {}
    for line in PAGE.splitlines():
        m = re.match(r"^\| `([a-z0-9-]+)` \|(.+)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_table_lists_exactly_the_documented_models():
    assert tuple(_rows()) == DOCUMENTED
    assert all(name in MODELS for name in DOCUMENTED)


@pytest.mark.parametrize("name", DOCUMENTED)
def test_row_matches_the_spec(name):
    _upstream, frontend, params, weights, licence, ref_map = _rows()[name]
    spec = MODELS.get(name).spec
    model = load_model(name, weights="random")
    assert int(params.replace(",", "")) == sum(p.numel() for p in model.parameters())
    assert f"{spec.sample_rate // 1000} kHz" in frontend
    n_mels = spec.frontend.get("num_mel_bins", spec.frontend.get("n_mels"))
    assert f"{n_mels} mel" in frontend
    if "target_frames" in spec.frontend:
        assert f"{spec.frontend['target_frames']} frames" in frontend
    assert f"`{spec.weights.file_name}`" in weights
    if spec.weights.url:
        assert spec.weights.url.rsplit("/", 1)[1].split("?")[0] in weights
        assert spec.weights.url in PAGE or spec.weights.url.startswith("https://github.com/fschmid56/EfficientAT/")
    assert spec.weights.licence.split()[0] == licence
    assert ref_map == ("—" if spec.reference_mAP is None else f"{spec.reference_mAP:.3f}")
    assert spec.weights.sha256 is None  # the page says none is pinned; change both together


def test_front_end_numbers_on_the_page_are_the_specs():
    fe = MODELS.get("psla-effnet").spec
    assert f"`(x + {-fe.normalisation['mean']}) / {fe.normalisation['std']}`" in PAGE
    assert f"num_mel_bins={fe.frontend['num_mel_bins']}" in PAGE
    assert "https://www.dropbox.com/s/d1z27wj30ew5qrs/as_mdl_0.pth?dl=1" == fe.weights.url


def test_hostile_case_ids_named_on_the_page_exist():
    import hostile_cases  # noqa: F401  (first: it appends hostile_cases_archs' cases at its end)
    from hostile_cases_archs import CASES

    named = set(re.findall(r"`(ckpt-[a-z-]+)`", PAGE))
    assert named == {c.id for c in CASES}
