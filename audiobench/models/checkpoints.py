"""Safe, strict checkpoint loading shared by every model wrapper.

* Files are read with ``torch.load(..., weights_only=True)`` (a pickle carrying code is refused) or
  with safetensors.
* State dicts are matched strictly: the first missing, unexpected or mis-shaped key is named in a
  one-line :class:`~audiobench.errors.WeightsError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from audiobench.errors import WeightsError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file without executing code (``weights_only=True`` or safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            if "numpy" not in str(exc):
                raise
            # Training checkpoints (e.g. PANNs' {"model", "sampler", "iteration"}) may hold numpy
            # arrays or scalars. Their reconstructors build data only, never call arbitrary code,
            # so they are allowed; every other global is still refused.
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise WeightsError(
                f"{path}: refused: the checkpoint holds Python objects that are not plain tensors "
                f"(possible code payload); only weights_only-loadable files are accepted"
            ) from None
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def _numpy_safe_globals() -> list:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    dtypes = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                            "uint64", "float16", "float32", "float64", "complex64", "complex128")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


def unwrap_state_dict(obj: Any, keys=("model", "state_dict", "model_state_dict")) -> Mapping[str, torch.Tensor]:
    """Return the tensor mapping inside common checkpoint wrappers ({"model": sd}, ...)."""
    if isinstance(obj, Mapping):
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                return obj[k]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise WeightsError("checkpoint holds no state_dict (expected a mapping of tensor names to tensors)")


def strict_load(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``module``; refuse with the first mismatching key named."""
    own = module.state_dict()
    for key in own:
        if key not in state_dict:
            raise WeightsError(f"{what}: missing key {key!r} (expected {len(own)} tensors, got {len(state_dict)})")
    for key, value in state_dict.items():
        if key not in own:
            raise WeightsError(f"{what}: unexpected key {key!r}")
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{what}: key {key!r} is not a tensor")
        if tuple(value.shape) != tuple(own[key].shape):
            raise WeightsError(
                f"{what}: key {key!r} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}"
            )
    module.load_state_dict(state_dict, strict=True)
