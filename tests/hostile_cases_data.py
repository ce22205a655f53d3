"""Hostile inputs for the data layer (shards, manifests, vocabularies, ``data pack``), round 2.

Each :class:`~hostile_cases.Case` here builds its bad input in a :class:`~hostile_cases.Workspace`
and is run by tests/test_hostile_inputs.py under the same contract as the rest of the table (exit
code != 0, one stderr line naming the file or value and the problem, no traceback, nothing that
existed changed). ``tests/hostile_cases.py`` appends :data:`CASES` to its own list.
"""

from __future__ import annotations

import json
import os
import struct
from typing import List

import numpy as np

from hostile_cases import N_CLIPS, NUM_SAMPLES, SAMPLE_RATE, SHARD, Case, Invocation, Workspace, run_args

TOP_SECRET = "TOPSECRET-first-line-of-a-private-file"


# --- shard attributes and sizes ------------------------------------------------------------------
def _shard_rate(value, cmd: str, expect: List[str]):
    def build(ws: Workspace) -> Invocation:
        ws.write_h5("rate.h5", sample_rate=value)
        argv = run_args(data="rate.h5") if cmd == "run" else ["data", cmd, "rate.h5"]
        return Invocation(argv, ["rate.h5", *expect])

    return build


def _chunked_bomb(n: int, expect: List[str]):
    def build(ws: Workspace) -> Invocation:
        import h5py

        with h5py.File(ws.path("bomb.h5"), "w") as f:  # a few KB declaring n clips, no data written
            f.attrs["sample_rate"] = SAMPLE_RATE
            f.create_dataset("audio_name", shape=(n,), dtype="S16", chunks=(4096,))
            f.create_dataset("waveform", shape=(n, NUM_SAMPLES), dtype=np.int16, chunks=(1, NUM_SAMPLES))
            f.create_dataset("target", shape=(n, 527), dtype=bool, chunks=(1024, 527))
        assert os.path.getsize(ws.path("bomb.h5")) < 20_000
        return Invocation(run_args(data="bomb.h5"), ["bomb.h5", *expect])

    return build


def _unwritten_contiguous(ws: Workspace) -> Invocation:
    import h5py

    with h5py.File(ws.path("hollow.h5"), "w") as f:
        f.attrs["sample_rate"] = SAMPLE_RATE
        f.create_dataset("audio_name", data=np.array([f"Yc{i}.wav".encode() for i in range(N_CLIPS)]))
        f.create_dataset("waveform", shape=(N_CLIPS, NUM_SAMPLES), dtype=np.int16)  # declared, never written
        f.create_dataset("target", data=np.zeros((N_CLIPS, 527), bool))
    return Invocation(["data", "verify", "hollow.h5"], ["hollow.h5", "'waveform'", "stores 0"])


def _counts_disagree(ws: Workspace) -> Invocation:
    ws.write_h5("counts.h5", target=np.zeros((N_CLIPS - 2, 527), bool))
    return Invocation(run_args(data="counts.h5"), ["counts.h5", "clip counts disagree"])


def _short_clips(ws: Workspace) -> Invocation:
    ws.write_h5("short.h5", waveform=np.zeros((N_CLIPS, 1), np.int16))
    return Invocation(run_args(data="short.h5"), ["short.h5", "1 samples per clip", "outside the supported 0.1"])


def _duplicate_ids(ws: Workspace) -> Invocation:
    ws.write_h5("dups.h5", audio_name=np.array([b"Ysame.wav"] * N_CLIPS))
    return Invocation(run_args(data="dups.h5"), ["dups.h5", "'Ysame.wav' occurs more than once"])


def _control_char_id(ws: Workspace) -> Invocation:
    names = np.array([b"Ya\nb.wav"] + [f"Yc{i}.wav".encode() for i in range(1, N_CLIPS)])
    ws.write_h5("newline.h5", audio_name=names)
    return Invocation(["data", "info", "newline.h5"], ["newline.h5", "control characters"])


def _external_link(ws: Workspace) -> Invocation:
    import h5py

    ws.write_h5("outside_data.h5")
    ws.write_h5("linked.h5", drop=["waveform"])
    with h5py.File(ws.path("linked.h5"), "a") as f:
        f["waveform"] = h5py.ExternalLink("outside_data.h5", "/waveform")
    return Invocation(run_args(data="linked.h5"), ["linked.h5", "'waveform' is an external link", "refused"])


