"""The one atomic file writer, and file hashing.

Every file audiobench writes (result tables, run.json, units, shards, manifests, reports, cached
downloads) goes through :func:`atomic_write_bytes` or :class:`AtomicFile`: the bytes go to a
temporary name in the destination folder, are flushed to disk, and the temporary file is renamed
over the destination. A crash or SIGKILL at any moment leaves either the old file or the new one,
never a torn one; a failed write (disk full, I/O error) removes the temporary file, keeps the old
file and raises :class:`~audiobench.errors.OutputError`: one line naming the file, and still an
``OSError`` for code that catches those.

This module sits at the bottom of the package (it imports only :mod:`audiobench.errors`), so the
data layer, the models' weight cache and the results layer share it.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Optional

from audiobench.errors import OutputError

__all__ = [
    "AtomicFile",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_npz",
    "atomic_write_parquet",
    "atomic_write_text",
    "json_default",
    "sha256_file",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == _errno.ENOSPC:
        reason = "no space left on device"
    err = OutputError(f"{path}: cannot write ({reason}); the previous file, if any, is unchanged")
    err.errno = exc.errno
    err.strerror = exc.strerror
    err.filename = str(path)
    return err


class AtomicFile:
    """A binary file written under a temporary name and renamed into place on :meth:`commit`.

    Use as a context manager: leaving the block without an exception commits; an exception (or
    :meth:`discard`) removes the temporary file and keeps whatever was at ``path`` before::

        with AtomicFile(path) as f:
            f.write(...)            # or pass f.tmp_path to a library that writes by file name
    """

    def __init__(self, path: str | Path, *, suffix: str = ".tmp"):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=suffix, dir=str(self.path.parent))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are ordinary files
        except OSError as exc:
            raise _output_error(self.path, exc) from None
        self.tmp_path = Path(tmp)
        self._file: Optional[BinaryIO] = os.fdopen(fd, "wb")
        self._done = False

    @property
    def file(self) -> BinaryIO:
        if self._file is None:
            raise ValueError("the temporary file is closed")
        return self._file

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def close_temporary(self) -> None:
        """Close the temporary file handle (for libraries that reopen ``tmp_path`` by name)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def commit(self) -> Path:
        """Flush to disk and rename over ``path``; on failure the old file stays."""
        if self._done:
            return self.path
        try:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
            else:
                with open(self.tmp_path, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(self.tmp_path, self.path)
        except OSError as exc:
            self.discard()
            raise _output_error(self.path, exc) from None
        except BaseException:
            self.discard()
            raise
        self._done = True
        _fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Remove the temporary file; ``path`` is left as it was."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)
        self._done = True

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``."""
    f = AtomicFile(path)
    try:
        f.write(data)
    except OSError as exc:
        f.discard()
        raise _output_error(f.path, exc) from None
    except BaseException:
        f.discard()
        raise
    return f.commit()


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_default(o: Any):
    """``json.dumps`` fallback for numpy scalars and arrays and paths."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def atomic_write_npz(path: str | Path, **arrays) -> Path:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_csv(path: str | Path, frame) -> Path:
    """A pandas DataFrame as CSV: no index, ``\\n`` line ends, 10 significant digits."""
    return atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.10g"))


def atomic_write_parquet(path: str | Path, frame) -> Path:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
