"""Adapter-core benchmarks on the CPU, every comparison side by side in one run.

1. One Mona at Swin-T stage-1 shapes (512^2 input: 128x128 tokens, C=96): the official formulation vs
   our training form vs the fused form.
2. Forward of the backbone plain vs with fused Monas, against the counted FLOP overhead: Swin-T at 512^2
   and SwinUNETR's Swin encoder on a 96^3 CT patch (Mona3d). Goal: latency overhead within 1 point of the
   FLOP overhead.
3. One training step (batch 1, AdamW) of Swin-T at 512^2 and of SwinUNETR on a 96^3 patch: full fine-tuning,
   LoRA and Mona with and without adapter recomputation, Mona and full with block checkpointing. Each row is
   `domainmona adapters probe`'s measurement in a fresh process: peak memory (anonymous RSS rise over the
   first step, weights included) and the CPU time of a step; bytes kept for backward (saved-tensor hooks);
   Swin-T's time ratios from steps interleaved in one process (SwinUNETR's steps take a minute each on
   this CPU: its ratios come from the separate rows). Goals: Mona's peak <= LoRA's, Mona's step time
   <= 0.95x full fine-tuning.

Times are CPU time of this single-threaded process (`time.process_time`), forward comparisons interleaved
with the median of per-round ratios: on a CPU shared with other jobs, wall time charges their time slices to
whichever side happened to run. Writes benchmarks/results/adapters.md and adapters.json.

    .venv/bin/python benchmarks/bench_adapters.py [--module-rounds 30] [--forward-rounds 5] [--steps 2]
                                                  [--ct-steps 1] [--only training_3d,...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from report import machine, write_markdown
from torch.utils.flop_counter import FlopCounterMode

from domainmona.adapters import Mona, fuse, inject
from domainmona.adapters.backbones import build_backbone
from domainmona.adapters.probe import Setting, build, probe
from domainmona.io import atomic_path

RESULTS = Path(__file__).resolve().parent / "results"
SIDE, CT_SIDE = 512, 96
# (method, adapter recompute, block checkpointing) of each training row
TRAIN_ROWS = (("full", False, False), ("full", False, True), ("lora", False, False), ("lora", True, False),
              ("mona", False, False), ("mona", True, False), ("mona", False, True))


def interleaved(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """CPU seconds per call of each runner, alternating runners within every round (one warm-up call each)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def bench_module(rounds: int) -> dict:
    """Three forms of one Mona: the official module step by step (`Mona.reference_forward`), the training
    form (combined conv weights built on every call) and the fused inference form."""
    torch.manual_seed(0)
    training = Mona(96).eval()
    fused = fuse(copy.deepcopy(training))
    x = torch.randn(1, 128 * 128, 96)
    forms = {"official": training.reference_forward, "training": training, "fused": fused}
    with torch.no_grad():
        times = interleaved({name: (lambda f=f: f(x, (128, 128))) for name, f in forms.items()}, rounds)
        max_diff = (training.reference_forward(x, (128, 128)) - fused(x, (128, 128))).abs().max().item()
    return {**{f"{name}_ms": 1e3 * statistics.median(times[name]) for name in forms},
            "speedup": ratio(times, "official", "fused"), "training_speedup": ratio(times, "official", "training"),
            "max_abs_diff": max_diff}


def _encoder(name: str) -> tuple[torch.nn.Module, torch.Tensor, Callable]:
    """The backbone whose blocks get Monas, an input, and how to run the encoder alone."""
    torch.manual_seed(0)
    model = build_backbone(name)
    if name == "swinunetr":
        return model, torch.randn(1, 1, CT_SIDE, CT_SIDE, CT_SIDE), lambda m, x: m.swinViT(x)
    return model, torch.randn(1, 3, SIDE, SIDE), lambda m, x: m(x)