def _virtual_dataset(ws: Workspace) -> Invocation:
    import h5py

    ws.write_h5("outside_data.h5")
    ws.write_h5("virtual.h5", drop=["waveform"])
    layout = h5py.VirtualLayout(shape=(N_CLIPS, NUM_SAMPLES), dtype=np.int16)
    layout[:] = h5py.VirtualSource("outside_data.h5", "waveform", shape=(N_CLIPS, NUM_SAMPLES))
    with h5py.File(ws.path("virtual.h5"), "a") as f:
        f.create_virtual_dataset("waveform", layout)
    return Invocation(["data", "verify", "virtual.h5"], ["virtual.h5", "virtual dataset", "refused"])


def _external_storage(ws: Workspace) -> Invocation:
    import h5py

    raw = np.random.default_rng(1).integers(-9000, 9000, size=(N_CLIPS, NUM_SAMPLES), dtype=np.int16)
    ws.path("samples.raw").write_bytes(raw.tobytes())
    ws.write_h5("external.h5", drop=["waveform"])
    with h5py.File(ws.path("external.h5"), "a") as f:
        f.create_dataset("waveform", shape=raw.shape, dtype=np.int16, external=[("samples.raw", 0, raw.nbytes)])
    return Invocation(run_args(data="external.h5"), ["external.h5", "external files", "refused"])


# --- manifests -----------------------------------------------------------------------------------
def _manifest_doc(ws: Workspace, rel: str, shard_path: str = SHARD) -> dict:
    ws.manifest(rel, shard_path)
    return json.loads(ws.path(rel).read_text())


def _manifest_field(rel: str, edit, expect: List[str], cmd: str = "run", raw=None):
    def build(ws: Workspace) -> Invocation:
        folder = os.path.dirname(rel)
        if folder:
            ws.path(folder).mkdir(parents=True, exist_ok=True)
            ws.write_h5(f"{folder}/{SHARD}")
        doc = _manifest_doc(ws, rel)
        edit(doc)
        text = json.dumps(doc, indent=1)
        if raw is not None:
            text = raw(text)
        ws.path(rel).write_text(text)
        argv = run_args(data=rel) if cmd == "run" else ["data", cmd, rel]
        return Invocation(argv, [os.path.basename(rel), *expect])

    return build


def _set(**kv):
    def edit(doc):
        for k, v in kv.items():
            doc[k] = v

    return edit


def _set_vocab(vocab):
    def edit(doc):
        doc["vocabulary"] = vocab

    return edit


def _deep_json(ws: Workspace) -> Invocation:
    ws.path("deep.json").write_text("[" * 100_000 + "]" * 100_000)
    return Invocation(["data", "verify", "deep.json"], ["deep.json", "nested too deeply"])


def _vocab_file(rel: str, text: str):
    def build(ws: Workspace) -> Invocation:
        ws.path(rel).write_text(text)
        return Invocation(["data", "info", SHARD, "--vocab", rel], [rel, "indices"])

    return build


def _manifest_vocab_path(kind: str):
    def build(ws: Workspace) -> Invocation:
        folder = ws.path("vm")
        folder.mkdir()
        ws.write_h5(f"vm/{SHARD}")
        ws.path("private.csv").write_text(TOP_SECRET + "\n0,/m/a,A\n")
        if kind == "sparse":
            (folder / "sparse.csv").write_text("index,mid,display_name\n99999999,/m/x,X\n")
            path, expect = "sparse.csv", ["sparse.csv", "indices must lie in 0..99999"]
        elif kind == "dotdot":
            path, expect = "../private.csv", ["'../private.csv'", "without '..'"]
        elif kind == "absolute":
            path, expect = str(ws.path("private.csv").resolve()), ["must be relative to the manifest's folder"]
        else:  # a file inside the folder that is not a vocabulary: its first line is not echoed
            (folder / "notes.csv").write_text(TOP_SECRET + "\nmore\n")
            path, expect = "notes.csv", ["notes.csv", "first line must be the header"]
        doc = _manifest_doc(ws, "vm/m.json")
        doc["vocabulary"] = {"path": path}
        ws.path("vm/m.json").write_text(json.dumps(doc))
        return Invocation(["data", "info", "vm/m.json"], expect)

    return build


def _generator_escape(name: str, generator: dict, expect: List[str]):
    def build(ws: Workspace) -> Invocation:
        outside = ws.path("outside")
        outside.mkdir()
        ws.write_h5(f"outside/{SHARD}")
        doc = _manifest_doc(ws, "gen.json")
        doc["name"], doc["generator"] = name, generator
        ws.path("gen.json").write_text(json.dumps(doc))
        return Invocation(["data", "verify", "gen.json"], ["gen.json", *expect])

    return build


