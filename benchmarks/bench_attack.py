"""Benchmark: PGD throughput of three implementations side by side, against the device's limit.

    python benchmarks/bench_attack.py --model efficientat-mn04 --device cpu --quick
    python benchmarks/bench_attack.py --model cnn14 --device cuda --batch-size 32 --precision bf16
    python benchmarks/bench_attack.py --model ast --device cuda --batch-size 32 --precision bf16 --compare-precision

Random weights (``load_model(..., weights="random")``), seeded random waveforms (uniform noise at
0.3 full scale) and the same data for every loop. Loops, all L-inf PGD with ``--steps`` steps:

  (a) generic toolbox: fp32, weights trainable, ``loss.backward()`` (weight gradients computed),
      ``model.zero_grad()`` each step (:func:`audiobench.fastpath.generic_toolbox_pgd`);
  (b) attack library: fp32, frozen weights, input-only ``torch.autograd.grad``
      (:func:`audiobench.fastpath.attack_library_pgd`);
  (c) audiobench: :func:`audiobench.perturb.attacks.pgd` (per-clip random start, best point over
      all steps, i.e. ``steps`` gradient passes + 1 forward) on a model prepared with
      :func:`audiobench.fastpath.prepare_for_attack`, under ``--precision`` autocast.

(a) and (b) attack the model the way upstream code defines it: its front end differentiated by
autograd through ``torch.stft`` (``set_fused_backward(model, False)``). (c) uses audiobench's
hand-written STFT backward (:func:`audiobench.models.frontends.stft_power`); the forward values
are identical. ``--baseline-frontend audiobench`` gives (a) and (b) that backward as well, which
isolates what the attack loop and frozen weights alone are worth.

Printed: FLOPs per clip per PGD step (``torch.utils.flop_counter.FlopCounterMode`` over one
forward + input-gradient backward; also with weight gradients, what (a) pays), an estimate of the
bytes each step moves (sum of the sizes of every op's tensor inputs and outputs, i.e. with no
fusion: an upper bound), the compute limit (peak FLOP/s: ``--peak-tflops``, else the H100 bf16
figure of the issue on an H100 in bf16, else a measured matmul) and the memory limit (measured
copy bandwidth), the median clips/s of each loop over ``--repeats`` interleaved runs, the ratios
and the fraction of peak reached. ``--compare-precision`` also runs (c) in fp32 and bf16 on a
batch labelled by the model itself (top-3 clean classes), and reports how far bf16 moves the
attacked logits and the attacked mAP. ``--json PATH`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, Optional

import torch

from audiobench.fastpath import (
    attack_library_pgd,
    autocast,
    generic_toolbox_pgd,
    prepare_for_attack,
)
from audiobench.models import load_model
from audiobench.models.frontends import set_fused_backward
from audiobench.perturb.attacks import bce_per_clip, pgd
from audiobench.rng import ClipRNG

# bf16 dense matmul peak measured on an H100 SXM in issue #6 (the datasheet says 989 TFLOP/s)
H100_BF16_TFLOPS = 790.0


# ------------------------------------------------------------------------------------------------
# counting
# ------------------------------------------------------------------------------------------------
def _step(model, x, targets, precision, device, weight_grads=False):
    with autocast(device, precision), torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        loss = bce_per_clip(model(xg), targets).sum()
        params = [p for p in model.parameters() if p.requires_grad] if weight_grads else []
        # .backward(inputs=...) rather than autograd.grad: FlopCounterMode's module hooks reject
        # autograd.grad on leaves; the gradients computed are the same
        loss.backward(inputs=[xg] + params)
        for p in params:
            p.grad = None


def count_flops(model, x, targets, precision, device, weight_grads=False) -> float:
    """FLOPs of one forward + backward (input gradient; plus weight gradients if asked) for the batch."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = [p.requires_grad for p in model.parameters()]
    if weight_grads:
        model.requires_grad_(True)
    try:
        with FlopCounterMode(display=False) as fc:
            _step(model, x, targets, precision, device, weight_grads)
        return float(fc.get_total_flops())
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def count_bytes(model, x, targets, precision, device) -> float:
    """Bytes read + written by every aten op of one forward + input-backward, unfused.

    Each op is charged the sizes of its tensor inputs and outputs (views cost nothing: they move
    no data). A fused or cached implementation moves less, so this is an upper bound on traffic;
    it is the right order of magnitude for elementwise/normalisation-heavy models like mn04.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    VIEW_OPS = {"view", "_unsafe_view", "as_strided", "expand", "t", "transpose", "permute", "unsqueeze",
                "squeeze", "slice", "select", "alias", "detach", "view_as_real", "view_as_complex",
                "unfold", "_reshape_alias", "reshape", "real", "imag", "diagonal", "split", "chunk"}

    class Bytes(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            if name not in VIEW_OPS:
                flat, _ = tree_flatten((args, kwargs or {}, out))
                Bytes.total += sum(t.numel() * t.element_size() for t in flat if isinstance(t, torch.Tensor))
            return out

    with Bytes():
        _step(model, x, targets, precision, device)
    return float(Bytes.total)


def measure_peak_tflops(device: torch.device, precision: str) -> float:
    """Measured dense matmul throughput (TFLOP/s) in the precision's compute dtype."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 5
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2.0 * n**3 / best / 1e12


