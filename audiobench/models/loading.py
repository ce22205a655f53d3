"""``load_model``: registered name → ready-to-score :class:`~audiobench.models.base.AudioTagger`.

Weights come from, in order: the ``checkpoint`` argument (``--checkpoint``), the cache and package
assets by the spec's file name, a verified download (see :mod:`audiobench.models.weights`). Files
are read without executing code (``torch.load(weights_only=True)`` or safetensors) and loaded
strictly in the model's reference layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from audiobench.errors import ConfigError, WeightsError
from audiobench.models.base import AudioTagger

WEIGHT_CHOICES = ("default", "random")


def load_model(
    name: str,
    checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device] = "cpu",
    sample_rate: Optional[int] = None,
    weights: str = "default",
    download: bool = True,
) -> AudioTagger:
    """Build registered model ``name`` with its weights, in eval mode, frozen, on ``device``.

    Args:
        name: a registered model (``audiobench list models``), optionally with a quantized variant,
            ``NAME@VARIANT`` (``toy-cnn@int8``; :mod:`audiobench.models.quantize`): the base is
            loaded as below, then the variant is applied.
        checkpoint: a checkpoint file (``.pt``/``.pth``/``.ckpt``/``.safetensors``) or, for models
            whose wrapper accepts one (``accepts_checkpoint_dir``), a Hugging Face folder. It need
            not match the spec's sha256; its own sha256 is recorded.
        device: where the model goes (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``).
        sample_rate: rate of the waveforms that will be fed, Hz (default: the model's native rate);
            a resampler inside the model converts it.
        weights: ``"default"`` (load weights as above) or ``"random"`` (skip loading; for
            benchmarks of speed and for tests; the initialisation is seeded, so reproducible).
        download: allow downloading missing default weights.

    The returned module carries ``checkpoint_path`` (str or None) and ``checkpoint_sha256``.
    """
    from audiobench.models import MODELS
    from audiobench.models.checkpoints import read_checkpoint
    from audiobench.models.quantize import apply_variant, parse_variant
    from audiobench.models.weights import checkpoint_sha256, resolve_weights

    base_name, variant = parse_variant(name)
    if variant is not None:
        base = load_model(base_name, checkpoint=checkpoint, device=device, sample_rate=sample_rate,
                          weights=weights, download=download)
        return apply_variant(base, variant, inplace=True)

    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights={weights!r} is not one of {', '.join(WEIGHT_CHOICES)}")
    if sample_rate is not None and (int(sample_rate) != sample_rate or sample_rate <= 0):
        raise ConfigError(f"sample_rate={sample_rate!r} must be a positive integer number of Hz")
    entry = MODELS.get(name)
    spec = entry.spec
    # Parameter initialisation draws from torch's global RNG: contain it and seed it, so that
    # weights="random" gives the same model in every process (benchmarks, tests, ranks).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = entry.factory(spec, sample_rate=None if sample_rate is None else int(sample_rate))

    path: Optional[Path] = None
    sha: Optional[str] = None
    if weights == "default":
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.exists():
                raise WeightsError(f"{path}: checkpoint not found")
        else:
            path = resolve_weights(spec, download=download)
        if path.is_dir():
            if not getattr(model, "accepts_checkpoint_dir", False):
                raise WeightsError(f"{path}: is a folder; model {name} needs a single checkpoint file "
                                   f"(.pt/.pth/.ckpt/.safetensors)")
            obj = path
        else:
            obj = read_checkpoint(path)
        sha = checkpoint_sha256(path)
        try:
            model.load_checkpoint(obj, what=str(path))
        except WeightsError as exc:
            msg = str(exc)
            raise WeightsError(msg if str(path) in msg else f"{path}: {msg}") from None
        del obj

    model = model.to(_device(device))
    model.eval()
    model.requires_grad_(False)
    model.checkpoint_path = None if path is None else str(path)
    model.checkpoint_sha256 = sha
    return model


def _device(device: Union[str, torch.device]) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a valid torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev
