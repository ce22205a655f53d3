"""docs/attacks.md states the limits, defaults and names that the code uses."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "attacks.md").read_text()
FLAT = " ".join(PAGE.split())  # whitespace-normalised, for phrases broken over lines
BOUNDS = PAGE.split("## Option bounds", 1)[1].split("\n## ", 1)[0]


def _num(x) -> str:
    """As the page writes numbers: powers of ten from 1000 up as 1eN, small ones as 1e-N, else %g."""
    import math

    x = float(x)
    e = math.log10(abs(x)) if x else 0.0
    if x and e.is_integer() and (e >= 3 or e <= -3):
        return f"1e{int(e)}"
    return f"{x:g}"


def _bound_row(option_words: str) -> str:
    rows = [ln for ln in BOUNDS.splitlines() if ln.startswith("|") and option_words in ln]
    assert rows, f"no row of the option bounds table mentions {option_words!r}"
    return rows[0]


def test_option_bounds_table_matches_the_code():
    from audiobench.perturb import attacks, noise, occlusion, universal
    from audiobench.perturb.grid import MAX_CELLS

    num = _num
    assert f"≤ {num(attacks.MAX_LINF_EPS)} |" in _bound_row("`linf`: pgd, fgsm, apgd, universal")
    assert f"≤ {num(attacks.MAX_L2_EPS)} |" in _bound_row("(`l2`)")
    assert f"≤ {num(attacks.MAX_FEATURE_EPS)} |" in _bound_row("feature-pgd")
    assert f"≤ {attacks.MAX_STEPS} |" in _bound_row("`steps`")
    assert f"≤ {attacks.MAX_RESTARTS} |" in _bound_row("`restarts`")
    assert f"≤ {num(occlusion.MAX_DURATION_S)} s |" in _bound_row("`period_s`")
    assert f"≤ {num(occlusion.MAX_FREQUENCY_HZ)} Hz |" in _bound_row("`attack_band_hz`")
    assert f"≤ {occlusion.MAX_SAMPLE_RATE} Hz |" in _bound_row("`sample_rate`")
    assert f"±{num(noise.MAX_ABS_SNR_DB)} dB" in _bound_row("`snr_db`")
    assert f"≤ {num(noise.MAX_SIGMA)} |" in _bound_row("`sigma` (gaussian)")
    lo, hi = occlusion.FILL_LEVEL_DB_RANGE
    assert f"−{num(-lo)} … {num(hi)} dBFS" in _bound_row("`fill_level_db`")
    assert f"≤ {occlusion.MAX_N_FFT} |" in _bound_row("`n_fft`")
    assert f"≤ {MAX_CELLS} conditions" in _bound_row("grid size")
    assert universal.MAX_EPOCHS > 0


def test_defaults_and_rules_stated_on_the_page():
    from audiobench.perturb.attacks import APGD, DEFAULT_ATTACK_MASK, MIN_PADDING_S, PGD
    from audiobench.perturb.base import COLLAPSE_FRACTION, LOSS_TOLERANCE

    assert f"`MIN_PADDING_S` = {MIN_PADDING_S:g} s" in PAGE
    assert f"`attack_mask` defaults to `\"{DEFAULT_ATTACK_MASK}\"`" in PAGE
    assert f"`COLLAPSE_FRACTION` = {COLLAPSE_FRACTION:g}" in PAGE and "one half" in PAGE
    assert f"by more than {_num(LOSS_TOLERANCE)}" in FLAT
    assert f"`steps` {PGD().steps}, `step_size` 2.5·eps/steps" in PAGE
    assert f"`steps` {APGD().steps}" in PAGE


def test_condition_ids_on_the_page_are_what_the_code_names():
    from audiobench.perturb.attacks import PGD

    ids = set(re.findall(r"`(pgd/[^`]+:eps=[0-9.]+)`", PAGE))
    assert len(ids) >= 6
    made = {
        PGD(eps=0.002).condition_id, PGD(eps=0.001).condition_id,
        PGD(eps=0.002, attack_mask="padding").condition_id, PGD(eps=0.001, attack_mask="padding").condition_id,
        PGD(eps=0.002, attack_band_hz=(0, 4000)).condition_id, PGD(eps=0.002, attack_band_hz=(4000, 16000)).condition_id,
        PGD(eps=0.002, attack_span_s=(0, 5)).condition_id, PGD(eps=0.002, attack_band_hz=(500, 2000)).condition_id,
        PGD(eps=0.002, attack_span_s=(1, 3)).condition_id,
    }
    assert ids <= made, ids - made


def test_files_the_page_names_exist():
    assert (ROOT / "docs" / "img" / "footprint_mn04.png").is_file()
    assert (ROOT / "scripts" / "attack_limits_example.py").is_file()


def test_transfer_section_names_what_the_code_does():
    from audiobench.perturb.attacks import PGD
    from audiobench.perturb.transfer import Transfer, source_models

    section = PAGE.split("## Transfer attacks", 1)[1].split("\n## ", 1)[0]
    made = Transfer(source="A", attack={"perturbation": "pgd", "eps": 0.002})
    assert f"`{made.condition_id}`" in section and made.condition_id == f"transfer[A]/{PGD(eps=0.002).condition_id}"
    assert f"perturbation\n`{made.name}`" in section or f"perturbation `{made.name}`" in " ".join(section.split())
    assert source_models("A+B") == ["A", "B"] and "`--transfer-from A+B`" in section
    assert (ROOT / "tests" / "test_transfer.py").is_file()
    # the API call the page shows is a real keyword of the run options evaluate passes on
    import inspect

    from audiobench.api import build_run_config

    assert "transfer_from=[" in section and "transfer_from" in inspect.signature(build_run_config).parameters
