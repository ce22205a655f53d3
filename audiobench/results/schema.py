"""The one owner of the result schema: file names, columns, run.json, and their readers/writers.

Layout of ``results/<run_id>/``::

    run.json        resolved config + provenance (:class:`RunInfo`); ``"complete": true`` only once
                    every table below is written
    metrics.csv     long rows (:data:`METRICS_COLUMNS`), also metrics.parquet
    per_clip.csv    one row per (model, condition, clip)
    per_class.csv   one row per (model, condition, class, metric)
    scores.npz      clip_ids, targets, and per model: logits__<model>__<condition>,
                    hist__<model>__<condition>, geometry__<model>__<condition> ((N, 4): per-clip
                    snr_db, linf, l2, min_eps: :data:`GEOMETRY_ARRAY`), embedding__<model>__<condition>
                    (models with an embedding), measured__<model>__<condition>__<name> (what the
                    perturbation measured per clip), bad_input__<model>, clean_energy__<model> (sum
                    of squares of each clean clip as the model saw it); what verify-run checks
                    per_clip.csv, the perturbation budgets and the latent metrics against
    perturbation_spectrum.csv   each attack's footprint: energy of delta per mel band and 1 s
                    segment relative to the clean audio's (runs with attacks only)
    units/          the engine's finished (model, condition, clip range) units (resume)
    audio/          optional listening examples: :func:`audio_path`

A sharpness run (``audiobench sharpness``; run.json ``"kind": "sharpness"``) holds run.json and
sharpness.csv instead of the tables above.

The engine writes through :func:`write_run_info` and :func:`write_tables`; ``report``,
``verify-run`` and the end-of-run summary read through :func:`read_run_info` and
:func:`load_run`. Every reader error is one line (:class:`~audiobench.errors.ResultsError`)
naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from audiobench.errors import ResultsError
from audiobench.fileio import atomic_write_csv, atomic_write_json, atomic_write_npz, atomic_write_parquet

RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
METRICS_PARQUET = "metrics.parquet"
PER_CLIP_CSV = "per_clip.csv"
PER_CLASS_CSV = "per_class.csv"
SCORES_NPZ = "scores.npz"
PERTURBATION_SPECTRUM_CSV = "perturbation_spectrum.csv"
SHARPNESS_CSV = "sharpness.csv"  # the table of a sharpness run (run.json "kind": "sharpness")
SHARPNESS_KIND = "sharpness"
UNITS_DIR = "units"
AUDIO_DIR = "audio"
LOCK_FILE = "lock"
CLEAN = "none"  # condition id of the clean condition

#: the columns of metrics.csv, in order
METRICS_COLUMNS = (
    "run_id", "model", "condition", "perturbation", "param", "level",
    "metric", "value", "ci_low", "ci_high", "n_clips", "n_classes", "suspect",
)
#: the columns naming a condition, shared by the three tables
KEY_COLUMNS = ("run_id", "model", "condition", "perturbation", "param", "level")
#: per_clip.csv: the key, the clip, the perturbation's geometry (then the per-clip statistics)
PER_CLIP_REQUIRED = (*KEY_COLUMNS, "clip_id", "min_eps")
GEOMETRY_COLUMNS = ("snr_db", "linf", "l2")
#: the columns of a scores.npz geometry array (one row per clip)
GEOMETRY_ARRAY = (*GEOMETRY_COLUMNS, "min_eps")
PER_CLASS_COLUMNS = (*KEY_COLUMNS, "class_index", "class_name", "metric", "value")
_TEXT_COLUMNS = ("run_id", "model", "condition", "perturbation", "param", "clip_id", "class_name", "metric")

# key of scores.npz arrays
def logits_key(model: str, condition: str) -> str:
    return f"logits__{model}__{condition}"


def hist_key(model: str, condition: str) -> str:
    return f"hist__{model}__{condition}"


def geometry_key(model: str, condition: str) -> str:
    return f"geometry__{model}__{condition}"


def embedding_key(model: str, condition: str) -> str:
    return f"embedding__{model}__{condition}"


def bad_input_key(model: str) -> str:
    return f"bad_input__{model}"


def energy_key(model: str) -> str:
    return f"clean_energy__{model}"


def measured_key(model: str, condition: str, name: str) -> str:
    """What a perturbation measured per clip (a per_clip.csv column such as ``rt60_s``)."""
    return f"measured__{model}__{condition}__{name}"


# --- run.json -----------------------------------------------------------------------------------
#: keys of run.json's ``config`` that do not change the numbers (added to the result config when
#: the run is written): the config hash covers every other key
RUN_ONLY_CONFIG_KEYS = ("device", "batch_size", "out", "save_audio")
# key -> (expected JSON type(s), human name); checked by RunInfo.from_dict
_RUN_FIELDS = {
    "run_id": (str, "a string"),
    "complete": (bool, "true or false"),
    "config": (dict, "an object"),
    "data": (dict, "an object"),
    "models": (dict, "an object"),
    "conditions": (list, "a list"),
}
_OPTIONAL_FIELDS = {
    "trust": (dict, "an object"),
    "timings": (dict, "an object"),
    "vocab": (dict, "an object"),
    "seed": (int, "an integer"),
    "config_hash": (str, "a string"),
}


@dataclass
class RunInfo:
    """run.json, checked: the typed fields readers use, plus the whole document in ``raw``."""

    path: Path
    raw: Dict[str, Any]

    @classmethod
    def from_dict(cls, raw: Any, path: Path) -> "RunInfo":
        if not isinstance(raw, dict):
            raise ResultsError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        missing = [k for k in _RUN_FIELDS if k not in raw]
        if missing:
            raise ResultsError(f"{path}: missing key(s) {', '.join(missing)}")
        for key, (typ, what) in {**_RUN_FIELDS, **_OPTIONAL_FIELDS}.items():
            if key in raw and raw[key] is not None and not _is(raw[key], typ):
                raise ResultsError(f"{path}: '{key}' must be {what}, got {type(raw[key]).__name__}")
        for i, c in enumerate(raw["conditions"]):
            if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                raise ResultsError(f"{path}: conditions[{i}] must be an object with a string 'id'")
        for name, m in raw["models"].items():
            if not isinstance(m, dict):
                raise ResultsError(f"{path}: models.{name} must be an object")
        cfg = raw["config"]
        if "models" in cfg and not (isinstance(cfg["models"], list) and all(isinstance(m, str) for m in cfg["models"])):
            raise ResultsError(f"{path}: config.models must be a list of model names")
        for key in ("bootstrap", "seed"):
            if key in cfg and not _is(cfg[key], int):
                raise ResultsError(f"{path}: config.{key} must be an integer, got {cfg[key]!r}")
        for name, t in (raw.get("trust") or {}).items():
            if not isinstance(t, dict):
                raise ResultsError(f"{path}: trust.{name} must be an object")
        return cls(path=path, raw=raw)

    # typed views
    @property
    def run_id(self) -> str:
        return self.raw["run_id"]

    @property
    def complete(self) -> bool:
        return bool(self.raw["complete"])

    @property
    def config(self) -> Dict[str, Any]:
        return self.raw["config"]

    @property
    def config_hash(self) -> Optional[str]:
        return self.raw.get("config_hash")

    @property
    def data(self) -> Dict[str, Any]:
        return self.raw["data"]

    @property
    def models(self) -> Dict[str, Dict[str, Any]]:
        return self.raw["models"]

    @property
    def model_names(self) -> List[str]:
        """The models in run order (config.models; run.json's models object as a fallback)."""
        return list(self.config.get("models") or self.models)

    @property
    def conditions(self) -> List[Dict[str, Any]]:
        return self.raw["conditions"]

    @property
    def trust(self) -> Dict[str, Dict[str, Any]]:
        return self.raw.get("trust") or {}

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", self.config.get("seed", 0)) or 0)

    @property
    def bootstrap(self) -> int:
        return int(self.config.get("bootstrap", 1000))

    @property
    def class_names(self) -> Optional[List[str]]:
        names = (self.raw.get("vocab") or {}).get("names")
        return list(names) if isinstance(names, list) else None

    def suspect(self, model: str, condition: str) -> bool:
        return bool(((self.trust.get(model) or {}).get(condition) or {}).get("suspect", False))


def _is(value: Any, typ) -> bool:
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is bool:
        return isinstance(value, bool)
    return isinstance(value, typ)


def read_run_info(run_dir: Path | str) -> RunInfo:
    """Read and check ``run_dir/run.json``."""
    path = Path(run_dir) / RUN_JSON
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ResultsError(f"{path}: not a regular file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: file is missing (not a run folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    except OSError as exc:
        raise ResultsError(f"{path}: unreadable ({exc.strerror or exc})") from None
    return RunInfo.from_dict(raw, path)


def write_run_info(run_dir: Path | str, info: Dict[str, Any]) -> None:
    """Write run.json atomically (the old file stays on any failure)."""
    atomic_write_json(Path(run_dir) / RUN_JSON, info)


# --- the tables ---------------------------------------------------------------------------------
def write_tables(run_dir: Path, metric_rows: Sequence[dict], clip_frames, class_frames, arrays: Dict[str, Any],
                 *, spectrum=None) -> None:
    """Write metrics.csv/.parquet, per_clip.csv, per_class.csv, scores.npz and (when given)
    perturbation_spectrum.csv, each atomically."""
    import pandas as pd

    run_dir = Path(run_dir)
    metrics = pd.DataFrame(list(metric_rows))
    atomic_write_csv(run_dir / METRICS_CSV, metrics)
    atomic_write_parquet(run_dir / METRICS_PARQUET, metrics)
    atomic_write_csv(run_dir / PER_CLIP_CSV, pd.concat(clip_frames, ignore_index=True))
    atomic_write_csv(run_dir / PER_CLASS_CSV, pd.concat(class_frames, ignore_index=True))
    atomic_write_npz(run_dir / SCORES_NPZ, **arrays)
    if spectrum is not None:
        atomic_write_csv(run_dir / PERTURBATION_SPECTRUM_CSV, spectrum)


def read_table(path: Path, required: Sequence[str]):
    """A results CSV as a DataFrame with its text, numeric and boolean columns typed."""
    import pandas as pd

    if not path.is_file():
        raise ResultsError(f"{path}: file is missing")
    try:
        # Only empty cells are missing values: a model called "NA" stays a string.
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], low_memory=False)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ResultsError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {_first_line(exc)})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {', '.join(missing)}")
    for col in _TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype(object).fillna("").astype(str)  # all-empty columns parse as float64
    for col in ("level", "value", "ci_low", "ci_high", "min_eps", *GEOMETRY_COLUMNS):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "suspect" in df.columns:
        df["suspect"] = df["suspect"].map(_as_bool)
    return df