def _datafile_duplicates(ws: Workspace) -> Invocation:
    import soundfile as sf

    sf.write(ws.path("one.wav"), np.zeros(8000, np.float32), 8000)
    doc = {"data": [{"wav": "one.wav", "labels": "/m/01v_m0"}, {"wav": "one.wav", "labels": "/m/01v_m0"}]}
    ws.path("twice.json").write_text(json.dumps(doc))
    return Invocation(["data", "info", "twice.json"], ["twice.json", "'one.wav' is listed more than once"])


def _home_is_file(cmd: str):
    def build(ws: Workspace) -> Invocation:
        ws.path("homefile").write_text("a regular file, not a folder\n")
        argv = ["data", "info"] if cmd == "info" else ["run", "--model", "toy-cnn", "--out", "results", "--limit", "4",
                                                       "--batch-size", "4", "--bootstrap", "20", "--no-trust-checks", "--quiet"]
        return Invocation(argv, ["AUDIOBENCH_HOME", "homefile", "not a folder"], env={"AUDIOBENCH_HOME": "homefile"})

    return build


# --- data pack -----------------------------------------------------------------------------------
def _sine_folder(ws: Workspace, rel: str = "src") -> str:
    import soundfile as sf

    d = ws.path(rel)
    d.mkdir(parents=True, exist_ok=True)
    sf.write(d / "good.wav", 0.3 * np.sin(np.arange(8000) / 8000 * 2 * np.pi * 300), 8000)
    (d / "labels.csv").write_text("file,labels\ngood.wav,Sine wave\n")
    return rel


def _pack_argv(audio: str, labels: str, out: str, *extra: str) -> List[str]:
    return ["data", "pack", "--audio-dir", audio, "--labels", labels, "--out", out, "--clip-seconds", "1", *extra]


def _packed_16k(ws: Workspace) -> None:
    from audiobench.data.pack import pack
    from audiobench.data.vocab import toy_vocabulary

    src = _sine_folder(ws)
    pack(ws.path(src), ws.path(src) / "labels.csv", ws.path("dl/a.h5"), sample_rate=16000, clip_seconds=1.0,
         vocab=toy_vocabulary(), manifest=ws.path("dl/m.json"), dtype="float32")


def _pack_rate_mismatch(overwrite: bool):
    def build(ws: Workspace) -> Invocation:
        _packed_16k(ws)
        extra = ["--manifest", "dl/m.json", "--sample-rate", "8000"] + (["--overwrite"] if overwrite else [])
        expect = ["m.json", "16000 Hz", "nothing written"] if overwrite else ["a.h5", "exists", "--overwrite"]
        return Invocation(_pack_argv("src", "src/labels.csv", "dl/a.h5", *extra), expect)

    return build


def _pack_bad_manifest(ws: Workspace) -> Invocation:
    _sine_folder(ws)
    ws.path("broken.json").write_text('{"format": "audiobench-manifest", "version": 1, ')

    def after(ws: Workspace) -> None:
        assert not ws.path("new.h5").exists(), "a refused --manifest left a new shard"

    return Invocation(_pack_argv("src", "src/labels.csv", "new.h5", "--manifest", "broken.json", "--sample-rate", "8000"),
                      ["broken.json", "not valid JSON"], after=after)


def _pack_label_path(kind: str):
    def build(ws: Workspace) -> Invocation:
        import soundfile as sf

        src = _sine_folder(ws, "pk/audio")
        sf.write(ws.path("x.wav"), np.zeros(8000, np.float32), 8000)  # exists, outside the audio folder
        name = "../../x.wav" if kind == "dotdot" else str(ws.path("x.wav").resolve())
        ws.path(f"{src}/labels.csv").write_text(f"file,labels\ngood.wav,Sine wave\n{name},Sine wave\n")
        expect = ["../../x.wav", "'..'", "nothing written"] if kind == "dotdot" else ["absolute path", "nothing written"]

        def after(ws: Workspace) -> None:
            assert not ws.path("packed.h5").exists()

        return Invocation(_pack_argv(src, f"{src}/labels.csv", "packed.h5", "--sample-rate", "8000"), expect, after=after)

    return build


def _pack_loud(ws: Workspace) -> Invocation:
    import soundfile as sf

    src = _sine_folder(ws)
    sf.write(ws.path("src/loud.wav"), np.full(8000, 1e30, np.float32), 8000, subtype="FLOAT")
    ws.path("src/labels.csv").write_text("file,labels\ngood.wav,Sine wave\nloud.wav,Sine wave\n")

    def after(ws: Workspace) -> None:
        assert not ws.path("packed.h5").exists()

    return Invocation(_pack_argv(src, "src/labels.csv", "packed.h5", "--sample-rate", "8000"),
                      ["loud.wav", "outside [-1, 1]", "nothing written"], after=after)


