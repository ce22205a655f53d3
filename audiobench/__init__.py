"""audiobench: how robust is your audio tagger?

The public Python API (import-light: importing :mod:`audiobench` does not import torch; each name
imports what it needs on first use)::

    audiobench.evaluate(model, perturbations, data=..., limit=..., seed=..., device=..., out=...)
        -> audiobench.Results (.metrics, .per_clip, .per_class, .run_dir, .report(format))
    audiobench.predict(model, inputs, ...)     -> clip ids and logits
    audiobench.load_model(name, ...)           -> a model that follows the contract
    audiobench.AudioTagger                     -> the contract, a typing.Protocol
"""

__version__ = "0.1.0"

__all__ = ["AudioTagger", "Results", "__version__", "evaluate", "load_model", "predict"]


def load_model(name, checkpoint=None, device="cpu", **kwargs):
    """Build model ``name`` (``audiobench list models``, ``module:factory``, ``hf:FOLDER``,
    ``NAME@VARIANT``) with its weights.

    Returns a ``torch.nn.Module`` mapping a float32 waveform batch in [-1, 1] of shape
    (batch, samples) at ``module.sample_rate`` to logits (batch, n_classes).
    """
    from audiobench.models import load_model as _load_model

    return _load_model(name, checkpoint=checkpoint, device=device, **kwargs)


def evaluate(model, perturbations=(), **kwargs):
    """Benchmark ``model`` clean and under ``perturbations``; see :func:`audiobench.api.evaluate`."""
    from audiobench.api import evaluate as _evaluate

    return _evaluate(model, perturbations, **kwargs)


def predict(model, inputs, **kwargs):
    """Score audio files or datasets; see :func:`audiobench.api.predict`."""
    from audiobench.api import predict as _predict

    return _predict(model, inputs, **kwargs)


def __getattr__(name):  # lazy: the contract and Results import torch/pandas only when asked for
    if name == "AudioTagger":
        from audiobench.models.contract import AudioTagger

        return AudioTagger
    if name == "Results":
        from audiobench.api import Results

        return Results
    raise AttributeError(f"module 'audiobench' has no attribute {name!r}")
