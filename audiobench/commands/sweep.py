"""`audiobench sweep`: run every run of a sweep file (models × perturbations × levels)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--out", default="results", type=click.Path(file_okay=False), help="Results directory (one run folder per expanded run).")
@click.option("--dry-run", is_flag=True, help="Print the expanded grid, its cost (model passes per clip) and missing weights, and exit.")
@click.option("--device", default=None, help="Override the sweep file's device (auto, cpu, cuda, cuda:N).")
@click.option("--max-cells", type=click.IntRange(min=1), default=None,
              help="Refuse sweeps that expand to more conditions than this (default 10,000).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def sweep(sweep_file, out, dry_run, device, max_cells, quiet):
    """Expand SWEEP_FILE (YAML) to runs and run those not complete yet; works under torchrun.

    \b
    Examples:
      audiobench sweep configs/toy_sweep.yaml --dry-run
      audiobench sweep configs/li2022.yaml --out results
      torchrun --nproc-per-node 8 -m audiobench sweep configs/li2022.yaml
    """
    from audiobench.sweep import MAX_CELLS, count_clips, format_plan, load_sweep, run_status

    plan = load_sweep(sweep_file, max_cells=max_cells or MAX_CELLS)
    out = Path(out)
    if dry_run:
        for line in format_plan(plan, out, count_clips(plan)):
            click.echo(line)
        return

    from audiobench.api import run_config
    from audiobench.device import parse_device
    from audiobench.engine import StopRequested
    from audiobench.engine.distributed import DistributedError, setup

    # join the torchrun job once; every run reuses the process group
    ctx, _ = setup(parse_device(device or plan.settings["device"]))
    # rank 0 decides which runs are finished (only it reads the result folder)
    statuses = ctx.broadcast([run_status(out, r.run_id) for r in plan.runs] if ctx.is_main else None)
    say = (lambda m: click.echo(m, err=True)) if ctx.is_main else (lambda m: None)
    done = 0
    try:
        for run, status in zip(plan.runs, statuses):
            if status == "complete":
                say(f"skip {run.run_id} (complete)")
                continue
            say(f"{'resume' if status == 'partial' else 'run'} {run.run_id}")
            run_config(plan.run_config(run, out, device=device), progress=not quiet and ctx.is_main, log=say,
                       keep_process_group=True)
            done += 1
    except DistributedError as exc:
        if not exc.report_here:
            sys.exit(1)
        raise
    except StopRequested as stop:
        if ctx.is_main:
            click.echo(f"stopped by {stop.args[0]} after storing finished batches; rerun the same sweep to resume", err=True)
        sys.exit(130)
    finally:
        ctx.close()
    if ctx.is_main:
        click.echo(f"sweep {plan.name}: {done} run(s) computed, {sum(s == 'complete' for s in statuses)} skipped; results in {out}")
