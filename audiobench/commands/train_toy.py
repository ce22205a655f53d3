"""`audiobench train-toy`: reproducibly train the toy-* models (see :mod:`audiobench.models.toy_training`).

The committed weights were made from the repository root with

    audiobench train-toy --out audiobench/assets/weights

By default the weights go to ``$AUDIOBENCH_HOME/weights``, where ``audiobench run`` finds them
before the shipped ones; overwriting the shipped weights takes that explicit ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train-toy")
@click.option("--model", "models", default="toy-cnn,toy-transformer", help="Toy model(s) to train.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for <model>.pt (default: $AUDIOBENCH_HOME/weights, searched before the shipped weights).")
@click.option("--n-clips", type=int, default=512, help="Training clips (toy generator seed 1).")
@click.option("--epochs", type=int, default=None, help="Epochs (default per model: toy-cnn 30, toy-transformer 40).")
@click.option("--batch-size", type=int, default=32)
@click.option("--crop-seconds", type=float, default=5.0)
@click.option("--lr", type=float, default=3e-3)
@click.option("--seed", type=int, default=0)
def train_toy(models, out, n_clips, epochs, batch_size, crop_seconds, lr, seed):
    """Train the toy models (offline, CPU, a few minutes) and report their clean mAP on the toy set."""
    from audiobench.errors import ConfigError
    from audiobench.models.toy_training import DEFAULT_EPOCHS, evaluate_on_toy, save_weights, train_one
    from audiobench.paths import weights_dirs
    from audiobench.results import ensure_writable_dir

    names = [m.strip() for m in models.split(",") if m.strip()]
    for n in names:
        if not n.startswith("toy-"):
            raise ConfigError(f"--model {n}: train-toy trains toy-* models only")
    if n_clips < batch_size or (epochs is not None and epochs < 1):
        raise ConfigError("--n-clips must be >= --batch-size and --epochs >= 1")
    out_dir = ensure_writable_dir(Path(out) if out is not None else weights_dirs()[0])
    for name in names:
        model = train_one(name, n_clips=n_clips, epochs=epochs or DEFAULT_EPOCHS.get(name, 30), batch_size=batch_size,
                          crop_seconds=crop_seconds, lr=lr, seed=seed, log=lambda m: click.echo(m, err=True))
        path = out_dir / f"{name}.pt"
        sha = save_weights(model, path)
        mAP = evaluate_on_toy(model)
        click.echo(f"{name}: clean mAP on the toy set {mAP:.4f}; wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {sha})")
