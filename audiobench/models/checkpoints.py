"""Safe, strict checkpoint loading shared by every model wrapper.

* Files are read with ``torch.load(..., weights_only=True)`` (a pickle carrying code is refused) or
  with safetensors.
* Only dense tensors with data are accepted: a sparse (COO/CSR/...) or meta tensor anywhere in the
  file is refused with its name (sparse tensors are also built with PyTorch's invariant checks on,
  so a malformed one is refused while loading instead of corrupting memory later).
* State dicts are matched strictly: the first missing, unexpected or mis-shaped key is named in a
  one-line :class:`~audiobench.errors.WeightsError`.
* Dtypes are matched too, instead of letting ``load_state_dict`` cast silently: a complex, integer
  or boolean tensor for a floating-point parameter is refused (a cast would drop the imaginary part
  or stand for a wrong file), as is a floating-point tensor for an integer or boolean buffer;
  float64 into float32 is cast with a warning (precision beyond float32 is lost); float16 and
  bfloat16 are cast up silently (exact).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
import warnings
from typing import Any, Iterator, Mapping, Tuple

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
        # sparse tensors are validated as they are built (index bounds, sizes): an unchecked
        # malformed sparse tensor can read or write out of bounds when used
        with torch.sparse.check_sparse_tensor_invariants(enable=True), warnings.catch_warnings():
            # PyTorch's "sparse CSR support is in beta" notice while building one: the tensor is
            # refused below with its name, the notice would only add a second line
            warnings.filterwarnings("ignore", message=r"Sparse \w+ tensor support is in beta")
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:
                if "numpy" not in str(exc):
                    raise
                # Training checkpoints (e.g. PANNs' {"model", "sampler", "iteration"}) may hold numpy
                # arrays or scalars. Their reconstructors build data only, never call arbitrary code,
                # so they are allowed; every other global is still refused.
                with torch.serialization.safe_globals(_numpy_safe_globals()):
                    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise WeightsError(
                f"{path}: refused: the checkpoint holds Python objects that are not plain tensors "
                f"(possible code payload); only weights_only-loadable files are accepted"
            ) from None
        if "sparse" in str(exc).lower() or "indices" in str(exc).lower():
            raise WeightsError(f"{path}: refused: the checkpoint holds a malformed sparse tensor ({first}); "
                               f"only dense tensors are accepted") from None
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    check_dense_tensors(obj, str(path))
    return obj


# a checkpoint's nesting is walked iteratively with a bound, so a hostile file cannot recurse deeply
_MAX_NODES = 1_000_000


def _tensors(obj: Any) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in nested mappings / lists / tuples; names join keys with '/'."""
    stack = [("", obj)]
    seen = 0
    while stack:
        name, node = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            raise WeightsError(f"checkpoint nests more than {_MAX_NODES} objects; refusing to walk it")
        if isinstance(node, torch.Tensor):
            yield name, node
        elif isinstance(node, Mapping):
            stack.extend((f"{name}/{k}" if name else str(k), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, (list, tuple)):
            stack.extend((f"{name}/{i}" if name else str(i), v) for i, v in reversed(list(enumerate(node))))


def check_dense_tensors(obj: Any, what: str = "checkpoint") -> None:
    """Refuse sparse and meta tensors anywhere in a loaded checkpoint (one line, the tensor named)."""
    for name, t in _tensors(obj):
        if t.layout != torch.strided:
            layout = str(t.layout).replace("torch.", "")
            raise WeightsError(f"{what}: refused: tensor {name!r} is a {layout} tensor; only dense tensors "
                               f"are accepted")
        if t.is_meta:
            raise WeightsError(f"{what}: refused: tensor {name!r} is a meta tensor (a shape without data)")


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
    check_dense_tensors(state_dict, what)
    narrowed = [key for key, value in state_dict.items() if not _dtype_fits(key, value, own[key], what)]
    if narrowed:
        warnings.warn(f"{what}: {len(narrowed)} tensor(s) stored as float64 (first {narrowed[0]!r}) cast to the "
                      f"model's float32; precision beyond float32 is lost", stacklevel=2)
    module.load_state_dict(state_dict, strict=True)


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "bool" if dtype == torch.bool else "int"


def _dtype_fits(key: str, value: torch.Tensor, own: torch.Tensor, what: str) -> bool:
    """True if ``value`` loads into ``own`` without loss; False if it loads with a float64 →
    float32 narrowing (the caller warns); refuses a cast that changes what the numbers mean."""
    got, want = value.dtype, own.dtype
    if value.is_quantized:
        raise WeightsError(f"{what}: key {key!r} is a quantized {str(got).replace('torch.', '')} tensor, "
                           f"model expects {str(want).replace('torch.', '')}")
    kind_got, kind_want = _dtype_kind(got), _dtype_kind(want)
    if kind_got != kind_want:
        why = " (the imaginary part would be dropped)" if kind_got == "complex" else ""
        raise WeightsError(f"{what}: key {key!r} has dtype {str(got).replace('torch.', '')}, model expects "
                           f"{str(want).replace('torch.', '')}{why}")
    if kind_want == "float" and torch.finfo(got).bits > torch.finfo(want).bits:
        return False
    return True
