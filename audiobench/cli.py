"""Command-line interface: a thin click group over the Python API.

Heavy imports (torch, h5py, pandas) happen inside commands so ``audiobench --help`` is instant.
User errors (:class:`audiobench.errors.AudiobenchError`) become one line on stderr and exit code
1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from audiobench import __version__
from audiobench.errors import AudiobenchError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


class AudiobenchGroup(click.Group):
    """A click group that turns AudiobenchError into a one-line ClickException, and prints usage
    errors as one line too (click's default adds the usage and a "Try --help" line)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AudiobenchError as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and ctx is not None and cmd_name not in ("--help", "-h"):
            import difflib

            close = difflib.get_close_matches(cmd_name, self.list_commands(ctx), n=1)
            if close:
                ctx.fail(f"No such command {cmd_name!r}. Did you mean {close[0]!r}?")
        return cmd


@click.group(cls=AudiobenchGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="audiobench")
def cli():
    """audiobench: how robust is your AudioSet tagger?

    Run registered CNN and Transformer taggers over AudioSet HDF5 shards, clean and under noise,
    occlusion and adversarial attacks, and write tidy result tables.
    """


@cli.group("list", cls=AudiobenchGroup)
def list_group():
    """List models, perturbations, suites, datasets or metrics (one name per line first)."""


@list_group.command("models")
def list_models():
    """Models usable by name, built-in and from installed plugins: name, family, sample rate,
    reference mAP, description, [source package]."""
    from audiobench.models import list_models as rows

    for row in rows():
        click.echo(row.line())


@list_group.command("perturbations")
def list_perturbations():
    """Registered perturbations and attacks: name, swept level, description."""
    from audiobench.perturb import PERTURBATIONS

    for name, cls in PERTURBATIONS.items():
        click.echo(f"{name}\t{cls.level_field or '-'}\t{_first_sentence(cls.__doc__)}")


@list_group.command("suites")
def list_suites():
    """Named suites of conditions (audiobench run --suite NAME) and each condition's physical parameter."""
    from audiobench.perturb.suites import SUITES, describe_suite

    for name, suite in SUITES.items():
        click.echo(f"{name}\t{suite.description}")
        for cid, text in describe_suite(name):
            click.echo(f"  {cid}\t{text}")
        for kind, bank in sorted(suite.needs_bank.items()):
            click.echo(f"  ({kind} runs only with {bank.replace('_', '-')} DIR: --{bank.replace('_', '-')})")


@list_group.command("datasets")
def list_datasets():
    """Data manifests found (repository data_manifests/, AUDIOBENCH_MANIFESTS, cache)."""
    from audiobench.data import DATASETS

    for name, path in DATASETS.items():
        click.echo(f"{name}\t{path}")


@list_group.command("metrics")
def list_metrics():
    """Metrics written to metrics.csv."""
    from audiobench.metrics import METRICS

    for name, entry in METRICS.items():
        click.echo(f"{name}\t{entry}")


def _first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    import re

    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    m = re.search(r"(?<! al)(?<!e\.g)(?<!i\.e)\.(\s|$)", para)  # not "et al." / "e.g." / "i.e."
    return para[: m.start() + 1] if m else para


def _add_subcommands():
    # Each command lives in its own module under audiobench/commands; importing them is cheap
    # (they import heavy libraries inside the command functions).
    import importlib

    for mod_name, attr in (
        ("audiobench.commands.data", "data_group"),
        ("audiobench.commands.predict", "predict"),
        ("audiobench.commands.run", "run"),
        ("audiobench.commands.report", "report"),
        ("audiobench.commands.verify_run", "verify_run"),
        ("audiobench.commands.train_toy", "train_toy"),
        ("audiobench.commands.sweep", "sweep"),
        ("audiobench.commands.sharpness", "sharpness"),
    ):
        cli.add_command(getattr(importlib.import_module(mod_name), attr))


_add_subcommands()


def main(argv=None):
    return cli.main(args=argv, prog_name="audiobench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
