"""Hostile inputs of the results side (issue 19): run options, sweep files, stored units, run.json,
--save-logits and verify-run. Appended to :data:`hostile_cases.CASES` (see the end of
tests/hostile_cases.py), so ``tests/test_hostile_inputs.py`` checks each against the common
contract (exit != 0, one stderr line naming the file or value and the problem, no traceback, no
run marked complete, every earlier file byte-for-byte unchanged) and the docs table shows it.

Behaviours that end in success instead (a stale lock holding a junk pid is taken over, a
400-character clip id gets a shortened audio file name, a failed recompute keeps the run
complete) are ordinary tests in tests/test_results_hardening.py.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List

import numpy as np

from hostile_cases import CKPT, MODEL, N_CLIPS, OUT, SHARD, Case, Invocation, Workspace, run_args


# -- run options -----------------------------------------------------------------------------------
def _opt(*extra: str, expect: List[str]):
    def build(ws: Workspace) -> Invocation:
        return Invocation(run_args(*extra), expect)

    return build


def _empty_clip_id(ws: Workspace) -> Invocation:
    names = np.array([b""] + [f"Yclip{i:03d}.wav".encode() for i in range(1, N_CLIPS)], dtype="S16")
    ws.write_h5("empty_id.h5", audio_name=names)
    return Invocation(run_args("--save-audio", "2", data="empty_id.h5"), ["empty_id.h5", "empty"])


# -- sweep files -----------------------------------------------------------------------------------
_SWEEP_HEAD = f"name: s\nmodels: [{MODEL}]\ndata: {SHARD}\nlimit: 2\n"


def _sweep(text: bytes | str, expect: List[str]):
    def build(ws: Workspace) -> Invocation:
        p = ws.path("s.yaml")
        p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return Invocation(["sweep", "s.yaml", "--dry-run", "--out", OUT], ["s.yaml", *expect])

    return build


def _sweep_bomb_text() -> str:
    levels = ", ".join(f"0.{i:03d}" for i in range(1, 101))
    steps = ", ".join(str(i) for i in range(1, 101))
    return (_SWEEP_HEAD + "perturbations:\n  - kind: pgd\n"
            f"    eps: [{levels}]\n    steps: [{steps}]\n    step_size: [{levels}]\n    restarts: [{steps}]\n")


# -- stored units of the earlier run (resume recomputes the tables from them) ------------------------
def _unit(ws: Workspace):
    return next((ws.earlier_run / "units" / MODEL.replace("/", "_") / "c000").glob("*-*.npz"))


def _resume(ws: Workspace) -> List[str]:
    return run_args("--run-id", ws.earlier_run.name, "--resume")


def _unit_edit(kind: str) -> Callable[[Workspace], Invocation]:
    def build(ws: Workspace) -> Invocation:
        unit = _unit(ws)
        if kind == "truncated":
            unit.write_bytes(unit.read_bytes()[:300])
            expect = ["damaged"]
        elif kind == "directory":
            unit.unlink()
            unit.mkdir()
            (unit / "x").write_text("a folder named like a unit\n")
            expect = ["not a regular file"]
        else:
            with np.load(unit, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if kind == "logits-shape":
                arrays["logits"] = arrays["logits"][:, :10]
                expect = ["logits has shape", "(4, 10)"]
            elif kind == "missing-key":
                del arrays["bad_input"]
                expect = ["lacks 'bad_input'"]
            elif kind == "object-array":
                arrays["logits"] = np.array([None] * len(arrays["logits"]), dtype=object)
                expect = ["damaged"]
            else:  # identity of another run (as a unit copied in from a --seed 7 run)
                ident = json.loads(str(arrays["_identity"][()]))
                ident["config_hash"] = "7" * 64
                arrays["_identity"] = np.asarray(json.dumps(ident, sort_keys=True))
                expect = ["belongs to another run", "7777777"]
            with open(unit, "wb") as f:
                np.savez(f, **arrays)  # an object array is pickled into the file
        return Invocation(_resume(ws), [unit.name, *expect])

    return build


# -- run.json of the wrong shape: report, verify-run and run --resume refuse it alike ----------------
_RUN_JSON_EDITS = {
    "list": (lambda m: [], ["expected a JSON object, got list"]),
    "data-type": (lambda m: {**m, "data": "s.h5"}, ["'data' must be an object, got str"]),
    "trust-type": (lambda m: {**m, "trust": [1, 2]}, ["'trust' must be an object, got list"]),
    "models-type": (lambda m: {**m, "models": ["toy-cnn"]}, ["'models' must be an object, got list"]),
    "no-conditions": (lambda m: {k: v for k, v in m.items() if k != "conditions"}, ["missing key(s) conditions"]),
    "bootstrap-text": (lambda m: {**m, "config": {**m["config"], "bootstrap": "lots"}},
                       ["config.bootstrap must be an integer", "'lots'"]),
}


def _run_json(edit: str, command: str) -> Callable[[Workspace], Invocation]:
    def build(ws: Workspace) -> Invocation:
        change, expect = _RUN_JSON_EDITS[edit]
        run = ws.earlier_run if command == "resume" else ws.edited_copy("edited")
        meta = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps(change(meta)))
        rel = str(run.relative_to(ws.root))
        argv = {"report": ["report", rel, "--format", "csv"], "verify-run": ["verify-run", rel],
                "resume": _resume(ws)}[command]
        return Invocation(argv, ["run.json", *expect])

    return build


# -- predict --save-logits -------------------------------------------------------------------------
def _save_logits(where: str) -> Callable[[Workspace], Invocation]:
    def build(ws: Workspace) -> Invocation:
        if where == "run-folder":
            target = str((ws.earlier_run / "scores.npz").relative_to(ws.root))
            expect = ["scores.npz", "run folder"]
        else:
            ws.path("mine.npz").write_bytes(b"an earlier file of the user\n")
            target, expect = "mine.npz", ["mine.npz", "--overwrite"]
        return Invocation(["predict", "--model", MODEL, "--checkpoint", CKPT, SHARD, "--limit", "2",
                           "--save-logits", target], expect)

    return build


# -- verify-run ------------------------------------------------------------------------------------
def _verify_data_edited(ws: Workspace) -> Invocation:
    import h5py

    run = ws.edited_copy("edited")
    with h5py.File(ws.path(SHARD), "r+") as f:  # 1,000 samples of the shard the run read
        w = f["waveform"]
        w[1, :1000] = w[1, :1000] // 2 + 3
    return Invocation(["verify-run", str(run.relative_to(ws.root))], ["verification failed", SHARD, "sha256"])


def _verify_data_missing(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    meta = json.loads((run / "run.json").read_text())
    meta["data"]["shards"][0]["abs_path"] = "/nonexistent/" + SHARD  # the run was made on another machine
    (run / "run.json").write_text(json.dumps(meta))
    os.rename(ws.path(SHARD), ws.path("moved-away.h5"))
    return Invocation(["verify-run", str(run.relative_to(ws.root))], ["unverified", SHARD, "cannot be found", "--skip-data"])


def _verify_checkpoint_root(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    meta = json.loads((run / "run.json").read_text())
    meta["models"][MODEL]["provenance"]["checkpoint"] = "/"
    (run / "run.json").write_text(json.dumps(meta))
    return Invocation(["verify-run", str(run.relative_to(ws.root)), "--skip-data"],
                      ["verification failed", "checkpoint / is a file-system root", "not hashed"])


def _verify_per_clip_column(ws: Workspace) -> Invocation:
    import pandas as pd

    run = ws.edited_copy("edited")
    pc = pd.read_csv(run / "per_clip.csv")
    pc.drop(columns=["linf"]).to_csv(run / "per_clip.csv", index=False)
    return Invocation(["verify-run", str(run.relative_to(ws.root))], ["per_clip.csv", "missing column(s) linf"])


def _verify_clean_linf(ws: Workspace) -> Invocation:
    import pandas as pd

    run = ws.edited_copy("edited")
    pc = pd.read_csv(run / "per_clip.csv")
    pc["linf"] = pc["linf"].astype(float)
    pc.loc[1, "linf"] = 0.5
    pc.to_csv(run / "per_clip.csv", index=False)
    return Invocation(["verify-run", str(run.relative_to(ws.root))], ["verification failed", "linf: stored 0.5"])


def _verify_unit_other_run(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    unit = next((run / "units" / MODEL / "c000").glob("*-*.npz"))
    with np.load(unit) as z:
        arrays = {k: z[k] for k in z.files}
    ident = json.loads(str(arrays["_identity"][()]))
    arrays["_identity"] = np.asarray(json.dumps({**ident, "config_hash": "7" * 64}, sort_keys=True))
    np.savez(unit, **arrays)
    return Invocation(["verify-run", str(run.relative_to(ws.root))], ["verification failed", "belongs to another run"])


def _verify_scores_shape(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    with np.load(run / "scores.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[f"logits__{MODEL}__none"] = arrays[f"logits__{MODEL}__none"][:, :3]
    np.savez(run / "scores.npz", **arrays)
    return Invocation(["verify-run", str(run.relative_to(ws.root))], ["scores.npz", f"logits__{MODEL}__none", "(4, 3)"])


CASES: List[Case] = [
    Case("seed-negative", "options", "`--seed -1`", "refused: the seed is an integer in 0..2^63-1",
         _opt("--seed", "-1", expect=["--seed", "-1"])),
    Case("device-meta", "options", "`--device meta`", "refused: not a device audiobench runs on",
         _opt("--device", "meta", expect=["meta"])),
    Case("run-id-300-chars", "output", "a 300-character `--run-id`", "refused: at most 200 characters",
         _opt("--run-id", "r" * 300, expect=["--run-id is 300 characters"])),
    Case("run-id-newline", "output", "a `--run-id` holding a newline", "refused: no control characters",
         _opt("--run-id", "a\nb", expect=["--run-id", "control characters"])),
    Case("save-audio-negative", "options", "`--save-audio -3`", "refused: clips per condition must be >= 0",
         _opt("--save-audio", "-3", expect=["--save-audio", "-3"])),
    Case("save-audio-empty-clip-id", "data", "`--save-audio` on a shard whose first clip id is empty",
         "refused when the shard is opened (clip ids must not be empty)", _empty_clip_id),
    Case("sweep-latin1", "options", "sweep file saved as Latin-1", "refused: not UTF-8, byte named",
         _sweep(_SWEEP_HEAD.encode() + b"description: caf\xe9\nperturbations:\n  - kind: gaussian\n    snr_db: [20]\n",
                ["not UTF-8"])),
    Case("sweep-base-without-kind", "options", "sweep entry with `base: {snr_db: 20}` (no kind)",
         "refused: the base must name its kind",
         _sweep(_SWEEP_HEAD + "perturbations:\n  - kind: pgd\n    eps: [0.001]\n    base: {snr_db: 20}\n",
                ["base must name its kind"])),
    Case("sweep-kind-list", "options", "sweep entry with `kind: [gaussian]`", "refused: kind must be one name",
         _sweep(_SWEEP_HEAD + "perturbations:\n  - kind: [gaussian]\n    snr_db: [20]\n", ["kind must be one perturbation name"])),
    Case("sweep-duplicate-key", "options", "sweep entry giving `snr_db` twice", "refused (YAML would keep the last)",
         _sweep(_SWEEP_HEAD + "perturbations:\n  - kind: gaussian\n    snr_db: [20]\n    snr_db: [10]\n", ["snr_db", "twice"])),
    Case("sweep-grid-bomb", "options", "2 KB sweep file: four 100-value lists in one pgd entry (10^8 cells)",
         "`sweep --dry-run` refuses at once, counting the grid before expanding it (`--max-cells`)",
         _sweep(_sweep_bomb_text(), ["more than 10,000 conditions", "--max-cells"])),
    Case("resume-unit-truncated", "results", "resume with a stored unit cut to 300 bytes",
         "refused: the unit is named as damaged; remove it and resume", _unit_edit("truncated")),
    Case("resume-unit-directory", "results", "resume with a folder where a unit file should be", "refused",
         _unit_edit("directory")),
    Case("resume-unit-logits-shape", "results", "resume with a unit whose logits have 10 columns",
         "refused: not one row per clip of its range", _unit_edit("logits-shape")),
    Case("resume-unit-missing-key", "results", "resume with a unit lacking `bad_input`", "refused, key named",
         _unit_edit("missing-key")),
    Case("resume-unit-object-array", "results", "resume with a unit holding an object (pickled) array",
         "refused: never unpickled", _unit_edit("object-array")),
    Case("resume-unit-other-run", "results", "resume with a unit of another run (e.g. copied from a `--seed 7` run)",
         "refused: the unit's identity names another config hash", _unit_edit("other-run")),
    *[Case(f"run-json-{edit}-{cmd}", "results", f"run.json edited: {what} (`{cmd if cmd != 'resume' else 'run --resume'}`)",
           "refused: run.json named with the field and its type", _run_json(edit, cmd))
      for edit, what in (("list", "`[]`"), ("data-type", "`data` a string"), ("trust-type", "`trust` a list"),
                         ("models-type", "`models` a list"), ("no-conditions", "no `conditions`"),
                         ("bootstrap-text", "`bootstrap: \"lots\"`"))
      for cmd in ("report", "verify-run", "resume")],
    Case("save-logits-into-run", "output", "`predict --save-logits results/<run>/scores.npz`",
         "refused before the model loads: never inside a run folder", _save_logits("run-folder")),
    Case("save-logits-existing", "output", "`predict --save-logits` naming an existing file", "refused without `--overwrite`",
         _save_logits("existing")),
    Case("verify-data-edited", "results", "1,000 samples of the run's shard changed after the run",
         "`verify-run` fails: the shard's sha256 differs", _verify_data_edited),
    Case("verify-data-missing", "results", "the run's shard is not on this machine",
         "`verify-run` exits 3, unverified (`--skip-data` accepts it)", _verify_data_missing),
    Case("verify-checkpoint-root", "results", "run.json naming `/` as the model's checkpoint",
         "`verify-run` fails at once: not a regular file or bounded model folder, never walked", _verify_checkpoint_root),
    Case("verify-per-clip-column", "results", "per_clip.csv lacking a column (e.g. from an older audiobench)",
         "`verify-run` refuses, column named", _verify_per_clip_column),
    Case("verify-clean-linf-edited", "results", "per_clip.csv `linf` of a clean clip set to 0.5",
         "`verify-run` fails: differs from scores.npz's geometry", _verify_clean_linf),
    Case("verify-unit-other-run", "results", "a unit of another run in the run folder",
         "`verify-run` fails: the unit's identity names another run", _verify_unit_other_run),
    Case("verify-scores-shape", "results", "scores.npz logits with 3 columns", "`verify-run` refuses, array and shape named",
         _verify_scores_shape),
]

# Behaviours on such input that end in a successful run or leave a run as it was (same shape as
# hostile_cases.ACCEPTED; tested in tests/test_results_hardening.py)
ACCEPTED_ROWS: List[tuple] = [
    ("a lock file holding a pid of 2^40, `[1]` or `abc`", "not a valid owner: taken over as stale, the run resumes"),
    ("`--save-audio` on a 400-character clip id", "the WAV gets a shortened, stable name carrying the id's hash"),
    ("a recompute of a complete run that fails (disk full, SIGKILL)", "one line (disk full); `run.json` stays "
     "`complete: true` and every earlier file byte-for-byte as it was"),
    ("`verify-run` on a folder whose data or model is not on this machine", "exit 3, unverified, one line naming "
     "what cannot be found (`--skip-data`, `--skip-models`, `--skip-latent` accept it)"),
]
