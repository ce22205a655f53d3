"""Where audiobench keeps its cache (toy set, downloaded weights).

``AUDIOBENCH_HOME`` overrides the default, which is the per-user cache directory
(``~/.cache/audiobench`` on Linux). Nothing is created at import time.
"""

from __future__ import annotations

import os
from pathlib import Path


def audiobench_home() -> Path:
    env = os.environ.get("AUDIOBENCH_HOME")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("audiobench"))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path.home() / ".cache" / "audiobench"


def weights_dirs() -> list[Path]:
    """Directories searched for checkpoint files by name, in order."""
    dirs = [audiobench_home() / "weights"]
    extra = os.environ.get("AUDIOBENCH_WEIGHTS", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return dirs


def package_root() -> Path:
    return Path(__file__).resolve().parent


def manifest_dirs() -> list[Path]:
    """Folders searched for ``<name>.json`` data manifests: ``AUDIOBENCH_MANIFESTS`` entries,
    the repository's ``data_manifests/`` (editable install), then the cache."""
    dirs = [Path(p).expanduser() for p in os.environ.get("AUDIOBENCH_MANIFESTS", "").split(os.pathsep) if p]
    dirs.append(package_root().parent / "data_manifests")
    dirs.append(audiobench_home() / "data_manifests")
    return dirs
