"""Expand CLI-style options into one perturbation per level (the robustness grid).

    expand_grid("pgd", eps=[0.001, 0.002], norm="linf", steps=10)
    expand_grid("gaussian", snr_db="30,20,inf")
    expand_grid("occlusion", pattern="alternate", period_s=[1, 0.5])

Any option may be a single value, a list, or a comma-separated string (numbers parsed with
:func:`parse_levels`); the grid is the cartesian product of all list-valued options, in the order
given, duplicates removed. ``None`` values are ignored (unset CLI options). CLI spellings
``snr``, ``period``, ``span``, ``band``, ``fill_level``, ``attack_band``, ``attack_span`` are
accepted for ``snr_db``, ``period_s``, ``span_s``, ``band_hz``, ``fill_level_db``,
``attack_band_hz``, ``attack_span_s``. Options that are not fields of the kind are an error,
unless ``strict=False`` (one option set shared by several kinds in a run). A grid of more than
``max_cells`` combinations (default :data:`MAX_CELLS`) is refused before any is built.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from typing import Any, Dict, List

from audiobench.errors import ConfigError

ALIASES = {"snr": "snr_db", "period": "period_s", "span": "span_s", "band": "band_hz", "fill_level": "fill_level_db",
           "attack_band": "attack_band_hz", "attack_span": "attack_span_s"}
# The most conditions one expand_grid call may build; the product is counted before anything is
# built, so a tiny sweep file with a few long lists is refused at once instead of filling memory.
MAX_CELLS = 10_000


def parse_levels(text: Any) -> List[float]:
    """'0.001,0.002,inf' -> [0.001, 0.002, inf]; numbers and lists pass through as floats.

    Raises ConfigError on an empty list, junk or NaN.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        items: List[Any] = [text]
    elif isinstance(text, str):
        items = [t.strip() for t in text.split(",")]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    else:
        raise ConfigError(f"levels must be numbers separated by commas, got {text!r}")
    if not items or any(isinstance(t, str) and not t for t in items):
        raise ConfigError(f"levels must be numbers separated by commas, got {text!r}")
    out = []
    for t in items:
        try:
            if isinstance(t, bool):
                raise ValueError
            v = float(t)
        except (TypeError, ValueError):
            raise ConfigError(f"level {t!r} in {text!r} is not a number") from None
        if math.isnan(v):
            raise ConfigError(f"level {t!r} in {text!r} is NaN")
        out.append(v)
    return out


def _kind_of(tp) -> str:
    """'float' | 'int' | 'bool' | 'str' | 'band' from a field's annotation."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union:
        if any(typing.get_origin(a) is tuple for a in args):
            return "band"
        tp = args[0] if args else tp
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    return "str"


def _values(kind: str, name: str, field: str, value: Any) -> List[Any]:
    """The list of values an option stands for, coerced to the field's kind."""
    if kind in ("float", "int"):
        vals = parse_levels(value)
        if kind == "int":
            bad = [v for v in vals if not (math.isfinite(v) and v.is_integer())]
            if bad:
                raise ConfigError(f"{name} {field} must be an integer, got {bad[0]!r}")
            return [int(v) for v in vals]
        return vals
    if kind == "bool":
        items = value if isinstance(value, (list, tuple)) else (value.split(",") if isinstance(value, str) else [value])
        out = []
        for v in items:
            if isinstance(v, bool):
                out.append(v)
            elif isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
                out.append(v.strip().lower() in ("true", "yes", "1"))
            else:
                raise ConfigError(f"{name} {field} must be true/false, got {v!r}")
        return out
    if kind == "band":
        # "500-2000", ["0-500", "500-2000"], (500, 2000), [(0, 500), (500, 2000)], "0-500,500-2000"
        if isinstance(value, str):
            return [v.strip() for v in value.split(",")]
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            return [tuple(value)]
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value]
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def expand_grid(kind: str, *, strict: bool = True, max_cells: int = MAX_CELLS, **options: Any) -> list:
    """One validated perturbation per combination of option values (see module docstring)."""
    from audiobench.perturb import PERTURBATIONS

    cls = PERTURBATIONS.get(kind)  # unknown kind -> "did you mean"
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names, value_lists = [], []
    for key, value in options.items():
        if value is None:
            continue
        field = ALIASES.get(key, key).replace("-", "_")
        if field not in fields:
            if strict:
                raise ConfigError(f"perturbation {kind!r} has no option {key!r}; options: {', '.join(fields) or 'none'}")
            continue
        vals = _values(_kind_of(hints[field]), kind, field, value)
        if not vals:
            raise ConfigError(f"{kind} {field}: empty list of values")
        names.append(field)
        value_lists.append(vals)
    cells = math.prod(len(v) for v in value_lists)
    if cells > max_cells:
        sizes = " x ".join(f"{len(v)} {n}" for n, v in zip(names, value_lists))
        raise ConfigError(f"{kind}: {sizes} makes {cells} conditions, more than the limit of {max_cells}")
    out, seen = [], set()
    for combo in itertools.product(*value_lists):
        p = cls(**dict(zip(names, combo)))
        key = p.condition_key()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def octave_bands(sample_rate: int, lowest_hz: float = 62.5) -> List[tuple]:
    """Octave bands (lo, 2·lo) from ``lowest_hz`` up, plus (0, lowest_hz) below them: together they
    cover 0 Hz to Nyquist (``sample_rate / 2``) without gaps. The last band ends at Nyquist; a
    leftover of less than half an octave above the last whole octave joins it."""
    if not lowest_hz > 0:
        raise ConfigError(f"octave_bands: lowest_hz must be > 0, got {lowest_hz!r}")
    nyquist = sample_rate / 2.0
    if lowest_hz >= nyquist:
        raise ConfigError(f"octave_bands: lowest_hz {lowest_hz:g} is not below Nyquist ({nyquist:g} Hz)")
    bands = [(0.0, float(lowest_hz))]
    lo = float(lowest_hz)
    while lo < nyquist:
        hi = min(lo * 2.0, nyquist)
        if nyquist / hi < 2 ** 0.5:  # what would be left above is under half an octave
            hi = nyquist
        bands.append((lo, hi))
        lo = hi
    return bands


def band_sweep(bands, *, eps: float = 0.002, kind: str = "pgd", **fields: Any) -> list:
    """The band-limited attack conditions of a band sweep: one ``kind`` condition per band at the
    fixed ``eps`` (``attack_band_hz`` set to each (lo, hi) in Hz), other fields as given (e.g.
    ``steps``, ``norm``, ``attack_mask``). Bands may be (lo, hi) pairs or 'lo-hi' strings; see
    :func:`octave_bands`. Bind the data's rate with ``with_sample_rate`` before use (the engine
    does). Draw the result with :func:`audiobench.report.footprint.plot_band_sweep`."""
    band_list = list(bands)
    if not band_list:
        raise ConfigError("band_sweep: no bands given")
    if "attack_band_hz" in fields:
        raise ConfigError("band_sweep: give the bands as the first argument, not attack_band_hz")
    return expand_grid(kind, eps=[float(eps)], attack_band_hz=band_list, **fields)
