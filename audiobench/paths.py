"""Where audiobench keeps its cache (toy set, downloaded weights).

``AUDIOBENCH_HOME`` overrides the default, which is the per-user cache directory
(``~/.cache/audiobench`` on Linux). Nothing is created at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

from audiobench.errors import ConfigError


def audiobench_home() -> Path:
    """The cache folder. It need not exist yet, but it (or, when it does not exist, its nearest
    existing parent) must be a folder: ``AUDIOBENCH_HOME`` naming a regular file is one clear
    :class:`~audiobench.errors.ConfigError`, not a failure deep inside whatever writes there."""
    env = os.environ.get("AUDIOBENCH_HOME")
    if env:
        home = Path(env).expanduser()
        where = f"AUDIOBENCH_HOME {env}"
    else:
        try:
            from platformdirs import user_cache_dir

            home = Path(user_cache_dir("audiobench"))
        except ImportError:  # pragma: no cover - platformdirs is a dependency
            home = Path.home() / ".cache" / "audiobench"
        where = f"the cache folder {home}"
    _check_folder(home, where)
    return home


def _check_folder(path: Path, where: str) -> None:
    probe = path
    while True:
        if probe.exists():
            if not probe.is_dir():
                what = "is not a folder" if probe == path else f"lies under {probe}, which is not a folder"
                raise ConfigError(f"{where} {what}; point AUDIOBENCH_HOME at a folder")
            return
        if probe.parent == probe:
            return
        probe = probe.parent


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
