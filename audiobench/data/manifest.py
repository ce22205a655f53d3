"""Data manifests (``data_manifests/<name>.json``): what a dataset is, in one small JSON file.

Example::

    {
      "format": "audiobench-manifest", "version": 1,
      "name": "audioset-eval",
      "sample_rate": 32000, "clip_seconds": 10.0, "num_samples": 320000,
      "n_clips": 20371,
      "clip_list_hash": "<sha256 of the ordered clip ids joined by newlines>",
      "labels_hash": "<sha256 of the target matrix, see shards.labels_hash>",   (optional)
      "vocab_hash": "<sha256 of the ordered vocabulary mids joined by newlines>",
      "vocabulary": {"size": 527, "hash": "...", "entries": [[419, "/m/03l9g", "Hammer"], ...]},
      "shards": [{"path": "eval.h5", "sha256": null, "n_clips": 20371}],
      "obtain": "how to get the shards (optional, shown when they are missing)"
    }

Shard paths are relative to a *data root*: ``--data-root``, else env ``AUDIOBENCH_DATA``, else
the manifest's folder. Paths that leave the data root ('..', absolute paths, symlinks pointing
outside, control characters) are refused. ``vocabulary`` is either embedded (``size`` +
``entries``, possibly only the classes used, + ``hash`` of the full vocabulary) or
``{"path": "vocab.csv"}`` (relative to the manifest's folder and inside it). A ``generator`` entry
marks the dataset audiobench builds itself (the toy set, ``"name": "toy"``); its data root is
always ``AUDIOBENCH_HOME/toy``, whatever ``--data-root`` or ``AUDIOBENCH_DATA`` say.

Every field is validated with the limits of :mod:`audiobench.data.limits` (types, ranges, the
16000.7 Hz rate or ``n_clips: 1e999`` are refused). A shard ``sha256`` may be ``null`` (a manifest
describing data audiobench does not ship, like ``audioset-eval``): such shards are checked against
the clip-list and labels hashes when opened, and their sha256 is computed and recorded in each
run's ``run.json``. ``audiobench data verify`` recomputes all of it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Union

from audiobench.data.limits import (
    MAX_CLIPS,
    MAX_MANIFEST_BYTES,
    MAX_SHARDS,
    check_clip_seconds,
    check_count,
    data_sample_rate,
    has_control_chars,
)
from audiobench.errors import DataError, UnknownNameError

MANIFEST_FORMAT = "audiobench-manifest"
MANIFEST_VERSION = 1
GENERATORS = ("toy",)  # datasets audiobench builds itself
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,127}$")


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
    labels_hash: Optional[str] = None
    obtain: str = ""
    path: Optional[Path] = field(default=None, compare=False)  # where it was read from

    @property
    def pinned(self) -> bool:
        """True when every shard's sha256 is recorded in the manifest."""
        return all(s.sha256 for s in self.shards)

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "name": self.name,
        }
        if self.description:
            d["description"] = self.description
        if self.obtain:
            d["obtain"] = self.obtain
        d.update(
            sample_rate=self.sample_rate,
            clip_seconds=self.clip_seconds,
            num_samples=self.num_samples,
            n_clips=self.n_clips,
            clip_list_hash=self.clip_list_hash,
        )
        if self.labels_hash:
            d["labels_hash"] = self.labels_hash
        d["vocab_hash"] = self.vocab_hash
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

    def write_temp(self, path: Union[str, Path]) -> str:
        """Write the manifest to a temporary file beside ``path`` and return its name (the caller
        renames it into place with ``os.replace``, or removes it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            from audiobench.data.shards import _chmod_default

            _chmod_default(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.dumps())
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return tmp

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        tmp = self.write_temp(path)
        try:
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
            raise DataError(f"{where}: unsupported version {str(d.get('version'))[:20]!r} (this audiobench reads {MANIFEST_VERSION})")
        for key in ("name", "sample_rate", "clip_seconds", "n_clips", "clip_list_hash", "vocab_hash", "vocabulary", "shards"):
            if key not in d:
                raise DataError(f"{where}: missing field {key!r}")
        name = d["name"]
        if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
            raise DataError(
                f"{where}: 'name' must be 1-128 letters, digits, ' ', '.', '_', '+' or '-' (no path), got {str(name)[:40]!r}"
            )
        sample_rate = data_sample_rate(d["sample_rate"], where)
        clip_seconds = check_clip_seconds(d["clip_seconds"], where)
        expected = int(round(sample_rate * clip_seconds))
        num_samples = d.get("num_samples", expected)
        num_samples = check_count(num_samples, f"{where}: num_samples", 1, max(1, expected + 1))
        if abs(num_samples - sample_rate * clip_seconds) > 1:
            raise DataError(f"{where}: num_samples {num_samples} is not sample_rate × clip_seconds ({expected})")
        n_clips = check_count(d["n_clips"], f"{where}: n_clips", 1, MAX_CLIPS)
        raw_shards = d["shards"]
        if not isinstance(raw_shards, list) or not raw_shards:
            raise DataError(f"{where}: 'shards' must be a non-empty list")
        if len(raw_shards) > MAX_SHARDS:
            raise DataError(f"{where}: lists {len(raw_shards)} shards (limit {MAX_SHARDS})")
        shards = []
        for k, s in enumerate(raw_shards):
            if not isinstance(s, dict) or "path" not in s or "n_clips" not in s:
                raise DataError(f"{where}: shard {k} must be an object with 'path' and 'n_clips'")
            if not isinstance(s["path"], str):
                raise DataError(f"{where}: shard {k} path must be a string")
            check_relative(s["path"], where)
            sha = s.get("sha256")
            if sha is not None and (not isinstance(sha, str) or not _HEX64.match(sha)):
                raise DataError(f"{where}: shard {s['path']!r} sha256 must be 64 lowercase hex digits or null")
            shards.append(ShardEntry(path=s["path"], n_clips=check_count(s["n_clips"], f"{where}: shard {k} n_clips", 1, MAX_CLIPS), sha256=sha))
        if len({s.path for s in shards}) != len(shards):
            raise DataError(f"{where}: a shard is listed twice")
        if sum(s.n_clips for s in shards) != n_clips:
            raise DataError(f"{where}: n_clips {n_clips} is not the sum of the shards' clip counts")
        hashes = {}
        for key in ("clip_list_hash", "vocab_hash", "labels_hash"):
            value = d.get(key)
            if value is None and key == "labels_hash":
                hashes[key] = None
                continue
            if not isinstance(value, str) or not _HEX64.match(value):
                raise DataError(f"{where}: {key!r} must be 64 lowercase hex digits")
            hashes[key] = value
        if not isinstance(d["vocabulary"], dict):
            raise DataError(f"{where}: 'vocabulary' must be an object with 'path' or 'entries'")
        generator = d.get("generator")
        if generator is not None:
            if not isinstance(generator, dict) or generator.get("name") not in GENERATORS:
                raise DataError(f"{where}: unknown 'generator' (audiobench generates only: {', '.join(GENERATORS)})")
            if name != generator["name"]:
                raise DataError(f"{where}: a generated dataset's name must be its generator's ({generator['name']!r}), got {name!r}")
        texts = {}
        for key, limit in (("description", 2000), ("obtain", 2000)):
            value = d.get(key, "")
            if not isinstance(value, str) or len(value) > limit or has_control_chars(value):
                raise DataError(f"{where}: {key!r} must be one line of at most {limit} characters")
            texts[key] = value
        return cls(
            name=name,
            sample_rate=sample_rate,
            clip_seconds=clip_seconds,
            num_samples=num_samples,
            n_clips=n_clips,
            clip_list_hash=hashes["clip_list_hash"],
            vocab_hash=hashes["vocab_hash"],
            labels_hash=hashes["labels_hash"],
            vocabulary=d["vocabulary"],
            shards=shards,
            description=texts["description"],
            obtain=texts["obtain"],
            generator=generator,
            path=path,
        )

    # -- data root ------------------------------------------------------------------------------
    def default_root(self) -> Path:
        """``AUDIOBENCH_HOME/toy`` for the generated toy set, else env ``AUDIOBENCH_DATA``, else
        the manifest's folder."""
        if self.generator is not None:
            from audiobench.paths import audiobench_home

            return audiobench_home() / self.generator["name"]
        env = os.environ.get("AUDIOBENCH_DATA")
        if env:
            return Path(env).expanduser()
        if self.path is not None:
            return self.path.resolve().parent
        return Path.cwd()

    def data_root(self, data_root: Union[str, Path, None] = None) -> Path:
        """The root the shard paths are relative to. ``data_root`` (``--data-root``) wins, except
        for the generated toy set, which lives in ``AUDIOBENCH_HOME`` wherever the data root points."""
        if data_root is not None and self.generator is None:
            return Path(data_root).expanduser()
        return self.default_root()

    def root_source(self, data_root: Union[str, Path, None] = None) -> str:
        """Where the data root came from, for messages."""
        if self.generator is not None:
            return "AUDIOBENCH_HOME"
        if data_root is not None:
            return "--data-root"
        if os.environ.get("AUDIOBENCH_DATA"):
            return "AUDIOBENCH_DATA"
        return "the manifest's folder; set AUDIOBENCH_DATA or --data-root to the folder that holds the shards"

    def shard_paths(self, data_root: Union[str, Path, None] = None) -> List[Path]:
        root = self.data_root(data_root)
        return [resolve_inside(root, s.path, f"manifest {self.path or self.name}") for s in self.shards]