@contextlib.contextmanager
def open_npz(path: Path):
    """An ``.npz`` archive opened for reading, never unpickling (``allow_pickle=False``). A file that
    is not a zip archive (a bare ``.npy``, text) raises ValueError, and the file is closed on
    every path (numpy leaves its own file object open when the zip is unreadable)."""
    import numpy as np

    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            raise ValueError("not an .npz archive")
        f.seek(0)
        with np.load(f, allow_pickle=False) as npz:
            yield npz


def read_scores(path: Path) -> Dict[str, Any]:
    """scores.npz as a dict of arrays (never unpickled)."""
    import zipfile

    if not path.is_file():
        raise ResultsError(f"{path}: file is missing")
    try:
        with open_npz(path) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ResultsError(f"{path}: cannot be read as .npz ({type(exc).__name__}: {_first_line(exc)})") from None


def _as_bool(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes")
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return False
    return bool(x)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- saved audio --------------------------------------------------------------------------------
def safe_name(s: str) -> str:
    """The file-safe form of a condition id or clip id used for audio/ folders and files."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in str(s))


MAX_AUDIO_NAME = 120  # characters of a saved clip's file stem (file systems allow 255 bytes)


def audio_path(run_dir: Path, model: str, condition_id: str, clip_id: str) -> Path:
    """Where ``--save-audio`` writes one perturbed clip:
    ``audio/<model>/<condition>/<clip>.wav`` with file-safe names. A clip id that already ends in
    an audio extension keeps it once (``Yabc.wav`` → ``Yabc.wav``, not ``Yabc.wav.wav``); an
    empty or very long clip id is shortened to a stable name carrying its hash."""
    import hashlib

    stem = safe_name(clip_id)
    for ext in (".wav", ".flac", ".mp3", ".ogg"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    if not stem.strip("._") or len(stem) > MAX_AUDIO_NAME:
        digest = hashlib.sha256(str(clip_id).encode("utf-8")).hexdigest()[:16]
        stem = f"{stem[:40]}~{digest}" if stem.strip("._") else f"clip~{digest}"
    return Path(run_dir) / AUDIO_DIR / safe_name(model) / safe_name(condition_id) / f"{stem}.wav"


# --- the reader the report uses -----------------------------------------------------------------
@dataclass
class RunResult:
    """One run folder: ``info`` is run.json (checked), ``metrics`` the tidy rows of metrics.csv;
    per_clip.csv, per_class.csv and scores.npz are read on first use."""

    path: Path
    info: dict
    metrics: "object"  # pandas.DataFrame
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def run_info(self) -> RunInfo:
        return RunInfo(self.path / RUN_JSON, self.info)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    @property
    def models(self) -> list[str]:
        return list(self.info["models"])

    @property
    def conditions(self) -> list[dict]:
        return list(self.info["conditions"])

    @property
    def data(self) -> dict:
        return dict(self.info.get("data") or {})

    def trust(self, model: str, condition: str) -> dict:
        return dict(((self.info.get("trust") or {}).get(model) or {}).get(condition) or {})

    @cached_property
    def per_clip(self):
        df = read_table(self.path / PER_CLIP_CSV, PER_CLIP_REQUIRED)
        self._check_run_id(df, PER_CLIP_CSV)
        return df

    @cached_property
    def per_class(self):
        df = read_table(self.path / PER_CLASS_CSV, PER_CLASS_COLUMNS)
        self._check_run_id(df, PER_CLASS_CSV)
        return df

    @cached_property
    def perturbation_spectrum(self):
        """perturbation_spectrum.csv (the attacks' footprints), or None when the run has none."""
        path = self.path / PERTURBATION_SPECTRUM_CSV
        if not path.exists():
            return None
        df = read_table(path, ("run_id", "model", "condition", "band", "segment", "relative_db"))
        self._check_run_id(df, PERTURBATION_SPECTRUM_CSV)
        return df

    @cached_property
    def scores(self) -> dict:
        return read_scores(self.path / SCORES_NPZ)

    def histogram(self, model: str, condition: str):
        """The (2, 20) clean/perturbed score histogram, or None when the run did not store it."""
        h = self.scores.get(hist_key(model, condition))
        if h is None:
            return None
        if h.ndim != 2 or h.shape[0] != 2:
            raise ResultsError(
                f"{self.path / SCORES_NPZ}: {hist_key(model, condition)} has shape {tuple(h.shape)}, expected (2, bins)"
            )
        return h

    def audio_files(self) -> list[tuple[str, str, Path]]:
        """(model, condition id, path) of every WAV under audio/<model>/<condition>/, sorted
        (folder names mapped back to the model names and condition ids of run.json)."""
        root = self.path / AUDIO_DIR
        if not root.is_dir():
            return []
        ids: Dict[str, str] = {}
        for c in self.conditions:
            ids.setdefault(safe_name(str(c["id"])), str(c["id"]))
            ids[str(c["id"])] = str(c["id"])
        models = {safe_name(m): m for m in self.models}
        out = []
        for wav in sorted(root.glob("*/*/*.wav")):
            model = models.get(wav.parent.parent.name, wav.parent.parent.name)
            out.append((model, ids.get(wav.parent.name, wav.parent.name), wav))
        return out

    def _check_run_id(self, df, name: str) -> None:
        ids = set(df["run_id"].unique()) if len(df) else set()
        if ids and ids != {self.run_id}:
            other = sorted(ids - {self.run_id})
            raise ResultsError(
                f"{self.path / name}: rows carry run_id {', '.join(other[:3])} but run.json says "
                f"{self.run_id} (results folder edited by hand?)"
            )


def load_run(path: Path | str, *, require_tables: bool = True) -> RunResult:
    """Read and check one run folder (run.json, and metrics.csv when ``require_tables`` or the
    run says it is complete). An incomplete run without tables gets an empty metrics frame."""
    import pandas as pd

    path = Path(path)
    info = read_run_info(path)
    if not (path / METRICS_CSV).exists() and not info.complete and not require_tables:
        return RunResult(path=path, info=info.raw, metrics=pd.DataFrame(columns=list(METRICS_COLUMNS)))
    metrics = read_table(path / METRICS_CSV, METRICS_COLUMNS)
    run = RunResult(path=path, info=info.raw, metrics=metrics)
    check_metrics_match_run(run)
    return run


def check_metrics_match_run(run: RunResult) -> None:
    """metrics.csv must hold exactly the run's models and conditions, one row per metric."""
    m = run.metrics
    where = run.path / METRICS_CSV
    hint = "(results folder edited by hand?)"
    run._check_run_id(m, METRICS_CSV)
    models = set(run.models)
    seen_models = set(m["model"].unique())
    if seen_models - models:
        raise ResultsError(
            f"{where}: rows for model(s) {', '.join(sorted(seen_models - models))} not listed in run.json {hint}"
        )
    listed = [str(c["id"]) for c in run.conditions]
    summaries = {str(c.get("id")): c for c in (run.info.get("summaries") or []) if isinstance(c, dict)}
    allowed = set(listed) | {CLEAN} | set(summaries)
    seen_conds = set(m["condition"].unique())
    if seen_conds - allowed:
        raise ResultsError(
            f"{where}: rows for condition(s) {', '.join(sorted(seen_conds - allowed))} not listed in run.json {hint}"
        )
    present = set(zip(m["model"], m["condition"]))
    for model in run.models:
        for cond in listed:
            if (model, cond) not in present:
                raise ResultsError(f"{where}: no rows for model {model} under condition {cond} {hint}")
    dup = m.duplicated(["model", "condition", "metric"], keep=False)
    if dup.any():
        r = m[dup].iloc[0]
        raise ResultsError(f"{where}: metric {r['metric']} appears twice for {r['model']} / {r['condition']} {hint}")
    by_id = {**summaries, **{str(c["id"]): c for c in run.conditions}}
    for (cond, pert), _ in m.groupby(["condition", "perturbation"]):
        expected = CLEAN if cond == CLEAN else str(by_id[cond].get("perturbation", pert))
        if pert != expected:
            raise ResultsError(
                f"{where}: condition {cond} has perturbation {pert!r} but run.json says {expected!r} {hint}"
            )


def read_sharpness(run_dir: Path | str):
    """sharpness.csv of a sharpness run folder."""
    return read_table(Path(run_dir) / SHARPNESS_CSV, ("run_id", "model", "measure", "rho", "value"))
