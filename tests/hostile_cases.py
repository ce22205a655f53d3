"""The table of hostile and broken inputs: one source for the tests and docs/bad-input.md.

Each :class:`Case` builds its bad input inside a :class:`Workspace` (a folder holding a good tiny
shard, a good toy-cnn checkpoint and an earlier, complete run folder in ``results/``) and returns
the command line that feeds it to audiobench, with the words its one-line error must contain.
``tests/test_hostile_inputs.py`` runs every case and checks the common contract (exit code != 0,
exactly one stderr line naming the file or value and the problem, no traceback, no run folder
marked complete, earlier results byte-for-byte untouched); ``scripts/gen_bad_input_table.py``
turns the same table into the tables of docs/bad-input.md.

Every command runs with the workspace as the current folder and relative paths, so the earlier
run's resolved config (and its config hash) is the same in every copy of the workspace.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

SAMPLE_RATE = 16000
NUM_SAMPLES = 16000  # 1 s clips
N_CLIPS = 6
SHARD = "tiny.h5"
CKPT = "toy.pt"
OUT = "results"
MODEL = "toy-cnn"
# the small, fast options every `run` in the table uses
RUN_FAST = ["--limit", "4", "--batch-size", "4", "--bootstrap", "20", "--no-trust-checks", "--quiet"]


def run_args(*extra: str, data: str = SHARD, ckpt: Optional[str] = CKPT, out: str = OUT) -> List[str]:
    """``run`` with the workspace's model, data, checkpoint and output, plus ``extra``."""
    args = ["run", "--model", MODEL, "--data", data, "--out", out, *RUN_FAST]
    if ckpt is not None:
        args += ["--checkpoint", ckpt]
    return args + list(extra)


