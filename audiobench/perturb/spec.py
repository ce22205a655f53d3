"""Conditions from what users write: CLI level options, ``KIND:FIELD=V;FIELD=V`` strings, grids.

    build_conditions(["pgd"], {"eps": "0.001,0.002"})    # the CLI's --noise/--eps/... options
    parse_conditions(["gaussian:snr_db=20", "pgd:eps=0.002;steps=3"])   # the Python API
    count_grid("pgd", eps=[...], steps=[...])            # cells of a grid, before expanding it

The clean condition is always first. Grids are counted before they are expanded: a grid of more
than ``max_cells`` conditions is refused with one line (a 2 KB sweep file can ask for 10^8).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, List, Sequence

from audiobench.errors import ConfigError
from audiobench.perturb import PERTURBATIONS
from audiobench.perturb.base import Perturbation

MAX_CELLS = 10_000  # conditions one grid may expand to, unless the caller allows more

# CLI option -> perturbation dataclass field. Level options take comma-separated lists.
LEVEL_OPTIONS = {
    "eps": "eps", "snr": "snr_db", "sigma": "sigma", "period": "period_s", "span": "span_s",
    "fraction": "fraction", "band": "band_hz", "severity": "severity", "gain": "gain_db",
}
SCALAR_OPTIONS = {
    "pattern": "pattern", "norm": "norm", "steps": "steps", "step_size": "step_size", "restarts": "restarts",
    "fill": "fill", "fill_level": "fill_level_db", "eps_max": "eps_max", "epochs": "epochs",
    "noise_bank": "bank", "rir_bank": "rir_bank", "attack_mask": "attack_mask",
}
# options naming where an attack's delta may live: one (LOW, HIGH) pair, "LOW,HIGH", or several
# pairs "LO-HI,LO-HI" (a band sweep)
RANGE_OPTIONS = {"attack_band": "attack_band_hz", "attack_span": "attack_span_s"}


def parse_ranges(option: str, value) -> list:
    """``"500,2000"`` → [(500.0, 2000.0)]; ``"0-4000,4000-16000"`` → two ranges; a tuple passes."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return [tuple(float(v) for v in value)]
    text = str(value).strip()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all("-" not in p.lstrip("-") for p in parts):
            if len(parts) != 2:
                raise ValueError
            return [(float(parts[0]), float(parts[1]))]
        out = []
        for p in parts:
            lo, hi = p.split("-", 1)
            out.append((float(lo), float(hi)))
        if not out:
            raise ValueError
        return out
    except ValueError:
        raise ConfigError(f"--{option.replace('_', '-')} {value!r}: expected LOW,HIGH or LO-HI[,LO-HI...]") from None


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def count_grid(kind: str, **options: Any) -> int:
    """The number of conditions :func:`~audiobench.perturb.grid.expand_grid` would build (an
    upper bound: duplicates are removed only when expanding), without building them."""
    from audiobench.perturb.grid import ALIASES, _kind_of, _values

    cls = PERTURBATIONS.get(kind)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    n = 1
    for key, value in options.items():
        if value is None:
            continue
        field = ALIASES.get(key, key).replace("-", "_")
        if field in fields:
            n *= max(len(_values(_kind_of(hints[field]), kind, field, value)), 1)
    return n


def expand_counted(kind: str, *, max_cells: int = MAX_CELLS, strict: bool = True, **options: Any) -> list:
    """:func:`~audiobench.perturb.grid.expand_grid`, refused before expanding when the grid
    holds more than ``max_cells`` conditions."""
    from audiobench.perturb.grid import expand_grid

    n = count_grid(kind, **options)
    if n > max_cells:
        raise ConfigError(f"the {kind} grid has {n:,} conditions, more than the limit of {max_cells:,} "
                          f"(raise it with --max-cells if you mean it)")
    return expand_grid(kind, strict=strict, **options)


def own_fields(p: Perturbation) -> dict:
    """The dataclass fields of a perturbation (what rebuilds it), without derived names."""
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}


def chained(base_spec: Dict[str, Any], conditions: Sequence[Perturbation], *, max_cells: int = MAX_CELLS) -> list:
    """"PGD on perturbed" (Li et al. 2022): the base alone, then every condition applied on top
    of it (``base_spec`` as :func:`~audiobench.perturb.chain.parse_on` returns it)."""
    from audiobench.perturb.chain import Chain

    base_alone = expand_counted(base_spec["perturbation"], max_cells=max_cells,
                                **{k: v for k, v in base_spec.items() if k != "perturbation"})
    return base_alone + [Chain(base=base_spec, attack={"perturbation": c.name, **own_fields(c)}) for c in conditions]


