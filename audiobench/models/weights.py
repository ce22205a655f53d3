"""Finding, downloading and verifying a model's default weights.

Resolution order for a spec's ``weights.file_name`` (``load_model`` tries ``--checkpoint`` first):

1. the cache folders of :func:`audiobench.paths.weights_dirs` (``AUDIOBENCH_HOME/weights``, then each
   folder in ``AUDIOBENCH_WEIGHTS``), then the package's own ``audiobench/assets/weights/`` (the
   toy models ship there);
2. a download from ``weights.url`` into ``AUDIOBENCH_HOME/weights``: streamed to a temporary file
   in that folder with a progress bar, sha256-checked, then atomically renamed into place, so an
   interrupted or corrupt download never leaves a file under the final name;
3. otherwise a one-line :class:`~audiobench.errors.WeightsError` saying how to supply the file.

Downloads are skipped when ``AUDIOBENCH_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) and connections give
up after :data:`CONNECT_TIMEOUT_S`, so an offline machine fails fast instead of hanging.
A cached file whose sha256 differs from the spec's is refused rather than silently used.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

from audiobench.errors import WeightsError
from audiobench.models.base import ModelSpec, WeightsSpec
from audiobench.paths import package_root, weights_dirs

CONNECT_TIMEOUT_S = 10.0
_TRUTHY = {"1", "true", "yes", "on"}

# sha256 of files already hashed in this process, keyed by (path, size, mtime_ns)
_SHA_MEMO: Dict[Tuple[str, int, int], str] = {}


def offline() -> bool:
    """True when downloads are disabled (``AUDIOBENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` set)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("AUDIOBENCH_OFFLINE", "HF_HUB_OFFLINE"))


def package_weights_dir() -> Path:
    return package_root() / "assets" / "weights"


def search_dirs() -> list[Path]:
    """Folders searched for a weights file by name, in order."""
    return weights_dirs() + [package_weights_dir()]


def file_sha256(path: Path) -> str:
    """sha256 of a file (memoised per path, size and mtime within the process)."""
    from audiobench.models.checkpoints import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file; for a folder (Hugging Face layout), the sha256 of the sorted
    ``<relative path> <file sha256>`` lines of its files, so any change to any file shows."""
    import hashlib

    if path.is_file():
        return file_sha256(path)
    lines = [f"{p.relative_to(path).as_posix()} {file_sha256(p)}\n" for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def find_cached(spec: ModelSpec) -> Optional[Path]:
    """The first existing ``<dir>/<file_name>`` of :func:`search_dirs`, sha256-checked; else None."""
    w = _weights_spec(spec)
    for d in search_dirs():
        cand = d / w.file_name
        if cand.is_file() or (cand.is_dir() and any(cand.iterdir())):
            if cand.is_file() and w.sha256:
                got = file_sha256(cand)
                if got != w.sha256.lower():
                    raise WeightsError(
                        f"{cand}: sha256 {got[:16]}… does not match the expected {w.sha256[:16]}… for model "
                        f"{spec.name}; delete or replace the file (or pass it explicitly with --checkpoint)"
                    )
            return cand
    return None


def resolve_weights(spec: ModelSpec, download: bool = True) -> Path:
    """Path of ``spec``'s default weights: cache, package assets, then a download (see module doc)."""
    w = _weights_spec(spec)
    found = find_cached(spec)
    if found is not None:
        return found
    target_dir = weights_dirs()[0]
    reason = ""
    if not w.url:
        reason = "it has no download URL"
    elif not download:
        reason = "downloading was disabled"
    elif offline():
        reason = "offline mode is on (AUDIOBENCH_OFFLINE/HF_HUB_OFFLINE)"
    else:
        try:
            return download_file(w.url, target_dir / w.file_name, w.sha256)
        except WeightsError as exc:
            reason = str(exc)
    raise WeightsError(
        f"weights {w.file_name} for model {spec.name} not found ({reason}); pass --checkpoint PATH, or put "
        f"{w.file_name} in {target_dir}, or set AUDIOBENCH_WEIGHTS to a folder that holds it"
    )


def download_file(url: str, dest: Path, sha256: Optional[str] = None, timeout: float = CONNECT_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` atomically, checking ``sha256`` when given.

    The bytes go to a temporary file beside ``dest`` and are hashed as they arrive; only a
    complete, verified file is renamed to ``dest``. Any failure leaves nothing behind.
    """
    import hashlib

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    req = urllib.request.Request(url, headers={"User-Agent": "audiobench"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise WeightsError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise WeightsError(f"download of {url} failed: {why}") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with resp, os.fdopen(fd, "wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task(f"downloading {dest.name}", total=total)
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    progress.update(task, advance=len(block))
        if total is not None and tmp.stat().st_size != total:
            raise WeightsError(f"download of {url} was cut short ({tmp.stat().st_size} of {total} bytes)")
        got = h.hexdigest()
        if sha256 and got != sha256.lower():
            raise WeightsError(f"download of {url} refused: sha256 {got[:16]}… does not match the expected "
                               f"{sha256[:16]}…")
        if not sha256:
            import warnings

            warnings.warn(f"{dest.name}: no sha256 pinned for this file; downloaded sha256 is {got}", stacklevel=2)
        os.replace(tmp, dest)
    except (OSError, urllib.error.URLError) as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"download of {url} failed: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _SHA_MEMO[(str(dest.resolve()), dest.stat().st_size, dest.stat().st_mtime_ns)] = got
    return dest


def _weights_spec(spec: ModelSpec) -> WeightsSpec:
    if spec.weights is None:
        raise WeightsError(f"model {spec.name} has no default weights; pass --checkpoint PATH")
    return spec.weights

