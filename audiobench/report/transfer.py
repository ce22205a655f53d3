"""Transfer matrices: source model (rows) × target model (columns), one matrix per attack.

A transfer condition (``transfer[SOURCE]/ATTACK``, see :mod:`audiobench.perturb.transfer`) is
scored on every target model of its run; the cell (source, target) is the target's metric under
clips crafted on the source. Where a source is also a target the diagonal is the white-box result.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Mapping, Tuple

import numpy as np

TRANSFER = "transfer"


def transfer_matrix_rows(metrics, conditions: Iterable[Mapping], metric: str = "mAP"):
    """Tidy rows (source, target, attack, value, ci_low, ci_high) of the transfer conditions'
    ``metric``; ``conditions``: run.json condition records (their params name source and attack)."""
    import pandas as pd

    info = {}
    for c in conditions:
        if c.get("perturbation") != TRANSFER:
            continue
        params = c.get("params") or {}
        attack_id = str(c["id"]).split("]/", 1)[1] if "]/" in str(c["id"]) else str(c["id"])
        info[str(c["id"])] = (str(params.get("source", "?")), attack_id)
    cols = ["source", "target", "attack", "value", "ci_low", "ci_high"]
    if metrics is None or len(metrics) == 0 or not info:
        return pd.DataFrame(columns=cols)
    rows = metrics[(metrics["metric"] == metric) & metrics["condition"].isin(list(info))]
    out = pd.DataFrame({
        "source": [info[c][0] for c in rows["condition"]],
        "target": rows["model"].to_numpy(),
        "attack": [info[c][1] for c in rows["condition"]],
        "value": rows["value"].to_numpy(dtype=float),
        "ci_low": rows["ci_low"].to_numpy(dtype=float),
        "ci_high": rows["ci_high"].to_numpy(dtype=float),
    })
    return out.groupby(["attack", "source", "target"], as_index=False, sort=False).mean()


def matrix(rows, attack: str) -> Tuple[List[str], List[str], np.ndarray]:
    """(sources, targets, values[source, target]) of one attack (NaN where not run)."""
    sub = rows[rows["attack"] == attack]
    sources = list(dict.fromkeys(sub["source"]))
    targets = list(dict.fromkeys(sub["target"]))
    grid = np.full((len(sources), len(targets)), np.nan)
    for r in sub.itertuples():
        grid[sources.index(r.source), targets.index(r.target)] = r.value
    return sources, targets, grid


def plot_transfer_matrices(rows, metric: str = "mAP") -> List[tuple]:
    """[(attack, Figure)]: one heatmap per attack, cells annotated with the value; a cell whose
    source is its target is marked white-box."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = []
    for attack in dict.fromkeys(rows["attack"]):
        sources, targets, grid = matrix(rows, attack)
        fig = Figure(figsize=(max(3.6, 1.2 * len(targets) + 2.4), max(2.4, 0.6 * len(sources) + 1.8)), dpi=100,
                     layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(targets)), [t.replace("$", r"\$") for t in targets], rotation=30, ha="right")
        ax.set_yticks(range(len(sources)), [s.replace("$", r"\$") for s in sources])
        ax.set_xlabel("target (scored)")
        ax.set_ylabel("source (crafted on)")
        for i, s in enumerate(sources):
            for j, t in enumerate(targets):
                v = grid[i, j]
                if math.isfinite(v):
                    text = f"{v:.3f}" + ("\n(white-box)" if s == t else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if v < 0.5 else "black")
        fig.colorbar(im, ax=ax, label=f"target {metric}")
        ax.set_title(f"{attack}".replace("$", r"\$"), fontsize=10)
        out.append((attack, fig))
    return out


def transfer_tables(rows) -> List[tuple]:
    """[(attack, header, body)] text tables of the matrices (cells: value to 4 places)."""
    out = []
    for attack in dict.fromkeys(rows["attack"]):
        sources, targets, grid = matrix(rows, attack)
        header = ["source / target", *targets]
        body = [[s, *("-" if not math.isfinite(v) else f"{v:.4f}" for v in grid[i])] for i, s in enumerate(sources)]
        out.append((attack, header, body))
    return out