def measure_copy_gbps(device: torch.device) -> float:
    """Measured device copy bandwidth (read + write bytes per second, GB/s)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n * 4 / best / 1e9


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loops(loops: Dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int, warmup: int):
    """Median seconds per call of each loop; runs interleaved (a, b, c, a, b, c, ...) so a change
    in machine load hits every loop alike. Also the peak CUDA memory of each loop."""
    for _ in range(warmup):
        for f in loops.values():
            f()
    _sync(device)
    times = {k: [] for k in loops}
    peak = {}
    for _ in range(repeats):
        for k, f in loops.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak[k] = max(peak.get(k, 0), torch.cuda.max_memory_allocated(device))
    return {k: statistics.median(v) for k, v in times.items()}, times, peak


def make_data(model, batch_size: int, seconds: float, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = int(round(seconds * model.sample_rate))
    x = (torch.rand(batch_size, s, generator=g) * 2 - 1) * 0.3
    targets = (torch.rand(batch_size, model.spec.n_classes, generator=g) < 0.01).float()
    return x.to(device), targets.to(device)


# ------------------------------------------------------------------------------------------------
# bf16 vs fp32 on the attacked outputs
# ------------------------------------------------------------------------------------------------
def compare_precision(model, x, steps: int, eps: float, device: torch.device) -> Dict[str, float]:
    """Attack the same batch with (c) in fp32 and in bf16; targets = the model's own top-3 clean
    classes (so clean mAP is 1 and the attack has something to destroy, even with random weights).

    Returns attacked-mAP in both precisions (each attacked input scored in its own precision and
    in fp32), the max |logit| difference of the attacked outputs, and the mean |BCE| difference.
    """
    from audiobench.metrics.tagging import tagging_metrics

    with torch.no_grad():
        clean = model(x).float()
    targets = torch.zeros_like(clean)
    targets.scatter_(1, clean.topk(3, dim=1).indices, 1.0)
    out: Dict[str, float] = {}
    logits = {}
    for prec in ("fp32", "bf16"):
        rng = ClipRNG(range(x.shape[0]), device)
        with autocast(device, prec):
            adv = pgd(model, x, targets, eps=eps, steps=steps, rng=rng)
            with torch.no_grad():
                logits[prec] = model(adv).float()
        with torch.no_grad():
            fp32_logits = model(adv).float()
        tg = targets.bool().cpu().numpy()
        out[f"attacked_mAP_{prec}"] = tagging_metrics(logits[prec].cpu().numpy(), tg)["mAP"]
        out[f"attacked_mAP_{prec}_scored_fp32"] = tagging_metrics(fp32_logits.cpu().numpy(), tg)["mAP"]
        out[f"attacked_loss_{prec}"] = float(bce_per_clip(logits[prec], targets).mean())
    out["clean_mAP"] = tagging_metrics(clean.cpu().numpy(), targets.bool().cpu().numpy())["mAP"]
    out["max_abs_logit_diff"] = float((logits["bf16"] - logits["fp32"]).abs().max())
    out["delta_attacked_mAP"] = out["attacked_mAP_bf16"] - out["attacked_mAP_fp32"]
    return out


# ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientat-mn04")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 on cuda, 8 on cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.002)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="for loop (c); (a), (b) are fp32")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each loop, interleaved; the median is reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU figures use 1)")
    p.add_argument("--compile", action="store_true", help="prepare_for_attack(compile=True) for (c)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode with --compile, e.g. reduce-overhead "
                                                          "(CUDA graphs)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--peak-tflops", type=float, default=None, help="compute peak for the limit (default: see doc)")
    p.add_argument("--no-bytes", action="store_true", help="skip the byte count")
    p.add_argument("--compare-precision", action="store_true", help="also bf16 vs fp32 attacked logits / mAP")
    p.add_argument("--only", default="abc", help="which loops to time, e.g. 'c'")
    p.add_argument("--baseline-frontend", choices=("reference", "audiobench"), default="reference",
                   help="front-end gradient of the model that loops (a) and (b) attack: 'reference' = autograd "
                        "through torch.stft, as upstream code has it (default); 'audiobench' = the hand-written "
                        "STFT backward that (c) uses")
    p.add_argument("--quick", action="store_true", help="4 s clips: < 2 min on a 2-core CPU")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args(argv)
    if a.quick:  # PGD-10 as in the issue, on 4 s clips: under a minute for mn04 on one CPU core
        a.clip_seconds = min(a.clip_seconds, 4.0)
    if a.batch_size is None:
        a.batch_size = 64 if a.device.startswith("cuda") else 8
    return a


def main(argv=None) -> Dict[str, object]:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    plain = load_model(a.model, device=device, weights="random")
    fast = load_model(a.model, device=device, weights="random")
    fast.load_state_dict(plain.state_dict())  # identical weights for every loop
    if a.baseline_frontend == "reference":
        # (a) and (b) differentiate the front end the way a notebook model does: autograd
        # through torch.stft (same forward values; see audiobench.models.frontends.stft_power)
        set_fused_backward(plain, False)
    cl = {"auto": "auto", "on": True, "off": False}[a.channels_last]
    prepare_for_attack(fast, device, precision=a.precision, compile=a.compile, compile_mode=a.compile_mode,
                       channels_last=cl)
    x, targets = make_data(plain, a.batch_size, a.clip_seconds, device)
    B = a.batch_size

    res: Dict[str, object] = {
        "model": a.model, "device": str(device), "batch_size": B, "steps": a.steps, "eps": a.eps,
        "precision_c": a.precision, "clip_seconds": a.clip_seconds, "compile": a.compile,
        "compile_mode": a.compile_mode,
        "channels_last": a.channels_last, "baseline_frontend": a.baseline_frontend, "threads": a.threads, "torch": torch.__version__,
        "python": platform.python_version(), "host": platform.node(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"# {a.model} on {res['device_name']} ({device}), batch {B}, {a.clip_seconds:g} s clips, PGD-{a.steps} "
          f"eps {a.eps:g} linf, (c) in {a.precision}{' + compile' if a.compile else ''}; torch {torch.__version__}, "
          f"{a.threads} CPU thread(s), load {res['loadavg']}; (a), (b) on the {a.baseline_frontend} front-end gradient")

    # -- FLOPs, bytes, limits (on the plain fp32 model, batch of B; per clip) -----------------
    fl_step = count_flops(plain, x, targets, "fp32", device) / B
    fl_step_w = count_flops(plain, x, targets, "fp32", device, weight_grads=True) / B
    with torch.no_grad():
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            plain(x)
    fl_fwd = float(fc.get_total_flops()) / B
    fl_attack = a.steps * fl_step + fl_fwd  # what (c) computes per clip
    res.update(flops_per_clip_step=fl_step, flops_per_clip_step_weight_grads=fl_step_w, flops_per_clip_forward=fl_fwd,
               flops_per_clip_attack_c=fl_attack)
    if a.peak_tflops is not None:
        peak, peak_src = a.peak_tflops, "given"
    elif device.type == "cuda" and a.precision == "bf16" and "H100" in str(res["device_name"]):
        peak, peak_src = H100_BF16_TFLOPS, "H100 bf16 (issue #6)"
    else:
        peak, peak_src = measure_peak_tflops(device, a.precision), f"measured {a.precision} matmul"
    gbps = measure_copy_gbps(device)
    res.update(peak_tflops=peak, peak_source=peak_src, copy_gbps=gbps)
    limit_flops = peak * 1e12 / (a.steps * fl_step)
    print(f"FLOPs per clip per PGD step (forward + input gradient): {fl_step / 1e9:.3f} GFLOP "
          f"(with weight gradients, as counted: {fl_step_w / 1e9:.3f}); forward only {fl_fwd / 1e9:.3f}")
    print(f"compute peak {peak:.1f} TFLOP/s ({peak_src}) -> PGD-{a.steps} limit {limit_flops:,.0f} clips/s")
    if not a.no_bytes:
        by = count_bytes(plain, x, targets, "fp32", device) / B
        limit_bytes = gbps * 1e9 / (a.steps * by)
        res.update(bytes_per_clip_step=by, limit_bytes_clips_s=limit_bytes)
        print(f"bytes per clip per step (unfused, upper bound): {by / 1e6:.1f} MB; copy {gbps:.1f} GB/s "
              f"-> PGD-{a.steps} memory limit {limit_bytes:,.0f} clips/s (for fp32 unfused traffic)")
    res["limit_flops_clips_s"] = limit_flops

    # -- the three loops ----------------------------------------------------------------------
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    loops = {
        "a_generic_toolbox": lambda: generic_toolbox_pgd(plain, x, targets, eps=a.eps, steps=a.steps, generator=gen()),
        "b_attack_library": lambda: attack_library_pgd(plain, x, targets, eps=a.eps, steps=a.steps, generator=gen()),
    }

    def run_c():
        with autocast(device, a.precision):
            return pgd(fast, x, targets, eps=a.eps, steps=a.steps, rng=ClipRNG(range(B), device))

    loops["c_audiobench"] = run_c
    loops = {k: f for k, f in loops.items() if k[0] in a.only}
    med, allt, peakmem = time_loops(loops, device, a.repeats, a.warmup)
    cps = {k: B / v for k, v in med.items()}
    res.update(clips_per_s=cps, seconds_all=allt, peak_mem_bytes=peakmem)
    # useful work: the attack's forward + input gradient. (a)'s weight gradients are waste, and
    # FlopCounterMode (torch 2.11) overcounts grouped/depthwise weight gradients by ~groups.
    flops_of = {"a_generic_toolbox": a.steps * fl_step, "b_attack_library": a.steps * fl_step, "c_audiobench": fl_attack}
    print(f"{'loop':<20} {'clips/s':>10} {'s/batch':>9} {'(min-max)':>15} {'% of peak':>10} {'peak mem':>10}")
    for k in loops:
        frac = cps[k] * flops_of[k] / (peak * 1e12)
        res.setdefault("fraction_of_peak", {})[k] = frac
        mem = f"{peakmem[k] / 2**30:.2f} GiB" if k in peakmem else "-"
        spread = f"{min(allt[k]):.3f}-{max(allt[k]):.3f}"
        print(f"{k:<20} {cps[k]:>10.2f} {med[k]:>9.3f} {spread:>15} {100 * frac:>9.2f}% {mem:>10}")
    if "c_audiobench" in cps:
        for k in ("a_generic_toolbox", "b_attack_library"):
            if k in cps:
                r = cps["c_audiobench"] / cps[k]
                res[f"ratio_c_over_{k[0]}"] = r
                print(f"ratio (c)/({k[0]}) = {r:.2f}x")

    if a.compare_precision:
        cmp = compare_precision(fast, x, a.steps, a.eps, device)
        res["precision_comparison"] = cmp
        print("bf16 vs fp32 (c), self-labelled top-3 targets: clean mAP {clean_mAP:.4f}; attacked mAP fp32 "
              "{attacked_mAP_fp32:.4f}, bf16 {attacked_mAP_bf16:.4f} (delta {delta_attacked_mAP:+.4f}); bf16 inputs "
              "scored in fp32 {attacked_mAP_bf16_scored_fp32:.4f}; max |logit diff| {max_abs_logit_diff:.3g}".format(**cmp))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1, default=float)
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