def check_relative(rel: str, where: str, what: str = "shard path", root: str = "the data root") -> PurePosixPath:
    """``rel`` as a relative POSIX path that stays inside its root lexically (no absolute path, no
    drive, no '..', no '~', no control characters such as NUL)."""
    text = str(rel)
    if has_control_chars(text):
        raise DataError(f"{where}: {what} {text[:80]!r} contains control characters (NUL, newline, ...)")
    if len(text) > 4096:
        raise DataError(f"{where}: {what} is {len(text)} characters long (limit 4096)")
    p = PurePosixPath(text.replace("\\", "/"))
    if not text or p.is_absolute() or ".." in p.parts or (len(text) > 1 and text[1] == ":") or text.startswith("~"):
        raise DataError(f"{where}: {what} {text!r} must be relative to {root}, without '..'")
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


def read_json_file(path: Union[str, Path], what: str, limit: int = MAX_MANIFEST_BYTES):
    """Parse a JSON file of at most ``limit`` bytes; every failure is one DataError line."""
    path = Path(path)
    try:
        if not path.exists():
            raise FileNotFoundError
        if not path.is_file():
            raise DataError(f"{what} {path} is not a regular file")
        size = path.stat().st_size
        if size > limit:
            raise DataError(f"{what} {path} is {size} bytes (limit {limit})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path} cannot be read ({type(exc).__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise DataError(f"{what} {path} is nested too deeply to be a manifest") from None


def load_manifest(path: Union[str, Path]) -> Manifest:
    path = Path(path)
    return Manifest.from_dict(read_json_file(path, "manifest"), path=path)


def manifest_from_json(doc, path: Path) -> Manifest:
    """A manifest from JSON already read (by a reader that allowed a datafile's larger size)."""
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise DataError(f"manifest {path} is {size} bytes (limit {MAX_MANIFEST_BYTES})")
    return Manifest.from_dict(doc, path=path)


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
