"""Named suites of conditions, as data: ``audioset-c`` = every natural corruption at severities 1-5.

    conditions, skipped = expand_suite("audioset-c", noise_bank="banks/musan-noise")

``conditions`` are validated perturbations (not yet bound to the dataset's sample rate: the engine
does that with ``with_sample_rate``), in suite order; the clean condition is not among them (the
engine always adds it). ``skipped`` holds one self-contained line per corruption left out because
an optional bank is absent (``background`` needs a noise bank; ``reverb`` without an RIR bank uses
synthetic RIRs, so it is never skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from audiobench.registry import Registry


@dataclass(frozen=True)
class Suite:
    """A suite: which kinds at which severities, and which need a bank (kind -> bank option)."""

    name: str
    description: str
    kinds: Tuple[str, ...]
    severities: Tuple[int, ...] = (1, 2, 3, 4, 5)
    needs_bank: Dict[str, str] = field(default_factory=dict)  # kind -> "noise_bank" | "rir_bank"
    uses_bank: Dict[str, str] = field(default_factory=dict)  # kind -> optional bank it takes


SUITES: Registry[Suite] = Registry("suite")

#: CLI spelling of each bank argument (for the skip messages)
BANK_OPTIONS = {"noise_bank": "--noise-bank DIR", "rir_bank": "--rir-bank DIR"}
#: the dataclass field each bank argument sets
BANK_FIELDS = {"noise_bank": "bank", "rir_bank": "rir_bank"}


def _audioset_c() -> Suite:
    from audiobench.perturb.corruptions import CORRUPTION_NAMES

    return Suite(
        name="audioset-c",
        description="AudioSet-C: the twelve natural corruptions at severities 1-5 (ImageNet-C's design for audio)",
        kinds=CORRUPTION_NAMES,
        needs_bank={"background": "noise_bank"},
        uses_bank={"reverb": "rir_bank"},
    )


SUITES.register("audioset-c", _audioset_c())


def expand_suite(name: str, *, noise_bank: Optional[str] = None, rir_bank: Optional[str] = None,
                 severities: Optional[Tuple[int, ...]] = None) -> Tuple[list, List[str]]:
    """(conditions, skipped messages) of suite ``name`` (unknown name: "did you mean" error).

    ``noise_bank`` / ``rir_bank``: folders for ``background`` / measured ``reverb``;
    ``severities`` restricts the suite's severities (e.g. the CLI's ``--severity 1,3,5``).
    A bad bank folder is a ConfigError (one line), not a skip.
    """
    from audiobench.errors import ConfigError
    from audiobench.perturb import PERTURBATIONS

    suite = SUITES.get(name)
    banks = {"noise_bank": noise_bank, "rir_bank": rir_bank}
    sevs = tuple(suite.severities if severities is None else severities)
    bad = [s for s in sevs if s not in suite.severities]
    if bad:
        raise ConfigError(f"suite {name} has severities {', '.join(map(str, suite.severities))}; got {bad[0]!r}")
    conditions, skipped = [], []
    for kind in suite.kinds:
        cls = PERTURBATIONS.get(kind)
        kwargs = {}
        need = suite.needs_bank.get(kind)
        if need is not None:
            if not banks[need]:
                skipped.append(f"{kind}: skipped (needs a bank of recordings; enable it with {BANK_OPTIONS[need]})")
                continue
            kwargs[BANK_FIELDS[need]] = str(banks[need])
        optional = suite.uses_bank.get(kind)
        if optional is not None and banks[optional]:
            kwargs[BANK_FIELDS[optional]] = str(banks[optional])
        conditions.extend(cls(severity=s, **kwargs) for s in sevs)
    return conditions, skipped


def describe_suite(name: str) -> List[Tuple[str, str]]:
    """(condition id, physical parameter) per condition of the suite, for ``audiobench list suites``;
    bank-only kinds are listed with their nominal parameter too."""
    from audiobench.perturb.corruptions import SEVERITY_TABLES

    suite = SUITES.get(name)
    rows = []
    for kind in suite.kinds:
        param, unit, table = SEVERITY_TABLES[kind]
        for s in suite.severities:
            values = table[s] if isinstance(table[s], tuple) else (table[s],)
            text = ", ".join(f"{p}={v:g} {u}" for p, v, u in zip(param.split(","), values, unit.split(",")))
            rows.append((f"{kind}:severity={s}", text))
    return rows