# --- the workspace -----------------------------------------------------------------------------
class Workspace:
    """A folder with good inputs and an earlier complete run; cases add their bad input to it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.home = self.root / "home"  # AUDIOBENCH_HOME for every command of the case

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def earlier_run(self) -> Path:
        runs = [p for p in (self.root / OUT).iterdir() if (p / "run.json").exists()]
        assert len(runs) == 1, runs
        return runs[0]

    # -- shards ----------------------------------------------------------------------------------
    def write_h5(self, rel: str, *, waveform=None, target=None, audio_name=None, sample_rate=SAMPLE_RATE,
                 drop: Sequence[str] = ()) -> Path:
        """A PANNs-layout shard written with raw h5py; ``None`` arrays get good defaults."""
        import h5py

        rng = np.random.default_rng(7)
        n = N_CLIPS
        if waveform is None:
            waveform = rng.integers(-20000, 20001, size=(n, NUM_SAMPLES), dtype=np.int16)
        n = len(waveform)
        if target is None:
            target = np.zeros((n, 527), dtype=bool)
            target[:, :3] = rng.random((n, 3)) < 0.5
            target[0, :3] = [True, False, True]
            target[1, :3] = [False, True, False]
        if audio_name is None:
            audio_name = np.array([f"Yclip{i:03d}.wav".encode() for i in range(n)], dtype="S16")
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(p, "w") as f:
            if sample_rate is not None:
                f.attrs["sample_rate"] = sample_rate
            for key, value in (("audio_name", audio_name), ("waveform", waveform), ("target", target)):
                if key not in drop:
                    f.create_dataset(key, data=value)
        return p

    def float_shard(self, rel: str, edit: Callable[[np.ndarray], None]) -> Path:
        """A float32 shard of the good clips with ``edit`` applied to the waveform array."""
        rng = np.random.default_rng(7)
        wav = (rng.uniform(-0.6, 0.6, size=(N_CLIPS, NUM_SAMPLES))).astype(np.float32)
        edit(wav)
        return self.write_h5(rel, waveform=wav)

    def manifest(self, rel: str, shard_path: str, sha256: Optional[str] = None) -> Path:
        """A hand-written manifest listing one shard at ``shard_path`` (relative to the data root)."""
        doc = {
            "format": "audiobench-manifest", "version": 1, "name": Path(rel).stem,
            "sample_rate": SAMPLE_RATE, "clip_seconds": NUM_SAMPLES / SAMPLE_RATE, "num_samples": NUM_SAMPLES,
            "n_clips": N_CLIPS, "clip_list_hash": "0" * 64, "vocab_hash": "0" * 64,
            "vocabulary": {"size": 527, "hash": "0" * 64, "entries": []},
            "shards": [{"path": shard_path, "sha256": sha256, "n_clips": N_CLIPS}],
        }
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=1))
        return p

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, "object"]:
        import torch

        return torch.load(self.path(CKPT), map_location="cpu", weights_only=True)

    def save_ckpt(self, rel: str, obj) -> Path:
        import torch

        torch.save(obj, self.path(rel))
        return self.path(rel)

    # -- audio for `data pack` -------------------------------------------------------------------
    def audio_dir(self, rel: str, bad_name: str, bad_bytes: bytes) -> Path:
        import soundfile as sf

        d = self.path(rel)
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / "good.wav", 0.3 * np.sin(np.arange(8000) / 8000 * 2 * np.pi * 300), 8000)
        (d / bad_name).write_bytes(bad_bytes)
        (d / "labels.csv").write_text(f"file,labels\ngood.wav,Sine wave\n{bad_name},Sine wave\n")
        return d

    # -- results ---------------------------------------------------------------------------------
    def edited_copy(self, rel: str) -> Path:
        """A copy of the earlier run folder (to be edited), outside ``results/``."""
        dst = self.path(rel) / self.earlier_run.name
        shutil.copytree(self.earlier_run, dst)
        return dst


def build_workspace(root: Path, invoke: Callable[[List[str]], "object"]) -> Workspace:
    """Write the good inputs and make the earlier run with ``invoke(argv)`` (cwd = ``root``)."""
    import torch

    from audiobench.models import load_model

    ws = Workspace(root)
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.write_h5(SHARD)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = load_model(MODEL, weights="random")
    torch.save(model.net.state_dict(), ws.path(CKPT))
    res = invoke(run_args())
    assert res.exit_code == 0, (res.stdout, res.stderr)
    meta = json.loads((ws.earlier_run / "run.json").read_text())
    assert meta["complete"] is True
    return ws


class _Payload:
    """Unpickling calls ``open(marker, "w")``: a stand-in for any code hidden in a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- the cases ----------------------------------------------------------------------------------
@dataclass
class Invocation:
    argv: List[str]
    expect: List[str]  # substrings of the single stderr line (file or value, and the problem)
    env: Dict[str, str] = field(default_factory=dict)
    after: Optional[Callable[[Workspace], None]] = None  # extra checks once the command has run


@dataclass(frozen=True)
class Case:
    id: str
    area: str  # data, pack, manifest, weights, options, output, results
    bad_input: str  # docs/bad-input.md: what the user gave
    response: str  # docs/bad-input.md: what audiobench does
    build: Callable[[Workspace], Invocation]
    subprocess: bool = False  # run through `python -m audiobench` (real stderr) instead of CliRunner
    needs_non_root: bool = False


