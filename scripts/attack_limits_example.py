#!/usr/bin/env python
"""The measurements of docs/attacks.md: limited attacks, the loss trace and the footprint on a real tagger.

Runs linf PGD (and its band-, time- or padding-limited variants) on every clip of a packed shard
in one batch, with the per-clip streams the engine uses (run seed 0, keyed by the condition), and
prints for each condition: mAP and top-5 hit rate, the mean loss per step and the best-so-far
trace with :func:`loss_trace_findings`, the clips whose loss spiked, and a footprint summary
(delta relative to the clean audio per band group, the share of delta on padding). ``--figure``
saves the footprint heatmaps of the conditions side by side. ``--dissect`` takes, for each
condition, the clip whose loss spiked highest and splits the perturbation at its peak iterate
(padding / audio part, below / above 4 kHz, 2-s slices, scaled by 0.5 ... 1) to see which part
carries the loss.

    audiobench data pack --audio-dir ../shared/clips --labels ../shared/clips/labels.csv \\
        --vocab ../shared/audioset/class_labels_indices.csv --out data/clips.h5
    python scripts/attack_limits_example.py --data data/clips.h5 \\
        --checkpoint ../shared/weights/efficientat_mn04_as_mAP_432.pt \\
        --condition eps=0.002 --condition eps=0.002,attack_mask=padding

A ``--condition`` is ``FIELD=VALUE[,FIELD=VALUE...]`` of :class:`audiobench.perturb.attacks.PGD`
(bands and windows as ``lo-hi``, e.g. ``attack_band_hz=0-4000``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def parse_condition(text: str) -> dict:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="packed shard (.h5) or manifest")
    ap.add_argument("--model", default="efficientat-mn04")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--condition", action="append", required=True, help="PGD fields, e.g. eps=0.002,attack_mask=padding")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", default=None, help="save the footprint heatmaps (PNG) here")
    ap.add_argument("--dissect", action="store_true", help="split the spikiest clip's peak perturbation into parts")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from audiobench.data import open_dataset
    from audiobench.fastpath import prepare_for_attack
    from audiobench.metrics.tagging import tagging_metrics
    from audiobench.models import load_model
    from audiobench.perturb import PERTURBATIONS
    from audiobench.perturb.attacks import bce_per_clip
    from audiobench.perturb.base import AttackTrace
    from audiobench.perturb.footprint import footprint_cells, footprint_per_clip, summarise_footprint
    from audiobench.rng import ClipRNG

    torch.set_num_threads(args.threads)
    ds = open_dataset(args.data)
    model = prepare_for_attack(load_model(args.model, checkpoint=args.checkpoint, sample_rate=ds.sample_rate), "cpu")
    batch = next(iter(ds.batches(len(ds))))  # one batch: every clip
    x, t, ids = batch.waveform, batch.targets, list(batch.clip_ids)
    with torch.no_grad():
        clean = tagging_metrics(model(x).numpy(), t.numpy())
    print(f"{len(ids)} clips; clean mAP {clean['mAP']:.3f}, top-5 {clean['top5_hit_rate']:.2f}")
    cells = footprint_cells(x.shape[1], ds.sample_rate)
    tables = []
    for spec in args.condition:
        p = PERTURBATIONS.get("pgd")(**parse_condition(spec)).with_sample_rate(ds.sample_rate)
        seen, iterates = [], []

        def forward(z):
            out = model(z)
            seen.append(bce_per_clip(out.detach(), t).numpy())
            if args.dissect:
                iterates.append(z.detach().clone())
            return out

        trace = AttackTrace()
        t0 = time.time()
        adv = p(x, model=forward, targets=t, rng=ClipRNG.for_clips(0, ids, p.condition_key()), trace=trace)
        with torch.no_grad():
            m = tagging_metrics(model(adv).numpy(), t.numpy())
        print(f"\n{p.condition_id}: mAP {m['mAP']:.3f}, top-5 {m['top5_hit_rate']:.2f} ({time.time() - t0:.0f} s)")
        print("  mean loss per step:", json.dumps([round(v, 4) for v in trace.loss_per_step]))
        print("  best so far:       ", json.dumps([round(v, 4) for v in trace.best_loss_per_step]))
        for f in trace.findings():
            print("  finding:", f)
        losses = np.stack(seen)  # (iterates, clips)
        for i in np.flatnonzero(losses.max(axis=0) > 5 * np.median(losses.max(axis=0))):
            print(f"  spiky clip {ids[i]}: {json.dumps([round(float(v), 3) for v in losses[:, i]])}")
        if args.dissect:
            dissect(model, x, t, ids, losses, iterates, ds.sample_rate)
        fp = summarise_footprint(footprint_per_clip(x, adv, ds.sample_rate), cells.band_edges_hz, cells.segment_edges_s)
        groups = pd.cut(fp["band_low_hz"], [-1, 1000, 4000, 8000, np.inf], labels=["<1 kHz", "1-4 kHz", "4-8 kHz", ">8 kHz"])
        agg = fp.groupby(groups, observed=True)[["delta_energy", "clean_energy"]].sum()
        rel = 10 * np.log10(agg["delta_energy"] / agg["clean_energy"])
        share = agg["delta_energy"] / agg["delta_energy"].sum()
        print(f"  footprint: {fp['padding_share'].iloc[0]:.1%} of delta energy on padding; delta/clean (dB) and share by band: "
              + ", ".join(f"{k} {rel[k]:.1f} dB ({share[k]:.0%})" for k in rel.index))
        tables.append(fp.assign(model=p.condition_id, condition=args.model))
    if args.figure:
        from audiobench.report.footprint import plot_footprints

        plot_footprints(pd.concat(tables)).savefig(args.figure, dpi=80)
        print(f"\nfigure: {args.figure}")


def dissect(model, x, t, ids, losses, iterates, sample_rate: int) -> None:
    """The spikiest clip's perturbation at its peak iterate, split into parts, each scored alone."""
    import torch

    from audiobench.perturb.attacks import band_bins, band_pass, bce_per_clip, padding_mask

    step, i = np.unravel_index(np.argmax(losses), losses.shape)
    clean, delta = x[i:i + 1], iterates[step][i:i + 1] - x[i:i + 1]
    n = x.shape[1]

    def loss(d) -> float:
        with torch.no_grad():
            return float(bce_per_clip(model(clean + d), t[i:i + 1])[0])

    with torch.no_grad():
        logits = model(clean + delta)[0]
    pad = padding_mask(clean, sample_rate)
    low = band_bins(n, sample_rate, (0, 4000))
    slices = [loss(delta * ((torch.arange(n) >= a) & (torch.arange(n) < a + 2 * sample_rate))) for a in range(0, n, 2 * sample_rate)]
    print(f"  dissect {ids[i]} at iterate {step} (loss {losses[step, i]:.3f}, clean {loss(torch.zeros_like(delta)):.3f}; "
          f"{int((logits > 0).sum())} of {logits.numel()} logits positive, largest {float(logits.max()):.1f}): "
          f"padding part {loss(delta * pad):.3f}, audio part {loss(delta * ~pad):.3f}, "
          f"below 4 kHz {loss(band_pass(delta, low)):.3f}, above {loss(band_pass(delta, ~low)):.3f}, "
          f"max over 2-s slices {max(slices):.3f}; scaled by 0.5/0.6/0.7/0.9/1: "
          + ", ".join(f"{loss(delta * a):.3f}" for a in (0.5, 0.6, 0.7, 0.9, 1.0)))


if __name__ == "__main__":
    main()
