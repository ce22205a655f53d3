"""`audiobench run`: the robustness grid (models × perturbations × levels, clean included)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEFAULT_MODELS = "toy-cnn,toy-transformer"


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@click.command("run")
@click.option("--model", "models", default=DEFAULT_MODELS,
              help="Model(s), comma-separated: registered or plugin names (audiobench list models), module:factory, "
                   "hf:FOLDER, each optionally NAME@VARIANT (fp16, bf16, int8, w4).")
@click.option("--noise", "noises", default="none", help="Perturbation kind(s), comma-separated (audiobench list perturbations); the clean condition is always included.")
@click.option("--eps", default=None, help="Attack budget(s) in waveform units (linf: max |delta|; l2: ||delta||_2), comma list.")
@click.option("--snr", default=None, help="Gaussian noise SNR level(s) in dB, comma list (inf = clean).")
@click.option("--sigma", default=None, help="Gaussian noise standard deviation(s) in waveform units, comma list.")
@click.option("--pattern", default=None, help="Occlusion pattern: alternate, first, middle, last, *-concat, random, band.")
@click.option("--period", default=None, help="Occlusion block period(s) in seconds, comma list.")
@click.option("--span", default=None, help="Occlusion span(s) in seconds (first/middle/last), comma list.")
@click.option("--fraction", default=None, help="Occluded fraction(s) for pattern random, comma list.")
@click.option("--band", default=None, help="Frequency band(s) to mask, LO-HI in Hz, comma list.")
@click.option("--fill", default=None, help="Occlusion fill: silence or noise.")
@click.option("--fill-level", type=float, default=None, help="Occlusion noise fill level in dBFS.")
@click.option("--norm", default=None, help="Attack norm: linf or l2.")
@click.option("--steps", type=int, default=None, help="Attack iterations (default per attack: 10).")
@click.option("--step-size", type=float, default=None, help="Attack step size in waveform units (default: a fraction of eps).")
@click.option("--restarts", type=int, default=None, help="Attack random restarts (per-clip worst case kept).")
@click.option("--eps-max", type=float, default=None, help="min-eps: upper end of the bisection.")
@click.option("--epochs", type=int, default=None, help="universal: passes over the data to learn the perturbation.")
@click.option("--gain", default=None, help="Level change(s) in dB for the gain perturbation, comma list.")
@click.option("--severity", default=None, help="Corruption severity level(s) 1-5, comma list (corruptions, --suite).")
@click.option("--suite", default=None, help="Run a named suite of conditions, e.g. audioset-c (audiobench list suites).")
@click.option("--noise-bank", type=click.Path(file_okay=False), default=None,
              help="Folder of background recordings for the background corruption (MUSAN/DEMAND/ESC-50-style).")
@click.option("--rir-bank", type=click.Path(file_okay=False), default=None,
              help="Folder of measured room impulse responses for reverb (default: synthetic rooms).")
@click.option("--reference-model", default=None,
              help="Model whose corruption errors normalise mCE (default with several models: the first).")
@click.option("--attack-band", default=None, help="Keep the attack's delta in a frequency band: LOW,HIGH in Hz (or LO-HI,LO-HI,... for a band sweep).")
@click.option("--attack-span", default=None, help="Keep the attack's delta in a time window: START,END in seconds.")
@click.option("--attack-mask", type=click.Choice(["none", "padding"]), default=None,
              help="padding: never perturb the trailing zero padding of short clips.")
@click.option("--transfer-from", default=None,
              help="Craft the attacks on these source model(s) and score the clips with every --model: "
                   "A[,B] (A+B: an ensemble maximising the mean loss).")
@click.option("--on", default=None, help="Apply the grid on top of this perturbation, e.g. gaussian:snr_db=20 or 'occlusion:pattern=alternate;period_s=0.5' (PGD on perturbed audio).")
@click.option("--data", default=None, help="Data manifest (name or .json), HDF5 shard, or AST JSON datafile. Default: the embedded toy set.")
@click.option("--data-root", default=None, envvar="AUDIOBENCH_DATA", help="Root that manifest shard paths are relative to.")
@click.option("--label-map", type=click.Path(dir_okay=False), default=None,
              help="CSV model_class,dataset_class mapping a model's classes onto the dataset's vocabulary.")
@click.option("--checkpoint", default=None, help="Checkpoint PATH (one model) or NAME=PATH,... (several).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=16)
@click.option("--limit", type=int, default=None, help="Use only the first N clips (smoke runs).")
@click.option("--seed", type=int, default=0, help="Run seed; every random draw is keyed by (seed, clip id, condition).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", help="bf16 autocast (losses stay fp32).")
@click.option("--bootstrap", type=int, default=1000, help="Bootstrap resamples for confidence intervals (0 = none).")
@click.option("--out", default="results", type=click.Path(file_okay=False), help="Results directory.")
@click.option("--run-id", default=None, help="Run folder name (default: UTC time + config hash). Rerunning into it resumes.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run --run-id (or the latest run with the same config).")
@click.option("--save-audio", type=int, default=0, help="Write the first N perturbed clips of each condition as WAV.")
@click.option("--on-bad-clip", type=click.Choice(["fail", "skip"]), default="fail", help="Clips with NaN/inf or out-of-range samples.")
@click.option("--no-trust-checks", is_flag=True, help="Skip the attack trust checks (FGSM / same-L2 noise references, 10x eps).")
@click.option("--random-weights", is_flag=True, hidden=True, help="Benchmarks only: random model weights.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(models, noises, eps, snr, sigma, pattern, period, span, fraction, band, fill, fill_level, norm, steps, step_size,
        restarts, eps_max, epochs, on, data, data_root, checkpoint, device, batch_size, limit, seed, precision, bootstrap, out,
        run_id, resume, save_audio, on_bad_clip, no_trust_checks, random_weights, quiet, label_map, severity, suite,
        noise_bank, rir_bank, reference_model, attack_band, attack_span, attack_mask, transfer_from, gain):
    """Run models over a dataset, clean and under each perturbation at each level.

    \b
    Examples:
      audiobench run --model toy-cnn --noise pgd --eps 0.002
      audiobench run --model toy-cnn --suite audioset-c --limit 8
      audiobench run --model toy-cnn --noise pgd --eps 0.002 --attack-band 0,4000
      audiobench run --model toy-cnn,toy-transformer --transfer-from toy-cnn,toy-transformer --noise pgd --eps 0.002
      audiobench run --model efficientat-mn04 --noise gaussian,pgd --snr 30,20,10 --eps 0.001,0.002
      audiobench run --noise occlusion --pattern alternate --period 1,0.5,0.25
    """
    from audiobench.api import build_run_config, parse_checkpoint_option, run_config
    from audiobench.engine import StopRequested
    from audiobench.engine.distributed import DistributedError
    from audiobench.perturb.spec import build_conditions

    model_list = _split(models)
    noise_list = _split(noises) or ["none"]
    options = dict(eps=eps, snr=snr, sigma=sigma, pattern=pattern, period=period, span=span, fraction=fraction, band=band,
                   fill=fill, fill_level=fill_level, norm=norm, steps=steps, step_size=step_size, restarts=restarts,
                   eps_max=eps_max, epochs=epochs, on=on, severity=severity, noise_bank=noise_bank, rir_bank=rir_bank,
                   attack_band=attack_band, attack_span=attack_span, attack_mask=attack_mask, gain=gain)
    argv = list(sys.argv[1:])
    if resume and not run_id:
        run_id = _latest_incomplete_run(Path(out))
    notes: list = []
    conditions = build_conditions(noise_list, options, suite=suite, notes=notes)
    for line in notes:
        click.echo(line, err=True)
    config = build_run_config(
        model_list, conditions, data=data, data_root=data_root, reference_model=reference_model, suite=suite,
        transfer_from=transfer_from,
        checkpoint=parse_checkpoint_option(checkpoint, model_list), device=device, batch_size=batch_size, limit=limit,
        seed=seed, out=out, run_id=run_id, resume=resume, precision=precision, bootstrap=bootstrap,
        save_audio=save_audio, weights="random" if random_weights else "default", trust_checks=not no_trust_checks,
        on_bad_clip=on_bad_clip, label_map=label_map,
    )
    try:
        result = run_config(config, progress=not quiet, log=lambda m: click.echo(m, err=True))
    except DistributedError as exc:
        if not exc.report_here:  # under torchrun: rank 0 (or the failing rank) prints the one line
            sys.exit(1)
        raise
    except StopRequested as stop:
        if not getattr(stop, "is_main", True):
            sys.exit(130)
        click.echo(f"stopped by {stop.args[0]} after storing finished batches; resume with: "
                   f"audiobench {resume_command(argv, stop.run_id)}", err=True)
        sys.exit(130)
    if result is None:  # under torchrun only rank 0 reports
        return
    from audiobench.report.summary import print_run_summary

    print_run_summary(result.run_dir)
    click.echo(f"results: {result.run_dir}")


def resume_command(argv: list, run_id: str) -> str:
    """The command line that resumes a stopped run: the original arguments with one
    ``--run-id RUN_ID --resume`` (any earlier --run-id/--resume removed)."""
    import shlex

    args, skip = [], False
    for a in argv or ["run"]:
        if skip:
            skip = False
            continue
        if a == "--run-id":
            skip = True
            continue
        if a.startswith("--run-id=") or a == "--resume":
            continue
        args.append(a)
    return shlex.join(args + ["--run-id", str(run_id), "--resume"])


def _latest_incomplete_run(out: Path):
    """--resume without --run-id: the newest incomplete run folder in ``out`` (None if none)."""
    from audiobench.errors import ResultsError
    from audiobench.results.schema import read_run_info

    best = None
    if out.is_dir():
        for p in sorted(out.iterdir()):
            try:
                if not read_run_info(p).complete:
                    best = p.name
            except ResultsError:
                continue
    return best
