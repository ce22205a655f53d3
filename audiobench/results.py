"""Result folders: atomic files, the run lock, provenance, and the tidy tables.

Layout of ``results/<run_id>/`` (README "Result files" documents every column)::

    run.json        resolved config + provenance; "complete": true only once every table is written
    metrics.csv     long rows: run_id, model, condition, perturbation, param, level, metric, value,
                    ci_low, ci_high, n_clips, n_classes, suspect   (also metrics.parquet)
    per_clip.csv    one row per (model, condition, clip)
    per_class.csv   one row per (model, condition, class, metric)
    scores.npz      clip_ids, targets, logits__<model>__<condition>, hist__<model>__<condition>
    units/          finished (model, condition, clip range) units, the source of truth for resume
    audio/          optional listening examples (--save-audio)

Every file is written to a temporary name in the same folder and renamed into place, so a SIGKILL
at any moment leaves either the old file or the new one, never a torn one. Nothing reads, edits
and rewrites a shared file: ``report`` reads many run folders and pivots only for display.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator

from audiobench.errors import ResultsError

RUN_JSON = "run.json"
LOCK_FILE = "lock"


# --- atomic writes ------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; result files are normal files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_npz(path: str | Path, **arrays) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_csv(path: str | Path, frame) -> None:
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.10g"))


def atomic_write_parquet(path: str | Path, frame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


# --- hashing ------------------------------------------------------------------------------------
def config_hash(config: Dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the result-relevant config."""
    blob = json.dumps(config, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --- the run lock -------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/lock`` (O_EXCL) while a run writes; a second writer is refused.

    A lock left by a killed process (its pid no longer alive on this host) is taken over, so a
    SIGKILLed run can be resumed.
    """
    lock = Path(run_dir) / LOCK_FILE
    host = platform.node()
    for attempt in range(2):
        try:
            fd = os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            pid, owner_host = int(owner.get("pid", -1)), owner.get("host")
            if attempt == 0 and owner_host == host and pid > 0 and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    lock.unlink()
                continue
            raise ResultsError(
                f"{run_dir}: another audiobench process (pid {pid} on {owner_host}) is writing this run folder; "
                f"wait for it or remove {lock} if that process is gone"
            ) from None
        except PermissionError:
            raise ResultsError(f"{run_dir}: output directory is not writable") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": host}, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def ensure_writable_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ResultsError(f"{path}: exists and is not a directory") from None
    except OSError as exc:
        raise ResultsError(f"{path}: cannot create output directory ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ResultsError(f"{path}: output directory is not writable")
    return path


def read_run_json(run_dir: Path) -> Dict[str, Any]:
    p = Path(run_dir) / RUN_JSON
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{p}: not found (not an audiobench run folder)") from None
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{p}: unreadable ({exc})") from None


# --- provenance ---------------------------------------------------------------------------------
def git_commit() -> str | None:
    """The audiobench source tree's git commit, when it runs from a checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> Dict[str, str]:
    import numpy
    import torch
    import torchaudio

    from audiobench import __version__

    return {
        "audiobench": __version__,
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
