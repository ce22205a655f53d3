"""Data manifests (``data_manifests/<name>.json``): what a dataset is, in one small JSON file.

Example::

    {
      "format": "audiobench-manifest", "version": 1,
      "name": "audioset-eval",
      "sample_rate": 32000, "clip_seconds": 10.0, "num_samples": 320000,
      "n_clips": 20371,
      "clip_list_hash": "<sha256 of the ordered clip ids joined by newlines>",
      "vocab_hash": "<sha256 of the ordered vocabulary mids joined by newlines>",
      "vocabulary": {"size": 527, "hash": "...", "entries": [[419, "/m/03l9g", "Hammer"], ...]},
      "shards": [{"path": "eval/eval_00.h5", "sha256": "...", "n_clips": 20371}]
    }

Shard paths are relative to a *data root*: ``--data-root``, else env ``AUDIOBENCH_DATA``, else
the manifest's folder. Paths that leave the data root ('..', absolute paths, symlinks pointing
outside) are refused. ``vocabulary`` is either embedded (``size`` + ``entries``, possibly only the
classes used, + ``hash`` of the full vocabulary) or ``{"path": "class_labels_indices.csv"}``
(relative to the manifest). A ``generator`` entry marks a dataset audiobench builds itself (the toy
set); its data root is ``AUDIOBENCH_HOME/<name>``.

The clip-list and vocabulary hashes are stored so that every result can record them for free;
``audiobench data verify`` recomputes them together with the shard sha256.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Union

from audiobench.errors import DataError, UnknownNameError

MANIFEST_FORMAT = "audiobench-manifest"
MANIFEST_VERSION = 1


@dataclass
class ShardEntry:
    path: str  # POSIX path relative to the data root
    n_clips: int
    sha256: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "n_clips": self.n_clips}


@dataclass
class Manifest:
    name: str
    sample_rate: int
    clip_seconds: float
    num_samples: int
    n_clips: int
    clip_list_hash: str
    vocab_hash: str
    vocabulary: Dict[str, Any]
    shards: List[ShardEntry]
    description: str = ""
    generator: Optional[Dict[str, Any]] = None
    path: Optional[Path] = field(default=None, compare=False)  # where it was read from

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "name": self.name,
        }
        if self.description:
            d["description"] = self.description
        d.update(
            sample_rate=self.sample_rate,
            clip_seconds=self.clip_seconds,
            num_samples=self.num_samples,
            n_clips=self.n_clips,
            clip_list_hash=self.clip_list_hash,
            vocab_hash=self.vocab_hash,
        )
        if self.generator is not None:
            d["generator"] = self.generator
        d["shards"] = [s.to_dict() for s in self.shards]
        d["vocabulary"] = self.vocabulary
        return d

    def dumps(self) -> str:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        # One line per innermost array (vocabulary entries): json puts ",\n" between elements and
        # never a raw newline inside a string, so splitting on it is safe.
        text = re.sub(
            r"\[\n\s+([^\[\]{}]*?)\n\s+\]",
            lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",\n")) + "]",
            text,
        )
        return text + "\n"

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            from audiobench.data.shards import _chmod_default

            _chmod_default(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.dumps())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.path = path
        return path

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: Optional[Path] = None) -> "Manifest":
        where = f"manifest {path}" if path else "manifest"
        if not isinstance(d, dict):
            raise DataError(f"{where}: expected a JSON object")
        if d.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{where}: 'format' must be {MANIFEST_FORMAT!r} (is this an AST/JSON datafile?)")
        if d.get("version") != MANIFEST_VERSION:
            raise DataError(f"{where}: unsupported version {d.get('version')!r} (this audiobench reads {MANIFEST_VERSION})")
        try:
            shards = [
                ShardEntry(path=str(s["path"]), n_clips=int(s["n_clips"]), sha256=s.get("sha256"))
                for s in d["shards"]
            ]
            m = cls(
                name=str(d["name"]),
                sample_rate=int(d["sample_rate"]),
                clip_seconds=float(d["clip_seconds"]),
                num_samples=int(d.get("num_samples") or round(float(d["sample_rate"]) * float(d["clip_seconds"]))),
                n_clips=int(d["n_clips"]),
                clip_list_hash=str(d["clip_list_hash"]),
                vocab_hash=str(d["vocab_hash"]),
                vocabulary=d["vocabulary"],
                shards=shards,
                description=str(d.get("description", "")),
                generator=d.get("generator"),
                path=path,
            )
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: malformed field ({exc})") from None
        if not m.shards:
            raise DataError(f"{where}: lists no shards")
        if sum(s.n_clips for s in m.shards) != m.n_clips:
            raise DataError(f"{where}: n_clips {m.n_clips} is not the sum of the shards' clip counts")
        for s in m.shards:
            check_relative(s.path, where)
        return m

    # -- data root ------------------------------------------------------------------------------
    def default_root(self) -> Path:
        """``AUDIOBENCH_HOME/<name>`` for generated sets, else env ``AUDIOBENCH_DATA``, else the
        manifest's folder."""
        if self.generator is not None:
            from audiobench.paths import audiobench_home

            return audiobench_home() / self.name
        env = os.environ.get("AUDIOBENCH_DATA")
        if env:
            return Path(env).expanduser()
        if self.path is not None:
            return self.path.resolve().parent
        return Path.cwd()

    def shard_paths(self, data_root: Union[str, Path, None] = None) -> List[Path]:
        root = Path(data_root).expanduser() if data_root is not None else self.default_root()
        return [resolve_inside(root, s.path, f"manifest {self.path or self.name}") for s in self.shards]


