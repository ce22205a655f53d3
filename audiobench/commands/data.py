"""``audiobench data``: pack audio into HDF5 shards, verify and describe datasets, build the toy set."""

from __future__ import annotations

import os
from pathlib import Path

import click

_DATA_HELP = "Manifest name (e.g. toy), manifest .json, .h5 shard or AST JSON datafile."


def _vocab_option(f):
    return click.option(
        "--vocab",
        "vocab",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="class_labels_indices.csv (default: env AUDIOBENCH_VOCAB, the cached copy, else the toy set's partial vocabulary).",
    )(f)


def _data_root_option(f):
    return click.option(
        "--data-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder the manifest's shard paths are relative to [env AUDIOBENCH_DATA; default: the manifest's folder].",
    )(f)


@click.group("data")
def data_group():
    """Pack, verify and describe AudioSet HDF5 shards and manifests; build the toy set."""


def _folds(ctx, param, value):
    if value is None:
        return None
    try:
        folds = sorted({int(x) for x in str(value).split(",") if x.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fold numbers such as 1,2, got {value!r}") from None
    if not folds:
        raise click.BadParameter("no fold given")
    return folds


@data_group.command("pack")
@click.option("--audio-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder of audio files (wav, flac, mp3, ...).")
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="'file,labels' CSV (';'-separated display names or mids), ESC-50's meta/esc50.csv or Google's segment CSV.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Shard to write (.h5).")
@click.option("--sample-rate", default=32000, show_default=True, type=int, help="Output rate, Hz (1000..768000).")
@click.option("--clip-seconds", default=10.0, show_default=True, type=float, help="Clip length, s (pad/trim at the end; 0.1..3600).")
@click.option("--vocab", "vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Label vocabulary: any index,mid,display_name CSV (default: an ESC-50 CSV's own classes, else env "
                   "AUDIOBENCH_VOCAB, the cached AudioSet CSV, else the toy set's partial AudioSet vocabulary).")
@click.option("--folds", callback=_folds, default=None, help="ESC-50 folds to pack, e.g. 1,2 (default: all).")
@click.option("--dtype", type=click.Choice(["int16", "float32"]), default="int16", show_default=True,
              help="Stored sample type: int16 (PANNs layout) or float32 (no quantisation, twice the size).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Manifest .json to write or update with this shard.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None, help="Root the manifest's shard paths are relative to [default: the manifest's folder].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (by default an existing file is never replaced).")
@click.option("--skip-bad", is_flag=True, help="Pack the good files and list the skipped ones instead of stopping.")
def pack_cmd(audio_dir, labels_csv, out, sample_rate, clip_seconds, vocab, folds, dtype, manifest, data_root, overwrite, skip_bad):
    """Decode, resample and pad/trim audio files into a PANNs-layout shard (nothing is written
    unless every input and the manifest check out)."""
    from audiobench.data.pack import pack
    from audiobench.data.shards import sha256_file
    from audiobench.data.vocab import cache_vocabulary, load_vocabulary

    voc = load_vocabulary(vocab) if vocab is not None else None
    res = pack(
        audio_dir,
        labels_csv,
        out,
        sample_rate=sample_rate,
        clip_seconds=clip_seconds,
        vocab=voc,
        manifest=manifest,
        data_root=data_root,
        skip_bad=skip_bad,
        progress=True,
        overwrite=overwrite,
        dtype=dtype,
        folds=folds,
        vocab_source_sha256=sha256_file(vocab) if vocab is not None else None,
    )
    if voc is not None and voc.is_audioset:
        cache_vocabulary(vocab)  # later runs name AudioSet's classes without --vocab
    for name, reason in res.skipped:
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(f"wrote {res.out}: {res.n_clips} clips × {res.num_samples / res.sample_rate:g} s at {res.sample_rate} Hz ({res.dtype})")
    click.echo(f"sha256 {res.sha256}")
    click.echo(f"vocabulary {res.vocabulary.describe()}")
    if res.clipped_samples:
        click.echo(f"clipped {res.clipped_samples} sample(s) of {res.clipped_clips} clip(s) to [-1, 1] (decoder/resampler overshoot)")
    if res.skipped:
        click.echo(f"skipped {len(res.skipped)} file(s)")
    if res.manifest is not None:
        click.echo(f"manifest {res.manifest}")


@data_group.command("verify")
@click.argument("target")
@_data_root_option
@_vocab_option
def verify_cmd(target, data_root, vocab):
    """Check a manifest or shard completely: sha256, layout, dtypes, label dimension, NaN/inf,
    clip counts and hashes. Exits non-zero naming the first problem."""
    from rich.console import Console
    from rich.progress import Progress

    from audiobench.data.verify import verify

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("verifying", total=None)
        s = verify(target, data_root, vocab=vocab, progress=lambda done, total: bar.update(task, completed=done, total=total))
    click.echo(f"OK {target}: {s['n_clips']} clips × {s['clip_seconds']:g} s at {s['sample_rate']} Hz, {len(s['shards'])} shard(s)")
    checked = {os.path.abspath(p) for p in s["sha256_checked"]}
    for sh in s["shards"]:
        mark = "sha256 checked" if sh["abs_path"] in checked else "sha256 (not pinned by a manifest)"
        click.echo(f"  {sh['path']}\t{sh['n_clips']} clips\t{mark} {sh['sha256']}")
    click.echo(f"clip_list_hash {s['clip_list_hash']}")
    click.echo(f"labels_hash {s['labels_hash']}")
    click.echo(f"vocab_hash {s['vocab_hash']} ({s['vocab_size']} classes)")
    click.echo(f"peak {s['peak']:.4f}, all-zero clips {s['all_zero_clips']}, clips without labels {s['clips_without_labels']}")


@data_group.command("info")
@click.argument("target", required=False)
@_data_root_option
@_vocab_option
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0), help="How many of the most frequent classes to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_cmd(target, data_root, vocab, top, as_json):
    """Clips, duration, sample rate and label counts of a dataset (default: the toy set)."""
    import json

    from audiobench.data.verify import info

    d = info(target, data_root, vocab=vocab, top=top)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"name          {d['name']}")
    click.echo(f"manifest      {d['manifest'] or '-'}")
    click.echo(f"clips         {d['n_clips']}")
    click.echo(f"duration      {d['duration_seconds'] / 3600:.3f} h ({d['clip_seconds']:g} s per clip)")
    click.echo(f"sample rate   {d['sample_rate']} Hz")
    click.echo(f"vocabulary    {d['vocabulary']}")
    click.echo(f"labels        {'single-label' if d['single_label'] else 'multi-label'}")
    click.echo(f"classes used  {d['classes_with_positives']} of {d['vocab_size']}, {d['labels_per_clip']:.2f} labels per clip")
    click.echo(f"clip hash     {d['clip_list_hash']}")
    if d.get("data_root"):
        click.echo(f"data root     {d['data_root']}")
    for sh in d["shards"]:
        click.echo(f"shard         {sh['path']} ({sh['n_clips']} clips)")
    if d["top_classes"]:
        click.echo("top classes:")
        for c in d["top_classes"]:
            click.echo(f"  {c['clips']:6d}  {c['index']:3d}  {c['mid']:<12} {c['name']}")


@data_group.command("toy")
@click.option("--force/--no-force", default=True, show_default=True, help="Rebuild even if the toy shard exists.")
@click.option("--write-manifest", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the manifest describing the built shard here (maintainers: data_manifests/toy.json).")
def toy_cmd(force, write_manifest):
    """(Re)build the embedded synthetic toy set in AUDIOBENCH_HOME and print where it is."""
    from audiobench.data.manifest import load_manifest
    from audiobench.data.shards import sha256_file
    from audiobench.data.toy import TOY_SHARD, build_toy_manifest, ensure_toy, toy_dir

    manifest_path = ensure_toy(force=force)
    shard = toy_dir() / TOY_SHARD
    if write_manifest is not None:
        build_toy_manifest(shard).save(write_manifest)
        click.echo(f"wrote manifest {write_manifest}")
    m = load_manifest(manifest_path)
    got = sha256_file(shard)
    match = "matches the manifest" if got == m.shards[0].sha256 else "DIFFERS from the manifest"
    click.echo(f"toy set: {m.n_clips} clips × {m.clip_seconds:g} s at {m.sample_rate} Hz")
    click.echo(f"shard    {shard}")
    click.echo(f"manifest {manifest_path}")
    click.echo(f"sha256   {got} ({match})")
