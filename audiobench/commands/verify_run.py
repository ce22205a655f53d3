"""`audiobench verify-run RESULTS_DIR`: recompute a run's tables from its scores and check hashes."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("verify-run")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data-root", default=None, envvar="AUDIOBENCH_DATA", help="Root for the run's data manifest (to re-hash the clip list).")
@click.option("--tolerance", type=float, default=1e-8, show_default=True, help="Relative tolerance for recomputed values.")
def verify_run(run_dir, data_root, tolerance):
    """Recompute every aggregate in metrics.csv from scores.npz and per_clip.csv, and check the
    hashes in run.json (clip list, checkpoint sha256). Exits non-zero on any mismatch."""
    from audiobench.results.verify import verify_run_dir

    problems, checks = verify_run_dir(run_dir, data_root=data_root, rtol=tolerance)
    for line in checks:
        click.echo(f"ok: {line}")
    if problems:
        for p in problems[1:]:
            click.echo(f"mismatch: {p}")  # the full list on stdout; stderr gets the one-line error
        from audiobench.errors import ResultsError

        raise ResultsError(f"{run_dir}: verification failed: {problems[0]} ({len(problems)} problem(s))")
    click.echo(f"{run_dir}: verified ({len(checks)} checks)")