def _pack_header_rate(ws: Workspace) -> Invocation:
    src = _sine_folder(ws)
    data = bytearray(ws.path("src/good.wav").read_bytes())
    data[24:28] = struct.pack("<I", 1_000_000_007)  # the fmt chunk's sample rate (and byte rate below)
    data[28:32] = struct.pack("<I", 2_000_000_014 % (1 << 32))
    ws.path("src/claims.wav").write_bytes(bytes(data))
    ws.path("src/labels.csv").write_text("file,labels\nclaims.wav,Sine wave\n")
    return Invocation(_pack_argv(src, "src/labels.csv", "packed.h5", "--sample-rate", "16000"),
                      ["claims.wav", "1000000007 Hz", "nothing written"])


def _pack_option_rate(ws: Workspace) -> Invocation:
    src = _sine_folder(ws)
    return Invocation(_pack_argv(src, "src/labels.csv", "packed.h5", "--sample-rate", "1000000007"),
                      ["--sample-rate", "1000000007 Hz is outside"])


_NAN = float("nan")
CASES: List[Case] = [
    Case("shard-rate-zero", "data", "shard attribute `sample_rate = 0`", "refused: outside the supported rates (run)",
         _shard_rate(0, "run", ["sample rate 0 Hz is outside 1000..768000"])),
    Case("shard-rate-string", "data", "shard attribute `sample_rate = \"abc\"`", "refused: not a whole number (info)",
         _shard_rate("abc", "info", ["must be a whole number", "'abc'"])),
    Case("shard-rate-array", "data", "shard attribute `sample_rate` that is an array", "refused (verify)",
         _shard_rate(np.array([16000, 16000]), "verify", ["single number", "array"])),
    Case("shard-rate-nan", "data", "shard attribute `sample_rate = NaN`", "refused (run)",
         _shard_rate(_NAN, "run", ["whole number of Hz", "nan"])),
    Case("shard-rate-huge", "data", "shard attribute `sample_rate = 2**62`", "refused before any allocation (info)",
         _shard_rate(np.int64(2**62), "info", [str(2**62), "outside"])),
    Case("shard-rate-fraction", "data", "shard attribute `sample_rate = 16000.7`", "refused, not truncated (run)",
         _shard_rate(16000.7, "run", ["16000.7", "whole number"])),
    Case("shard-rate-1e9", "data", "shard attribute `sample_rate = 1000000007`", "refused (verify)",
         _shard_rate(1_000_000_007, "verify", ["1000000007 Hz is outside"])),
    Case("shard-clip-bomb", "data", "2 KB shard declaring 2^31 clips (chunked, empty datasets)",
         "refused within a second: more clips than the limit", _chunked_bomb(2**31, ["2147483648 clips", "limit"]),
         subprocess=True),
    Case("shard-chunks-missing", "data", "shard declaring 10^6 clips whose chunks were never written",
         "refused before reading: chunks missing", _chunked_bomb(10**6, ["stores 0 of its", "never written"])),
    Case("shard-unwritten-data", "data", "contiguous `waveform` declared but never written",
         "refused: declares N bytes but stores 0", _unwritten_contiguous),
    Case("shard-counts-disagree", "data", "`target` with fewer rows than `waveform`", "refused: clip counts disagree",
         _counts_disagree),
    Case("shard-short-clips", "data", "1-sample clips", "refused: shorter than the 0.1 s minimum (the STFT needs frames)",
         _short_clips),
    Case("shard-duplicate-ids", "data", "the same clip id on every row", "refused when the dataset is opened",
         _duplicate_ids),
    Case("shard-id-newline", "data", "a clip id containing a newline", "refused: control characters",
         _control_char_id),
    Case("shard-external-link", "data", "`waveform` as an HDF5 external link to another file",
         "refused: data must be stored in the shard", _external_link),
    Case("shard-virtual-dataset", "data", "`waveform` as an HDF5 virtual dataset", "refused", _virtual_dataset),
    Case("shard-external-storage", "data", "`waveform` with external raw storage", "refused", _external_storage),
    Case("manifest-n-clips-inf", "manifest", "manifest `n_clips: 1e999`", "refused: not a whole number",
         _manifest_field("m_inf.json", _set(), ["n_clips", "whole number"], cmd="verify",
                         raw=lambda t: t.replace(f'"n_clips": {N_CLIPS}', '"n_clips": 1e999'))),
    Case("manifest-rate-fraction", "manifest", "manifest `sample_rate: 16000.7`", "refused, not truncated",
         _manifest_field("m_rate.json", _set(sample_rate=16000.7), ["16000.7"])),
    Case("manifest-nul-path", "manifest", "manifest shard path containing NUL", "refused: control characters",
         _manifest_field("m_nul.json", lambda d: d["shards"][0].__setitem__("path", "tiny\u0000.h5"),
                         ["control characters"], cmd="info")),
    Case("manifest-vocab-size", "manifest", "manifest vocabulary `size: 1e11`", "refused before allocating",
         _manifest_field("m_voc.json", _set_vocab({"size": 1e11, "hash": "0" * 64, "entries": []}),
                         ["vocabulary size 100000000000 is outside 1..100000"])),
    Case("manifest-deep-json", "manifest", "JSON nested 100000 levels deep", "refused: nested too deeply", _deep_json),
    Case("manifest-generator-escape", "manifest", "generated-set manifest with `\"name\": \"../outside\"`",
         "refused: no shard outside the data root is read, `data verify` does not say OK",
         _generator_escape("../outside", {"name": "toy"}, ["'name'", "no path"])),
    Case("manifest-generator-unknown", "manifest", "manifest naming a generator audiobench does not have",
         "refused: only the toy set is generated", _generator_escape("x", {"name": "evil"}, ["unknown 'generator'"])),
    Case("manifest-vocab-sparse", "manifest", "manifest `vocabulary.path` to a 50-byte CSV with index 99999999",
         "refused at once (no 10 GB allocation)", _manifest_vocab_path("sparse")),
    Case("manifest-vocab-dotdot", "manifest", "manifest `vocabulary.path` with `..`", "refused: stays in the manifest's folder",
         _manifest_vocab_path("dotdot")),
    Case("manifest-vocab-absolute", "manifest", "manifest `vocabulary.path` that is absolute", "refused",
         _manifest_vocab_path("absolute")),
    Case("manifest-vocab-not-csv", "manifest", "manifest `vocabulary.path` naming a file that is not a vocabulary",
         "refused without echoing the file's first line", _manifest_vocab_path("notes")),
    Case("vocab-sparse-index", "data", "`--vocab` CSV with one row at index 99999999", "refused at once",
         _vocab_file("sparse.csv", "index,mid,display_name\n99999999,/m/x,X\n")),
    Case("vocab-gap", "data", "`--vocab` CSV with indices 0 and 5000", "refused: not contiguous",
         _vocab_file("gap.csv", "index,mid,display_name\n0,/m/a,A\n5000,/m/x,X\n")),
    Case("datafile-duplicates", "data", "JSON datafile listing the same wav twice", "refused: clip ids must be unique",
         _datafile_duplicates),
    Case("home-is-file-info", "options", "`AUDIOBENCH_HOME` pointing at a regular file (`data info`)",
         "refused: not a folder", _home_is_file("info")),
    Case("home-is-file-run", "options", "`AUDIOBENCH_HOME` pointing at a regular file (`run`)", "refused",
         _home_is_file("run")),
    Case("pack-rate-vs-manifest", "pack", "`data pack --sample-rate 8000 --overwrite` into a 16 kHz manifest's shard",
         "refused before writing: the manifest's shard stays byte-for-byte", _pack_rate_mismatch(True)),
    Case("pack-existing-shard", "pack", "`data pack --out` naming an existing shard of a manifest",
         "refused without `--overwrite`", _pack_rate_mismatch(False)),
    Case("pack-invalid-manifest", "pack", "`data pack --manifest` naming invalid JSON", "refused; no new shard is left",
         _pack_bad_manifest),
    Case("pack-labels-dotdot", "pack", "labels CSV naming `../../x.wav`", "refused: files stay inside the audio folder",
         _pack_label_path("dotdot")),
    Case("pack-labels-absolute", "pack", "labels CSV naming an absolute path", "refused", _pack_label_path("absolute")),
    Case("pack-samples-1e30", "pack", "float WAV with samples of 1e30", "refused like `run` would (no silent clipping)",
         _pack_loud),
    Case("pack-header-rate", "pack", "3 KB WAV whose header says 1,000,000,007 Hz", "refused before decoding",
         _pack_header_rate),
    Case("pack-option-rate", "pack", "`--sample-rate 1000000007`", "refused: outside the supported rates",
         _pack_option_rate),
]