def bench_forward(name: str, rounds: int) -> dict:
    """Plain encoder vs the same weights with fused Monas: latency and counted FLOPs."""
    plain, x, run = _encoder(name)
    plain.eval()
    mona = fuse(inject(copy.deepcopy(plain), "mona"))
    mona.eval()
    models = {"plain": plain, "mona_fused": mona}
    with torch.no_grad():
        times = interleaved({n: (lambda m=m: run(m, x)) for n, m in models.items()}, rounds)
        flops = {}
        for n, model in models.items():
            with FlopCounterMode(display=False) as counter:
                run(model, x)
            flops[n] = counter.get_total_flops()
    return {"plain_ms": 1e3 * statistics.median(times["plain"]),
            "mona_fused_ms": 1e3 * statistics.median(times["mona_fused"]),
            "overhead_pct": 100 * (ratio(times, "mona_fused", "plain") - 1),
            "plain_gflops": flops["plain"] / 1e9,
            "flops_overhead_pct": 100 * (flops["mona_fused"] / flops["plain"] - 1)}


def interleaved_steps(settings: list[Setting], rounds: int) -> dict[Setting, float]:
    """Step time of each setting relative to the first (full fine-tuning): all models in this process, steps
    interleaved, median of per-round ratios."""
    steps = {s: build(s, torch.device("cpu"))[2] for s in settings}
    times = interleaved(steps, rounds)
    return {s: ratio(times, s, settings[0]) for s in settings}


def bench_training(name: str, side: int, steps: int, time_rounds: int) -> list[dict]:
    """Every training row measured by the probe (a fresh process each); ratios against full fine-tuning, the
    time ratio from interleaved steps when `time_rounds` > 0 (else from the probe's separate rows)."""
    settings = [Setting(name, side, 1, method, recompute, blocks, False, steps) for method, recompute, blocks in
                TRAIN_ROWS]
    relative = interleaved_steps(settings, time_rounds) if time_rounds else None
    out = []
    for row in probe(settings):
        if row.failure:
            raise RuntimeError(f"{row.setting}: {row.failure}")
        out.append({**dataclasses.asdict(row.setting), "peak_mb": row.peak_bytes / 2**20,
                    "kept_for_backward_mb": row.kept_bytes / 2**20,
                    "step_cpu_s": row.step_cpu_s, "step_wall_s": row.step_s,
                    "trainable_params": row.trainable_params, "adapter_file_mb": row.adapter_file_bytes / 2**20})
    full = next(r for r in out if r["method"] == "full" and not r["checkpoint_blocks"])
    for r, setting in zip(out, settings):
        r["memory_vs_full"] = r["peak_mb"] / full["peak_mb"]
        r["time_vs_full"] = relative[setting] if relative else r["step_cpu_s"] / full["step_cpu_s"]
        r["time_ratio_from"] = "interleaved steps" if relative else "separate processes"
    return out


def _label(r: dict) -> str:
    recompute = f", recompute {'on' if r['recompute'] else 'off'}" if r["method"] != "full" and \
        not r["checkpoint_blocks"] else ""  # inside checkpointed blocks adapters do not recompute again
    return r["method"] + recompute + (" + block checkpointing" if r["checkpoint_blocks"] else "")


