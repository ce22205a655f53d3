"""`audiobench sweep`: run every run of a sweep file (models × perturbations × levels)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--out", default="results", type=click.Path(file_okay=False), help="Results directory (one run folder per expanded run).")
@click.option("--dry-run", is_flag=True, help="Print the expanded grid and its cost (model passes per clip) and exit.")
@click.option("--device", default=None, help="Override the sweep file's device (auto, cpu, cuda, cuda:N).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def sweep(sweep_file, out, dry_run, device, quiet):
    """Expand SWEEP_FILE (YAML) to runs and run those not complete yet; works under torchrun.

    \b
    Examples:
      audiobench sweep configs/toy_sweep.yaml --dry-run
      audiobench sweep configs/li2022_cnn14.yaml --out results
      torchrun --nproc-per-node 8 -m audiobench sweep configs/li2022_ast.yaml
    """
    from audiobench.sweep import count_clips, format_plan, load_sweep, run_status

    plan = load_sweep(sweep_file)
    out = Path(out)
    if dry_run:
        for line in format_plan(plan, out, count_clips(plan)):
            click.echo(line)
        return

    from audiobench.distributed import DistributedError, setup
    from audiobench.engine import Runner, StopRequested, resolve_device

    # join the torchrun job once; every Runner reuses the process group
    ctx, _ = setup(resolve_device(device or plan.settings["device"]))
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
            runner = Runner(plan.run_config(run, out, device=device), progress=not quiet and ctx.is_main, log=say)
            runner.run()
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
