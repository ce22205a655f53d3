"""`audiobench verify-run RESULTS_DIR`: recompute a run's tables, re-hash its data and model files,
bound its perturbations and check its stored units.

Exit codes: 0 verified; 1 failed (a mismatch; also an unusable folder); 3 unverified (nothing
disagrees, but something the run recorded cannot be checked on this machine: data or model files
that cannot be found, convexity without the model). Every check is a line on stdout; the verdict
is one line (on stderr unless verified).
"""

from __future__ import annotations

from pathlib import Path

import click

EXIT_UNVERIFIED = 3


class Unverified(click.ClickException):
    """Nothing disagrees, but not everything could be checked here (exit 3)."""

    exit_code = EXIT_UNVERIFIED


@click.command("verify-run")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data-root", default=None, envvar="AUDIOBENCH_DATA",
              help="Where to look for the run's shards (by their recorded paths relative to the data root); "
                   "the recorded data root and absolute paths are tried too.")
@click.option("--skip-data", is_flag=True, help="Do not re-hash the data (the verdict can then be 'verified' without it).")
@click.option("--skip-models", is_flag=True,
              help="Do not re-hash the model files (checkpoint, plugin sources, label map) or load the model.")
@click.option("--skip-latent", is_flag=True,
              help="Do not load the model to recompute convexity (density is still recomputed from the stored embeddings).")
@click.option("--tolerance", type=click.FloatRange(min=0, max=1), default=1e-8, show_default=True,
              help="Relative tolerance for recomputed values.")
def verify_run(run_dir, data_root, skip_data, skip_models, skip_latent, tolerance):
    """Recompute every row of metrics.csv, per_clip.csv and per_class.csv from scores.npz; check the
    per-clip geometry against each condition's budget; re-hash the data, the model files and the
    config; check the units' identities and contents. Exits 0 (verified), 1 (failed) or
    3 (unverified: something recorded cannot be checked here)."""
    from audiobench.engine.units import verify_stored_units
    from audiobench.errors import ResultsError
    from audiobench.results.schema import SCORES_NPZ, read_run_info, read_scores
    from audiobench.results.verify import verify_run_dir

    v = verify_run_dir(run_dir, data_root=data_root, skip_data=skip_data, skip_models=skip_models,
                       skip_latent=skip_latent, rtol=tolerance)
    info = read_run_info(run_dir)
    v.extend(*verify_stored_units(run_dir, info.config_hash, info.model_names, info.conditions,
                                  read_scores(Path(run_dir) / SCORES_NPZ)))
    # a received run.json may hold paths with control characters: every line stays one line
    v.checks, v.unchecked, v.problems = ([_printable(x) for x in lines] for lines in (v.checks, v.unchecked, v.problems))
    for line in v.checks:
        click.echo(f"ok: {line}")
    for line in v.unchecked:
        click.echo(f"not checked: {line}")
    for line in v.problems:
        click.echo(f"mismatch: {line}")  # the full list on stdout; stderr gets the one-line verdict
    if v.problems:
        raise ResultsError(f"{run_dir}: verification failed: {v.problems[0]} ({len(v.problems)} problem(s))")
    if v.unchecked:
        extra = f" (+{len(v.unchecked) - 1} more)" if len(v.unchecked) > 1 else ""
        raise Unverified(f"{run_dir}: unverified: {v.unchecked[0]}{extra}; no mismatch in {len(v.checks)} checks "
                         f"(--skip-data / --skip-models / --skip-latent accept what cannot be checked here)")
    click.echo(f"{run_dir}: verified ({len(v.checks)} checks)")


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