def check_relative(rel: str, where: str) -> PurePosixPath:
    p = PurePosixPath(str(rel).replace("\\", "/"))
    if not str(rel) or p.is_absolute() or ".." in p.parts or (len(str(rel)) > 1 and str(rel)[1] == ":"):
        raise DataError(f"{where}: shard path {rel!r} must be relative to the data root, without '..'")
    return p


def resolve_inside(root: Path, rel: str, where: str) -> Path:
    """``root / rel``, refusing paths (symlinks included) that resolve outside ``root``."""
    p = check_relative(rel, where)
    full = root.joinpath(*p.parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(full)
    if os.path.commonpath([real_root, real]) != real_root:
        raise DataError(f"{where}: shard {rel!r} resolves to {real}, outside the data root {real_root}")
    return full


def load_manifest(path: Union[str, Path]) -> Manifest:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest {path} is not valid JSON: {exc}") from None
    return Manifest.from_dict(d, path=path)


# -- manifests by name --------------------------------------------------------------------------
class ManifestIndex:
    """Name → manifest path over :func:`audiobench.paths.manifest_dirs` (first folder wins).

    Scanned on every call, so manifests written by ``data pack --manifest`` appear immediately.
    """

    kind = "dataset"

    def _scan(self) -> Dict[str, Path]:
        from audiobench.paths import audiobench_home, manifest_dirs

        found: Dict[str, Path] = {}
        for d in manifest_dirs():
            if d.is_dir():
                for p in sorted(d.glob("*.json")):
                    found.setdefault(p.stem, p)
        # The toy set is always available: without the repository's data_manifests/ (a wheel
        # install) its manifest is written to the cache on first use.
        found.setdefault("toy", audiobench_home() / "data_manifests" / "toy.json")
        return found

    def items(self):
        return sorted(self._scan().items())

    def names(self) -> List[str]:
        return sorted(self._scan())

    def __contains__(self, name: object) -> bool:
        return name in self._scan()

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._scan())

    def get(self, name: str) -> Path:
        found = self._scan()
        if name in found:
            return found[name]
        from audiobench.registry import Registry

        reg: Registry = Registry(self.kind)
        for k in found:
            reg.register(k, found[k])
        raise UnknownNameError(
            reg.unknown_message(name) + " (a manifest name, a manifest .json, an .h5 shard or an AST JSON datafile)"
        )