def _truncated(ws: Workspace) -> Invocation:
    data = ws.path(SHARD).read_bytes()
    ws.path("cut.h5").write_bytes(data[: len(data) // 2])
    return Invocation(run_args(data="cut.h5"), ["cut.h5", "truncated or corrupt"])


def _corrupt_header(ws: Workspace) -> Invocation:
    data = bytearray(ws.path(SHARD).read_bytes())
    data[8:520] = bytes(np.random.default_rng(3).integers(0, 256, 512, dtype=np.uint8))  # superblock garbled
    ws.path("garbled.h5").write_bytes(bytes(data))
    return Invocation(run_args(data="garbled.h5"), ["garbled.h5", "not a readable HDF5 file"])


def _not_hdf5(ws: Workspace) -> Invocation:
    ws.path("notes.h5").write_text("this is a text file, not HDF5\n")
    return Invocation(["data", "info", "notes.h5"], ["notes.h5", "not a readable HDF5 file"])


def _missing(key: str, cmd: str):
    def build(ws: Workspace) -> Invocation:
        ws.write_h5(f"no_{key}.h5", drop=[key])
        argv = run_args(data=f"no_{key}.h5") if cmd == "run" else ["data", "verify", f"no_{key}.h5"]
        return Invocation(argv, [f"no_{key}.h5", f"'{key}' is missing"])

    return build


def _wav_float64(ws: Workspace) -> Invocation:
    ws.write_h5("f64.h5", waveform=np.zeros((N_CLIPS, NUM_SAMPLES), dtype=np.float64))
    return Invocation(run_args(data="f64.h5"), ["f64.h5", "'waveform' dtype is float64"])


def _target_float(ws: Workspace) -> Invocation:
    ws.write_h5("tf.h5", target=np.zeros((N_CLIPS, 527), dtype=np.float32))
    return Invocation(run_args(data="tf.h5"), ["tf.h5", "'target' dtype is float32"])


def _label_dim(ws: Workspace) -> Invocation:
    ws.write_h5("dim10.h5", target=np.ones((N_CLIPS, 10), dtype=bool))
    return Invocation(run_args(data="dim10.h5"), ["dim10.h5", "label dimension 10 != vocabulary size 527"])


def _bad_samples(kind: str):
    values = {"nan": np.nan, "inf": np.inf, "range": 1.5}

    def build(ws: Workspace) -> Invocation:
        def edit(w):
            w[1, 100] = values[kind]

        ws.float_shard(f"bad_{kind}.h5", edit)
        return Invocation(run_args(data=f"bad_{kind}.h5"), ["Yclip001.wav", "outside [-1, 1]", "--on-bad-clip skip"])

    return build


def _zero_clips(ws: Workspace) -> Invocation:
    ws.write_h5("empty.h5", waveform=np.zeros((0, NUM_SAMPLES), dtype=np.int16), target=np.zeros((0, 527), bool),
                audio_name=np.zeros((0,), dtype="S16"))
    return Invocation(run_args(data="empty.h5"), ["empty.h5", "zero clips"])


def _zero_samples(ws: Workspace) -> Invocation:
    ws.write_h5("nosamples.h5", waveform=np.zeros((N_CLIPS, 0), dtype=np.int16))
    return Invocation(["data", "verify", "nosamples.h5"], ["nosamples.h5", "zero samples per clip"])


def _pack(bad_name: str, bad_bytes: bytes, problem: str):
    def build(ws: Workspace) -> Invocation:
        d = ws.audio_dir("audio", bad_name, bad_bytes)
        argv = ["data", "pack", "--audio-dir", str(d.relative_to(ws.root)), "--labels", "audio/labels.csv",
                "--out", "packed.h5", "--sample-rate", "8000", "--clip-seconds", "1"]

        def after(ws: Workspace) -> None:
            assert not ws.path("packed.h5").exists(), "pack wrote a shard despite a bad file"

        return Invocation(argv, [bad_name, problem, "nothing written"], after=after)

    return build


def _escape(kind: str):
    def build(ws: Workspace) -> Invocation:
        root = ws.path("dataroot")
        root.mkdir()
        if kind == "dotdot":
            rel, expect = "../tiny.h5", ["'../tiny.h5'", "without '..'"]
        elif kind == "absolute":
            rel, expect = str(ws.path(SHARD).resolve()), ["must be relative to the data root"]
        else:  # a symlink inside the root pointing outside it
            os.symlink(ws.path(SHARD).resolve(), root / "link.h5")
            rel, expect = "link.h5", ["'link.h5'", "outside the data root"]
        ws.manifest("dataroot/m.json", rel)
        return Invocation(run_args(data="dataroot/m.json"), ["m.json", *expect])

    return build


def _shard_sha(ws: Workspace) -> Invocation:
    ws.manifest("m_sha.json", SHARD, sha256="ab" * 32)
    return Invocation(["data", "verify", "m_sha.json"], [SHARD, "sha256", "does not match manifest"])


def _weights_sha(ws: Workspace) -> Invocation:
    # efficientat-mn04 pins the sha256 of its weight file; a cached file with other bytes is refused
    wdir = ws.home / "weights"
    wdir.mkdir(parents=True)
    ws.save_ckpt("fake.pt", {"model": {}})
    shutil.copy(ws.path("fake.pt"), wdir / "efficientat_mn04_as_mAP_432.pt")
    argv = ["run", "--model", "efficientat-mn04", "--data", SHARD, "--out", OUT, *RUN_FAST]
    return Invocation(argv, ["efficientat_mn04_as_mAP_432.pt", "does not match the expected"],
                      env={"AUDIOBENCH_OFFLINE": "1"})


def _ckpt_keys(kind: str):
    def build(ws: Workspace) -> Invocation:
        import torch

        sd = dict(ws.state_dict())
        if kind == "missing":
            del sd["classifier.bias"]
            expect = ["missing key 'classifier.bias'"]
        elif kind == "extra":
            sd["attacker.weight"] = torch.zeros(3)
            expect = ["unexpected key 'attacker.weight'"]
        else:
            sd["classifier.weight"] = torch.zeros(527, 32)
            expect = ["'classifier.weight' has shape (527, 32), model expects (527, 64)"]
        ws.save_ckpt(f"ckpt_{kind}.pt", sd)
        return Invocation(run_args(ckpt=f"ckpt_{kind}.pt"), [f"ckpt_{kind}.pt", *expect])

    return build


def _pickle_payload(ws: Workspace) -> Invocation:
    marker = ws.path("PAYLOAD_RAN")
    ws.save_ckpt("evil.pt", {"model": ws.state_dict(), "extra": _Payload(marker)})

    def after(ws: Workspace) -> None:
        import torch

        assert not marker.exists(), "the pickle payload ran"
        # and the payload is live: an unsafe load does run it
        torch.load(ws.path("evil.pt"), map_location="cpu", weights_only=False)
        assert marker.exists()
        marker.unlink()

    return Invocation(run_args(ckpt="evil.pt"), ["evil.pt", "refused", "code payload"], after=after)


def _numpy_payload(ws: Workspace) -> Invocation:
    # numpy arrays are allowed in checkpoints (PANNs training files hold some); an object array
    # smuggling the payload is still refused
    marker = ws.path("NUMPY_PAYLOAD_RAN")
    ws.save_ckpt("evil_np.pt", {"model": ws.state_dict(), "iteration": np.int64(3),
                                "sampler": np.array([_Payload(marker)], dtype=object)})

    def after(ws: Workspace) -> None:
        import torch

        assert not marker.exists(), "the payload inside a numpy object array ran"
        torch.load(ws.path("evil_np.pt"), map_location="cpu", weights_only=False)  # the payload is live
        assert marker.exists()

    return Invocation(run_args(ckpt="evil_np.pt"), ["evil_np.pt", "refused"], after=after)


def _bad_safetensors(ws: Workspace) -> Invocation:
    # a header length far beyond the file: must not allocate or crash
    ws.path("bad.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    return Invocation(run_args(ckpt="bad.safetensors"), ["bad.safetensors", "not a readable safetensors file"])


def _not_a_checkpoint(ws: Workspace) -> Invocation:
    ws.path("junk.pt").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    return Invocation(run_args(ckpt="junk.pt"), ["junk.pt", "not a readable PyTorch checkpoint"])


def _unknown_model(ws: Workspace) -> Invocation:
    argv = ["run", "--model", "toy-cn", "--data", SHARD, "--out", OUT, *RUN_FAST]
    return Invocation(argv, ["'toy-cn'", "did you mean", "toy-cnn"])


def _unknown_noise(ws: Workspace) -> Invocation:
    return Invocation(run_args("--noise", "gausian", "--snr", "10"), ["'gausian'", "did you mean", "gaussian"])


def _level(noise: str, opt: str, value: str, expect: Sequence[str], extra: Sequence[str] = ()):
    def build(ws: Workspace) -> Invocation:
        return Invocation(run_args("--noise", noise, *extra, f"--{opt}", value), list(expect))

    return build


def _out_under_file(ws: Workspace) -> Invocation:
    ws.path("afile").write_text("a regular file\n")
    return Invocation(run_args(out="afile/sub"), ["afile", "output directory"])


def _out_readonly(ws: Workspace) -> Invocation:
    d = ws.path("locked_out")
    d.mkdir()
    d.chmod(0o500)

    def after(ws: Workspace) -> None:
        d.chmod(0o700)

    return Invocation(run_args(out="locked_out"), ["locked_out", "not writable"], after=after)


def _lock_held(ws: Workspace) -> Invocation:
    run = ws.earlier_run
    # a live process (this test's own) holds the run folder's lock
    (run / "lock").write_text(json.dumps({"pid": os.getpid(), "host": platform.node()}))
    return Invocation(run_args("--run-id", run.name, "--resume"),
                      [run.name, f"pid {os.getpid()}", "is writing this run folder"])


def _resume_other_config(ws: Workspace) -> Invocation:
    run = ws.earlier_run
    return Invocation(run_args("--run-id", run.name, "--seed", "7"), [run.name, "refusing to resume", "config differs"])


def _run_id_escape(ws: Workspace) -> Invocation:
    return Invocation(run_args("--run-id", "../escaped"), ["'../escaped'", "plain folder name"])


def _report_rows_deleted(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").write_text(lines[0])  # every row removed
    return Invocation(["report", str(run.relative_to(ws.root)), "--format", "csv"],
                      ["metrics.csv", "no rows for model toy-cnn", "edited by hand"])


def _report_run_id_edited(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text.replace(run.name, "some-other-run"))
    return Invocation(["report", str(run.relative_to(ws.root)), "--format", "md"],
                      ["metrics.csv", "some-other-run", "edited by hand"])


def _verify_value_edited(ws: Workspace) -> Invocation:
    import pandas as pd

    run = ws.edited_copy("edited")
    m = pd.read_csv(run / "metrics.csv")
    m.loc[m["metric"] == "mAP", "value"] = 0.999  # a better-looking number
    m.to_csv(run / "metrics.csv", index=False)
    return Invocation(["verify-run", str(run.relative_to(ws.root))],
                      ["verification failed", "toy-cnn/none/mAP value: stored 0.999"])


def _verify_scores_edited(ws: Workspace) -> Invocation:
    run = ws.edited_copy("edited")
    with np.load(run / "scores.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["clip_ids"] = arrays["clip_ids"][::-1].copy()  # clips swapped behind the run's back
    np.savez(run / "scores.npz", **arrays)
    return Invocation(["verify-run", str(run.relative_to(ws.root))], ["verification failed", "clip list hash"])


def _verify_checkpoint_changed(ws: Workspace) -> Invocation:
    # the earlier run recorded toy.pt's sha256; the file was replaced afterwards
    run = ws.edited_copy("edited")
    sd = ws.state_dict()
    sd["classifier.bias"] = sd["classifier.bias"] + 1
    ws.save_ckpt(CKPT, sd)
    return Invocation(["verify-run", str(run.relative_to(ws.root))],
                      ["verification failed", "toy-cnn", "checkpoint", "changed", "sha256"])


_NAN = "nan"
CASES: List[Case] = [
    Case("truncated-hdf5", "data", "HDF5 shard cut short (half its bytes)",
         "refused when opened: file named, 'truncated or corrupt'", _truncated, subprocess=True),
    Case("corrupt-hdf5", "data", "HDF5 shard with garbled superblock bytes", "refused when opened", _corrupt_header),
    Case("not-hdf5", "data", "text file named `.h5`", "refused: not a readable HDF5 file", _not_hdf5),
    Case("missing-waveform", "data", "shard without the `waveform` dataset", "refused, dataset named",
         _missing("waveform", "run")),
    Case("missing-target", "data", "shard without the `target` dataset", "refused, dataset named",
         _missing("target", "verify")),
    Case("waveform-float64", "data", "`waveform` stored as float64", "refused: int16 or float32 expected",
         _wav_float64),
    Case("target-float", "data", "`target` stored as float32", "refused: bool expected", _target_float),
    Case("label-dimension", "data", "`target` with 10 columns for a 527-class vocabulary",
         "refused: label dimension != vocabulary size", _label_dim),
    Case("nan-samples", "data", "NaN samples in a clip", "run stops at the clip (named); `--on-bad-clip skip` "
         "runs without it and marks it `bad_input` in per_clip.csv", _bad_samples("nan")),
    Case("inf-samples", "data", "infinite samples in a clip", "as NaN", _bad_samples("inf")),
    Case("out-of-range-samples", "data", "float samples outside [-1, 1]", "as NaN", _bad_samples("range")),
    Case("zero-clips", "data", "shard with zero clips", "refused: zero clips", _zero_clips),
    Case("zero-samples", "data", "shard whose clips have zero samples", "refused", _zero_samples),
    Case("pack-zero-length", "pack", "zero-byte audio file in `data pack`",
         "nothing written; file named (`--skip-bad` packs the rest)", _pack("empty.wav", b"", "cannot be decoded")),
    Case("pack-not-audio", "pack", "text file named `.wav` in `data pack`", "nothing written; file named",
         _pack("readme.wav", b"hello, not audio\n" * 20, "cannot be decoded")),
    Case("manifest-dotdot", "manifest", "manifest shard path with `..`", "refused before any file is opened",
         _escape("dotdot")),
    Case("manifest-absolute", "manifest", "manifest shard path that is absolute", "refused", _escape("absolute")),
    Case("manifest-symlink", "manifest", "manifest shard path that is a symlink leading out of the data root",
         "refused: resolved path is outside the data root", _escape("symlink")),
    Case("shard-sha256", "manifest", "shard whose sha256 differs from the manifest's (`data verify`)",
         "refused: corrupted, truncated or replaced", _shard_sha),
    Case("weights-sha256", "weights", "cached weight file whose sha256 differs from the pinned one",
         "refused; told to delete/replace it or pass `--checkpoint`", _weights_sha),
    Case("ckpt-missing-key", "weights", "checkpoint lacking a tensor", "refused, first missing key named",
         _ckpt_keys("missing")),
    Case("ckpt-extra-key", "weights", "checkpoint with an extra tensor", "refused, first unexpected key named",
         _ckpt_keys("extra")),
    Case("ckpt-bad-shape", "weights", "checkpoint with a mis-shaped tensor", "refused, key and both shapes named",
         _ckpt_keys("shape")),
    Case("ckpt-pickle-payload", "weights", "pickle checkpoint carrying code (runs `open()` when unpickled)",
         "refused by `weights_only` loading; the code never runs", _pickle_payload, subprocess=True),
    Case("ckpt-numpy-payload", "weights", "code hidden in a numpy object array inside a checkpoint",
         "refused: only plain numpy arrays and scalars are allowed besides tensors", _numpy_payload),
    Case("ckpt-bad-safetensors", "weights", "safetensors file with a corrupt header", "refused", _bad_safetensors),
    Case("ckpt-not-a-checkpoint", "weights", "random bytes as `--checkpoint`", "refused: not a readable checkpoint",
         _not_a_checkpoint),
    Case("unknown-model", "options", "misspelt model name", "refused with \"did you mean\" and the list",
         _unknown_model, subprocess=True),
    Case("unknown-perturbation", "options", "misspelt perturbation name", "refused with \"did you mean\"",
         _unknown_noise),
    Case("negative-eps", "options", "`--eps -0.001`", "refused: eps must be >= 0",
         _level("pgd", "eps", "-0.001", ["eps", "-0.001"])),
    Case("nan-snr", "options", "`--snr nan`", "refused: NaN level", _level("gaussian", "snr", _NAN, ["'nan'", "NaN"])),
    Case("zero-period", "options", "`--period 0`", "refused: period must be > 0",
         _level("occlusion", "period", "0", ["period_s", "0"], extra=("--pattern", "alternate"))),
    Case("junk-level", "options", "`--snr abc`", "refused: not a number",
         _level("gaussian", "snr", "abc", ["'abc'", "not a number"])),
    Case("limit-zero", "options", "`--limit 0`", "refused",
         lambda ws: Invocation(run_args("--limit", "0"), ["--limit", "0"])),
    Case("batch-size-zero", "options", "`--batch-size 0`", "refused",
         lambda ws: Invocation(run_args("--batch-size", "0"), ["--batch-size", "0"])),
    Case("out-under-file", "output", "`--out` below a regular file",
         "refused before any work: cannot create the folder",
         _out_under_file),
    Case("out-readonly", "output", "`--out` a folder without write permission", "refused: not writable",
         _out_readonly, needs_non_root=True),
    Case("run-id-escape", "output", "`--run-id ../escaped`", "refused: must be a plain folder name", _run_id_escape),
    Case("lock-held", "output", "a second run writing a run folder that a live process is writing",
         "refused: the lock holder's pid named", _lock_held),
    Case("resume-other-config", "output", "resuming a run folder with a different config",
         "refused: config hash differs, earlier units kept", _resume_other_config),
    Case("report-rows-deleted", "results", "metrics.csv rows deleted by hand",
         "`report` refuses: rows do not match run.json",
         _report_rows_deleted),
    Case("report-run-id-edited", "results", "metrics.csv rows carrying another run id", "`report` refuses",
         _report_run_id_edited),
    Case("verify-value-edited", "results", "a metric value edited by hand", "`verify-run` recomputes it and refuses",
         _verify_value_edited),
    Case("verify-scores-edited", "results", "scores.npz clip ids reordered", "`verify-run` refuses: clip-list hash",
         _verify_scores_edited),
    Case("verify-checkpoint-changed", "results", "checkpoint replaced after the run",
         "`verify-run` refuses: sha256 differs",
         _verify_checkpoint_changed),
]

# Behaviours on bad input that end in a successful run (tested in test_hostile_inputs.py too).
ACCEPTED: List[tuple] = [
    ("bad samples with `--on-bad-clip skip`", "the run completes without those clips; they are excluded from every "
     "metric (n_clips counts only the good ones) and marked `bad_input` in per_clip.csv"),
    ("non-finite model outputs", "clips with a NaN/inf logit are left out of every average and counted in "
     "metrics.csv (`nonfinite_clips`) and per_clip.csv (`nonfinite`)"),
    ("SIGINT / SIGTERM during a run", "stops after the current batch, keeps every finished batch, prints the "
     "resume command, exits 130; `--resume` completes with identical tables"),
    ("CUDA out of memory", "the batch is split in halves and retried with a warning; the same noise per clip, "
     "logits equal up to float32 kernel rounding (~1e-8) of the smaller batches; one stored unit per batch"),
]


def case_ids() -> List[str]:
    return [c.id for c in CASES]



from hostile_cases_data import CASES as _DATA_CASES  # noqa: E402
from hostile_cases_archs import CASES as _ARCHS_CASES  # noqa: E402
from hostile_cases_metrics import CASES as _METRICS_CASES  # noqa: E402
from hostile_cases_attacks import CASES as _ATTACKS_CASES  # noqa: E402
from hostile_cases_results import CASES as _RESULTS_CASES  # noqa: E402

CASES += _DATA_CASES + _ARCHS_CASES + _METRICS_CASES + _ATTACKS_CASES
CASES += _RESULTS_CASES
