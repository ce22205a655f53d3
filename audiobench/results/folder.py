"""The run folder on disk: output-directory checks and the single-writer lock."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Iterator

from audiobench.errors import ResultsError
from audiobench.results.schema import LOCK_FILE

MAX_PID = 1 << 22  # Linux's pid_max limit; larger "pids" in a lock file are not processes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _read_lock_owner(lock: Path) -> tuple[int, str | None]:
    """(pid, host) from a lock file; (-1, None) when it is unreadable or malformed."""
    try:
        owner = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return -1, None
    if not isinstance(owner, dict):
        return -1, None
    pid, host = owner.get("pid"), owner.get("host")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= MAX_PID:
        pid = -1
    return pid, host if isinstance(host, str) else None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/lock`` (O_EXCL) while a run writes; a second writer is refused.

    A lock left by a process that is gone (its pid no longer alive on this host), or a lock file
    whose content is not a valid owner, is taken over, so a SIGKILLed run can be resumed.
    """
    lock = Path(run_dir) / LOCK_FILE
    host = platform.node()
    for attempt in range(2):
        try:
            fd = os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock.is_dir() or lock.is_symlink():
                raise ResultsError(f"{lock}: is not a regular lock file; remove it") from None
            pid, owner_host = _read_lock_owner(lock)
            stale = pid < 0 or (owner_host == host and not _pid_alive(pid))
            if attempt == 0 and stale:
                with contextlib.suppress(OSError):
                    lock.unlink()
                continue
            raise ResultsError(
                f"{run_dir}: another audiobench process (pid {pid} on {owner_host}) is writing this run folder; "
                f"wait for it or remove {lock} if that process is gone"
            ) from None
        except PermissionError:
            raise ResultsError(f"{run_dir}: output directory is not writable") from None
        except OSError as exc:
            raise ResultsError(f"{run_dir}: cannot create its lock file ({exc.strerror or exc})") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": host}, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed; refuse a path below a file or an unwritable folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ResultsError(f"{path}: exists and is not a directory") from None
    except OSError as exc:
        raise ResultsError(f"{path}: cannot create output directory ({exc.strerror or exc})") from None
    if not path.is_dir():
        raise ResultsError(f"{path}: exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ResultsError(f"{path}: output directory is not writable")
    return path


def check_writable_parent(path: Path) -> Path:
    """Check, without creating anything, that ``path`` could be created as a folder: the nearest
    existing ancestor is a writable directory."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ResultsError(f"{path}: cannot create output directory ({probe} is not a directory)")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ResultsError(f"{path}: output directory is not writable" if probe == path
                           else f"{path}: cannot create output directory ({probe} is not writable)")
    return path
