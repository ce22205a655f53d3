"""The one device parser and the one autocast context.

``--device`` everywhere (run, sweep, predict, sharpness, the Python API) goes through
:func:`parse_device`; ``--precision`` through :func:`autocast`. Both raise a one-line
:class:`~audiobench.errors.ConfigError` for a bad value.
"""

from __future__ import annotations

import contextlib
from typing import Union

import torch

from audiobench.errors import ConfigError

DeviceLike = Union[str, torch.device, None]
PRECISIONS = ("fp32", "bf16")
# device types that can hold real tensors and run the models (``meta`` has no data)
_USABLE_TYPES = ("cpu", "cuda", "mps", "xpu")


def parse_device(device: DeviceLike = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
    ``torch.device`` → a usable ``torch.device``."""
    if device is None or (isinstance(device, str) and device.strip() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip()
        try:
            dev = torch.device(text)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"--device {device!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in _USABLE_TYPES:
        raise ConfigError(f"--device {device!r}: {dev.type} tensors hold no data; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r}: CUDA is not available on this machine (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose {' or '.join(PRECISIONS)}")
    return precision


def autocast(device: DeviceLike, precision: str):
    """The autocast context for ``precision`` on ``device``: a no-op for fp32; bf16 autocast
    otherwise (attack losses are computed in fp32 either way)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
