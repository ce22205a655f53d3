"""audiobench: robustness benchmark harness for AudioSet audio taggers.

The public Python API is small and import-light: importing :mod:`audiobench` does not import
torch; ``load_model`` and friends import it on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(name, checkpoint=None, device="cpu", **kwargs):
    """Build registered model ``name`` (see ``audiobench list models``) with its weights.

    Returns a ``torch.nn.Module`` mapping a float32 waveform batch in [-1, 1] of shape
    (batch, samples) at ``module.sample_rate`` to logits (batch, n_classes).
    """
    from audiobench.models import load_model as _load_model

    return _load_model(name, checkpoint=checkpoint, device=device, **kwargs)