def markdown(results: dict) -> list[str]:
    m = results["module"]
    lines = [
        "# Adapter core benchmarks",
        "",
        f"{results['date']}, {results['machine']}, torch {results['torch']}, 1 thread, load average at start "
        f"{results['load']} (a shared, busy machine). Times are CPU time of the single-threaded process; "
        "forward ratios are medians of per-round ratios (interleaved runs).",
        "",
        "## One Mona, Swin-T stage 1 at 512^2 (128x128 tokens, C=96, inner 64), forward",
        "",
        "| official formulation | training form (combined weights per call) | fused | "
        "fused speed-up vs official | max abs difference |",
        "|---|---|---|---|---|",
        f"| {m['official_ms']:.1f} ms | {m['training_ms']:.1f} ms ({m['training_speedup']:.2f}x) | "
        f"{m['fused_ms']:.1f} ms | {m['speedup']:.2f}x | {m['max_abs_diff']:.1e} |",
        "",
        "## Forward: latency overhead of fused Monas vs their counted FLOP overhead (goal: within 1 point)",
        "",
        "| encoder, input | plain | with fused Monas | latency overhead | FLOP overhead (counted) |",
        "|---|---|---|---|---|",
    ]
    for key, what in (("forward_2d", f"Swin-T, {SIDE}^2"), ("forward_3d", f"SwinUNETR Swin encoder, {CT_SIDE}^3")):
        f = results[key]
        lines.append(f"| {what} | {f['plain_ms']:.0f} ms ({f['plain_gflops']:.0f} GFLOP) | {f['mona_fused_ms']:.0f} ms "
                     f"| {f['overhead_pct']:+.1f}% | {f['flops_overhead_pct']:+.1f}% |")
    lines += ["", "FLOPs from torch's FlopCounterMode (matmuls and convs; LayerNorm, GELU and adds are not counted, "
                  "and they are a larger share of a Mona's work than of a Swin block's).", ""]
    for key, what in (("training_2d", f"Swin-T at {SIDE}^2"),
                      ("training_3d", f"SwinUNETR on a {CT_SIDE}^3 CT patch")):
        source = results[key][0]["time_ratio_from"]
        lines += [f"## One training step, {what}, batch 1, AdamW", "",
                  "Step time vs full: " + ("median of per-round ratios, all models stepping interleaved in one "
                                           "process." if source == "interleaved steps" else
                                           "one step per row, each in its own process (noisier)."), "",
                  "| setting | trainable params | peak memory | vs full | kept for backward | step (CPU time) "
                  "| vs full | adapter file |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {_label(r)} | {r['trainable_params']:,} | {r['peak_mb']:,.0f} MB | {r['memory_vs_full']:.2f}x | "
                  f"{r['kept_for_backward_mb']:,.0f} MB | {r['step_cpu_s']:.2f} s | {r['time_vs_full']:.2f}x | "
                  f"{r['adapter_file_mb']:.1f} MB |"
                  for r in sorted(results[key], key=lambda r: r["peak_mb"])]
        lines.append("")
    lines += ["Peak memory: `domainmona adapters probe`'s measure, each row in a fresh process: the peak rise of "
              "anonymous resident memory from before the model is built to the end of the first step (weights, "
              "activations, gradients, AdamW state). Kept for backward: bytes of the tensors autograd saves over a "
              "forward (saved-tensor hooks; parameters excluded): deterministic. Adapter recompute: each adapter "
              "keeps only its input for backward. Block checkpointing: the backbone's own (mmdet `with_cp`, MONAI "
              "`use_checkpoint`), adapters inside."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module-rounds", type=int, default=30)
    parser.add_argument("--forward-rounds", type=int, default=5)
    parser.add_argument("--forward-3d-rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per Swin-T row")
    parser.add_argument("--ct-steps", type=int, default=1, help="timed training steps per SwinUNETR row")
    parser.add_argument("--time-rounds", type=int, default=3, help="interleaved Swin-T step rounds (time ratios)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=None,
                        help="comma-separated sections to (re)measure; the others come from adapters.json")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the probe's worker processes too
    torch.set_num_threads(1)
    path = RESULTS / "adapters.json"
    results = json.loads(path.read_text()) if args.only else {}
    results.update({"date": datetime.date.today().isoformat(), "machine": machine(), "torch": torch.__version__,
                    "load": round(os.getloadavg()[0], 1)})
    for name, bench in (("module", lambda: bench_module(args.module_rounds)),
                        ("forward_2d", lambda: bench_forward("swin-t", args.forward_rounds)),
                        ("forward_3d", lambda: bench_forward("swinunetr", args.forward_3d_rounds)),
                        ("training_2d", lambda: bench_training("swin-t", SIDE, args.steps, args.time_rounds)),
                        ("training_3d", lambda: bench_training("swinunetr", CT_SIDE, args.ct_steps, 0))):
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        results[name] = bench()
        print(f"{name}: {json.dumps(results[name])} ({time.perf_counter() - start:.0f} s)", flush=True)
        with atomic_path(path) as tmp:  # after every section: a late failure keeps what was measured
            tmp.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(RESULTS / "adapters.md", markdown(results))


if __name__ == "__main__":
    main()
