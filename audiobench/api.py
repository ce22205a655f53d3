"""The Python API: what users, the CLI and sweeps call.

    import audiobench
    res = audiobench.evaluate("toy-cnn", ["gaussian:snr_db=20", "pgd:eps=0.002;steps=3"], limit=16)
    res.metrics                      # pandas DataFrame in the metrics.csv schema
    print(res.report("md"))

``audiobench run`` and ``audiobench sweep`` parse their options into exactly these arguments and
call :func:`evaluate`, so the same inputs give byte-identical tables whichever way they are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

from audiobench.errors import ConfigError

ModelLike = Union[str, Any]


@dataclass
class Results:
    """One finished run: its folder and its tables (read through the result schema)."""

    run_dir: Path

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @cached_property
    def _run(self):
        from audiobench.results.schema import load_run

        return load_run(self.run_dir)

    @property
    def info(self) -> Dict[str, Any]:
        """run.json (provenance, resolved config, trust verdicts)."""
        return self._run.info

    @property
    def metrics(self):
        """metrics.csv: one row per (model, condition, metric)."""
        return self._run.metrics

    @property
    def per_clip(self):
        """per_clip.csv: one row per (model, condition, clip)."""
        return self._run.per_clip

    @property
    def per_class(self):
        """per_class.csv: one row per (model, condition, class, metric)."""
        return self._run.per_class

    def report(self, format: str = "table", out: Union[str, Path, None] = None):
        """The report of this run: text for ``table``/``md``/``csv``; with ``out`` (required for
        ``html``) the files are written and their paths returned."""
        from audiobench.report import FORMATS, render, write_report

        if format not in FORMATS:
            raise ConfigError(f"report format {format!r}: choose one of {', '.join(FORMATS)}")
        if out is not None or format == "html":
            return write_report([self._run], format, Path(out or "report.html"))
        return render([self._run], format)

    def __repr__(self) -> str:
        return f"Results({str(self.run_dir)!r})"


def _model_sources(model: Union[ModelLike, Sequence[ModelLike]]) -> tuple:
    """(names in run order, {name: nn.Module} for models given as objects, {name: identity}).

    Strings are model names as ``audiobench run --model`` takes them (registered, plugin,
    ``module:factory``, ``hf:FOLDER``, ``NAME@VARIANT``); a comma-separated string names several.
    An object is named by its ``name`` attribute, else its class name.
    """
    import torch

    from audiobench.models.resolve import check_model_source, state_dict_sha256

    if isinstance(model, str):
        items = [m.strip() for m in model.split(",") if m.strip()]
    elif isinstance(model, (list, tuple)):
        items = list(model)
    else:
        items = [model]
    if not items:
        raise ConfigError("model: no model given")
    names, objects, identity = [], {}, {}
    for m in items:
        if isinstance(m, torch.nn.Module):
            name = str(getattr(m, "name", None) or type(m).__name__)
            objects[name] = m
            identity[name] = f"{type(m).__module__}.{type(m).__qualname__}:{state_dict_sha256(m)}"
        elif isinstance(m, str):
            check_model_source(m)  # unknown name -> "did you mean"; bad syntax -> one line
            name = m
        else:
            raise ConfigError(f"model {m!r}: give a model name, 'module:factory', 'hf:FOLDER' or an nn.Module")
        if name in names:
            raise ConfigError(f"model {name!r} is given twice")
        names.append(name)
    return names, objects, identity


def parse_checkpoint_option(value, models: list) -> dict:
    """``--checkpoint PATH`` (one model) or ``NAME=PATH[,NAME=PATH...]`` -> {model: path}."""
    if not value:
        return {}
    out = {}
    for part in [v.strip() for v in str(value).split(",") if v.strip()]:
        if "=" in part:
            name, path = part.split("=", 1)
            if name not in models:
                raise ConfigError(f"--checkpoint {part}: model {name!r} is not in --model")
            out[name] = path
        elif len(models) == 1:
            out[models[0]] = part
        else:
            raise ConfigError("--checkpoint with several models must be NAME=PATH[,NAME=PATH...]")
    return out


def build_run_config(model, perturbations=(), *, data=None, limit=None, seed=0, device="auto", out="results",
                     checkpoint=None, data_root=None, run_id=None, resume=False, batch_size=16, precision="fp32",
                     bootstrap=1000, save_audio=0, trust_checks=True, on_bad_clip="fail", weights="default",
                     label_map=None, reference_model=None, suite=None, transfer_from=None):
    """The :class:`~audiobench.engine.RunConfig` that :func:`evaluate` runs (checked, nothing run)."""
    from audiobench.engine import RunConfig
    from audiobench.perturb.spec import parse_conditions

    names, objects, identity = _model_sources(model)
    if reference_model is not None and reference_model not in names:
        from audiobench.models.resolve import check_model_source

        check_model_source(reference_model)
        names.append(reference_model)  # the reference is evaluated too: mCE needs its errors
    conditions = parse_conditions(list(perturbations) if not isinstance(perturbations, str) else [perturbations])
    if transfer_from:
        from audiobench.models.resolve import check_model_source
        from audiobench.perturb.transfer import source_models, transfer_conditions

        sources = ([s.strip() for s in transfer_from.split(",") if s.strip()] if isinstance(transfer_from, str)
                   else [str(s) for s in transfer_from])
        for src in sources:
            for member in source_models(src):
                check_model_source(member)
        if len(set(sources)) != len(sources):
            raise ConfigError("--transfer-from: a source is given twice")
        if not any(c.is_attack and c.domain == "waveform" and not c.requires_fit and c.name != "chain"
                   for c in conditions):
            raise ConfigError("--transfer-from needs a waveform attack to transfer (e.g. --noise pgd --eps 0.002)")
        conditions = transfer_conditions(conditions, sources)
        transfer_from = sources
    if isinstance(checkpoint, dict):
        checkpoints = {k: (str(Path(v).expanduser()) if v is not None else None) for k, v in checkpoint.items()}
        unknown = sorted(set(checkpoints) - set(names))
        if unknown:
            raise ConfigError(f"checkpoint for {unknown[0]!r}: that model is not being run")
    elif checkpoint is not None:
        if len(names) != 1:
            raise ConfigError("checkpoint with several models must be a mapping NAME -> PATH")
        checkpoints = {names[0]: str(Path(checkpoint).expanduser())}
    else:
        checkpoints = {}
    config = RunConfig(
        models=names, conditions=conditions, data=data, data_root=data_root, checkpoints=checkpoints,
        device=device, batch_size=batch_size, limit=limit, seed=seed, out=Path(out), run_id=run_id, resume=resume,
        precision=precision, bootstrap=bootstrap, save_audio=save_audio, weights=weights, trust_checks=trust_checks,
        on_bad_clip=on_bad_clip, label_map=None if label_map is None else str(Path(label_map).expanduser()),
        model_objects=objects, object_identity=identity, reference_model=reference_model, suite=suite,
        transfer_from=transfer_from,
    )
    config.validate()
    return config


def evaluate(model, perturbations: Sequence[Any] = (), *, data: Optional[str] = None, limit: Optional[int] = None,
             seed: int = 0, device: str = "auto", out: Union[str, Path] = "results", progress: bool = False,
             log: Optional[Callable[[str], None]] = None, **run_options) -> Optional[Results]:
    """Benchmark ``model`` clean and under each perturbation; returns the finished run's Results.

    Args:
        model: a model name as ``audiobench run --model`` takes it (registered, plugin,
            ``"module:factory"``, ``"hf:FOLDER"``, ``"NAME@VARIANT"``), an ``nn.Module`` that
            follows the model contract (:class:`audiobench.AudioTagger`), or a list of these.
        perturbations: ``KIND:FIELD=V;FIELD=V`` strings (the ``--on`` syntax, e.g.
            ``"gaussian:snr_db=20"``, ``"pgd:eps=0.002;steps=3"``) or perturbation objects; the
            clean condition is always added first.
        data: a manifest name or ``.json``, an ``.h5`` shard or an AST JSON datafile; None = the
            embedded toy set. ``limit``: only the first N clips.
        seed: every random draw is keyed by (seed, clip id, condition).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. ``out``: the results folder.
        **run_options: every other ``audiobench run`` option as a keyword: ``checkpoint`` (a path,
            or a mapping model → path), ``data_root``, ``run_id``, ``resume``, ``batch_size``,
            ``precision``, ``bootstrap``, ``save_audio``, ``trust_checks``, ``on_bad_clip``,
            ``label_map`` (a CSV mapping the model's classes to the dataset's), ``reference_model``
            (normalises mCE), ``suite`` (the name of the suite the conditions come from, for the
            summary rows), ``transfer_from`` (source model(s) for transfer attacks).

    Raises :class:`~audiobench.errors.AudiobenchError` (one line) for bad input, and
    :class:`~audiobench.engine.StopRequested` when SIGINT/SIGTERM stopped the run (every finished
    batch is stored; call again with ``run_id=...`` and ``resume=True``). Under torchrun every rank
    calls it; rank 0 returns the Results, the other ranks None.
    """
    config = build_run_config(model, perturbations, data=data, limit=limit, seed=seed, device=device, out=out,
                              **run_options)
    return run_config(config, progress=progress, log=log)


def run_config(config, *, progress: bool = False, log: Optional[Callable[[str], None]] = None,
               keep_process_group: bool = False) -> Optional[Results]:
    """Run an already built :class:`~audiobench.engine.RunConfig` (what the CLI and sweeps call
    after parsing their options). Returns Results on rank 0, None on the other ranks.
    ``keep_process_group``: under torchrun, leave the process group up for further runs (a sweep
    closes it once at the end)."""
    from audiobench.engine import Runner

    runner = Runner(config, progress=progress, log=log)
    try:
        run_dir = runner.run()
    except BaseException as exc:
        # the CLI needs these to print the resume command (or stay quiet on ranks > 0)
        exc.run_id = runner.run_id  # type: ignore[attr-defined]
        exc.is_main = runner.dist.is_main  # type: ignore[attr-defined]
        raise
    finally:
        if not keep_process_group:
            runner.dist.close()
    return Results(Path(run_dir)) if runner.dist.is_main else None


def predict(model, inputs, **kwargs):
    """Score audio files or datasets with ``model``; see :func:`audiobench.prediction.predict`.
    Returns :class:`~audiobench.prediction.Predictions` (clip_ids, logits, class_names, top_k)."""
    from audiobench.prediction import predict as _predict

    return _predict(model, inputs, **kwargs)
