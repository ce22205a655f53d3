"""``audiobench predict``: tag audio files or a dataset with a model (see :mod:`audiobench.prediction`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("predict", context_settings={"show_default": True})
@click.option("--model", "model_name", required=True,
              help="Model: a registered or plugin name (audiobench list models), module:factory, hf:FOLDER, NAME@VARIANT.")
@click.option("--checkpoint", type=click.Path(dir_okay=True, path_type=Path), default=None,
              help="Checkpoint file (or Hugging Face folder) instead of the model's default weights.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, help="Labels shown per clip.")
@click.option("--save-logits", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write clip_ids and logits (N x n_classes, float32) to this .npz file (a new file; see --overwrite).")
@click.option("--overwrite", is_flag=True, help="Let --save-logits replace an existing file (never one inside a run folder).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Clips per forward pass.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Score only the first N clips of each dataset.")
@click.option("--vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Label names: class_labels_indices.csv (default: the dataset's, AUDIOBENCH_VOCAB, the cached copy).")
@click.argument("inputs", nargs=-1, required=True)
def predict(model_name, checkpoint, top_k, save_logits, overwrite, device, batch_size, limit, vocab, inputs):
    """Print the top-k labels (sigmoid probabilities) of each clip of INPUTS.

    INPUTS are audio files (wav/flac/mp3/..., any rate, stereo is averaged) or datasets
    (a manifest name such as `toy`, a manifest .json, an .h5 shard, a JSON datafile).
    """
    import numpy as np

    from audiobench.prediction import predict as run_predict

    if save_logits is not None:
        check_logits_target(save_logits, overwrite=overwrite)  # before the (slow) model load
    res = run_predict(model_name, inputs, checkpoint=checkpoint, device=device, batch_size=batch_size, limit=limit,
                      vocab=vocab)
    _print_table(res, top_k)
    if vocab is None and any(n.startswith("class ") for n in res.class_names):
        click.echo("labels show as 'class <i>': pass --vocab class_labels_indices.csv (or set AUDIOBENCH_VOCAB) "
                   "for their names", err=True)
    if save_logits is not None:
        from audiobench.fileio import atomic_write_npz

        atomic_write_npz(save_logits, clip_ids=np.asarray(res.clip_ids, dtype=str), logits=res.logits,
                         model=np.asarray(res.model), checkpoint_sha256=np.asarray(res.checkpoint_sha256 or ""))
        click.echo(f"wrote {len(res.clip_ids)} x {res.logits.shape[1]} logits to {save_logits}", err=True)


def check_logits_target(path: Path, *, overwrite: bool) -> None:
    """--save-logits writes a new file: never into a run folder (it would replace a run's
    scores.npz or add a file verify-run does not know), and never over an existing file unless
    --overwrite."""
    from audiobench.errors import ConfigError

    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"--save-logits {path}: folder {path.parent} does not exist")
    for folder in (path.parent, *path.parent.parents):
        if (folder / "run.json").is_file():
            raise ConfigError(f"--save-logits {path}: {folder} is an audiobench run folder; write the logits elsewhere")
    if path.exists() and (path.is_dir() or not overwrite):
        raise ConfigError(f"--save-logits {path}: file exists; pass --overwrite to replace it")


def _print_table(res, top_k: int) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    k = min(top_k, res.logits.shape[1]) if res.logits.ndim == 2 else 0
    table = Table(title=f"{res.model}: top {k} labels (sigmoid probability)")
    table.add_column("clip", overflow="fold")
    table.add_column("rank", justify="right")
    table.add_column("label", overflow="fold")
    table.add_column("probability", justify="right")
    for cid, top in zip(res.clip_ids, res.top_k(k)):
        for r, (label, p) in enumerate(top):
            table.add_row(cid if r == 0 else "", str(r + 1), label, f"{p:.3f}", end_section=(r == len(top) - 1))
    console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)
    console.print(table)