def build_conditions(noises: List[str], options: dict, *, max_cells: int = MAX_CELLS, suite: str | None = None,
                     notes: list | None = None) -> list:
    """Expand the CLI's --noise kinds and level options into the list of conditions (clean first);
    ``suite`` adds a named suite's conditions (``--severity`` selects its severities, the bank
    options reach the kinds that take them); lines about skipped suite members go to ``notes``."""
    from audiobench.perturb.grid import parse_levels

    given = {k: v for k, v in options.items() if v is not None}
    used = set()
    conditions = [PERTURBATIONS.get("none")()]
    if suite is not None:
        from audiobench.perturb.suites import expand_suite

        sevs = None
        if "severity" in given:
            try:
                sevs = tuple(int(v) for v in parse_levels(given["severity"]))
            except (ConfigError, ValueError, OverflowError):
                raise ConfigError(f"--severity {given['severity']!r}: expected integers 1-5, e.g. 1,3,5") from None
        suite_conds, skipped = expand_suite(suite, noise_bank=given.get("noise_bank"), rir_bank=given.get("rir_bank"),
                                            severities=sevs)
        conditions.extend(suite_conds)
        if notes is not None:
            notes.extend(f"suite {suite}: {line}" for line in skipped)
        used |= {"severity", "noise_bank", "rir_bank"} & set(given)
        noises = [n for n in noises if n != "none"]
    for kind in noises:
        cls = PERTURBATIONS.get(kind)  # unknown name -> "did you mean"
        if kind == "none":
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {}
        for opt, field in RANGE_OPTIONS.items():
            if opt in given and field in fields:
                kw[field] = parse_ranges(opt, given[opt])
                used.add(opt)
        for opt, field in {**LEVEL_OPTIONS, **SCALAR_OPTIONS}.items():
            if opt in given and field in fields:
                value = given[opt]
                if opt in LEVEL_OPTIONS:
                    try:
                        value = _split(value) if field == "band_hz" else parse_levels(value)
                    except ConfigError as exc:
                        raise ConfigError(f"--{opt.replace('_', '-')} {value}: {exc}") from None
                    if not value:
                        raise ConfigError(f"--{opt.replace('_', '-')}: no levels given")
                kw[field] = value
                used.add(opt)
        conditions.extend(expand_counted(kind, max_cells=max_cells, **kw))
    on = given.pop("on", None)
    if on:
        from audiobench.perturb.chain import parse_on

        conditions = conditions[:1] + chained(parse_on(on), conditions[1:], max_cells=max_cells)
    unused = sorted(set(given) - used)
    if unused:
        opts = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise ConfigError(f"{opts} does not apply to --noise {','.join(noises)}")
    return unique(conditions)


def unique(conditions: Sequence[Perturbation]) -> list:
    """Refuse a grid that holds one condition twice."""
    seen: Dict[str, Perturbation] = {}
    for c in conditions:
        if c.condition_id in seen:
            raise ConfigError(f"condition {c.condition_id} appears twice in the grid")
        seen[c.condition_id] = c
    return list(conditions)


def parse_conditions(items: Sequence[Any]) -> list:
    """Conditions from ``KIND:FIELD=V;FIELD=V`` strings (the ``--on`` syntax) or perturbation
    objects, clean first (added when missing)."""
    from audiobench.perturb.chain import parse_on

    if isinstance(items, (str, Perturbation)):
        items = [items]
    out: List[Perturbation] = [PERTURBATIONS.get("none")()]
    for item in items:
        if isinstance(item, Perturbation):
            if item.name != "none":
                out.append(item)
            continue
        if not isinstance(item, str):
            raise ConfigError(f"a perturbation must be a 'KIND:FIELD=VALUE;...' string or a perturbation object, "
                              f"got {type(item).__name__}")
        spec = parse_on(item)
        kind = spec.pop("perturbation")
        if kind == "none":
            if spec:
                raise ConfigError(f"perturbation {item!r}: none takes no fields")
            continue
        out.extend(expand_counted(kind, **spec))
    return unique(out)
