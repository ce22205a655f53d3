"""Result folders: the schema (files, columns, run.json), provenance, the run lock, the tables
(arrays → rows) and verify-run.

    results/schema.py      the one owner of the result schema: readers and writers
    results/tables.py      one model's rows of metrics.csv, per_clip.csv, per_class.csv from arrays
    results/provenance.py  versions, git commit, device name, config hash
    results/folder.py      output-directory checks and the single-writer lock
    results/verify.py      verify-run: recompute a finished run's tables and check its hashes

Files are written with the one atomic writer, :mod:`audiobench.fileio` (re-exported here).
"""

from __future__ import annotations

import os  # noqa: F401  (tests patch os functions through this module)

from audiobench.fileio import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_npz,
    atomic_write_parquet,
    atomic_write_text,
    sha256_file,
)
from audiobench.results.folder import check_writable_parent, ensure_writable_dir, run_lock
from audiobench.results.provenance import config_hash, device_name, git_commit, versions
from audiobench.results.schema import (
    CLEAN,
    LOCK_FILE,
    METRICS_COLUMNS,
    RUN_JSON,
    RunInfo,
    RunResult,
    audio_path,
    load_run,
    read_run_info,
    safe_name,
    write_run_info,
    write_tables,
)

__all__ = [
    "CLEAN", "LOCK_FILE", "METRICS_COLUMNS", "RUN_JSON", "RunInfo", "RunResult", "atomic_write_bytes",
    "atomic_write_csv", "atomic_write_json", "atomic_write_npz", "atomic_write_parquet", "atomic_write_text",
    "audio_path", "check_writable_parent", "config_hash", "device_name", "ensure_writable_dir", "git_commit",
    "load_run", "read_run_info", "run_lock", "safe_name", "sha256_file", "versions", "write_run_info",
    "write_tables",
]
