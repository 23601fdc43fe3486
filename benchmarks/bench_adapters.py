"""Adapter-core benchmarks, every comparison measured side by side (interleaved) in one run on the CPU.

1. One Mona at Swin-T stage-1 shapes (512^2 input: 128x128 tokens, C=96): the official formulation vs
   our training form vs the fused form. Goal: fused >= 1.6x the official formulation.
2. Swin-T forward at 512^2: plain vs Mona (fused), same base weights. Goal <= +8% latency.
3. One training step of Swin-T at 512^2 (batch 1, AdamW): Mona vs full fine-tuning vs LoRA (rank 64).
   Step time interleaved in this process; peak memory of a step in a fresh process per method (peak RSS
   during the first step minus RSS before it: activations, gradients, optimizer state). Goals vs full:
   memory <= 0.7x, time <= 0.9x.

The median over rounds of each round's ratio is reported, so load from other processes hits both sides of
a ratio alike. One thread by default: on a CPU shared with other jobs, OpenMP threads stall at every
barrier when a sibling is descheduled, which inflates many-small-op models (Mona) far more than others.
Writes benchmarks/results/adapters.md and adapters.json.

    .venv/bin/python benchmarks/bench_adapters.py [--threads 1] [--module-rounds 30] [--forward-rounds 5]
                                                  [--train-rounds 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from domainmona.adapters import Mona, fuse, inject, trainable_report
from domainmona.adapters.backbones import build_backbone
from domainmona.io import atomic_path

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 512
TRAIN_METHODS = ("full", "lora", "mona")


def interleaved(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, alternating runners within every round (one warm-up call each)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
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


def bench_forward(rounds: int) -> dict:
    torch.manual_seed(0)
    plain = build_backbone("swin-t")
    plain.eval()
    mona = inject(copy.deepcopy(plain), "mona")
    fuse(mona)
    mona.eval()
    x = torch.randn(1, 3, SIDE, SIDE)
    with torch.no_grad():
        times = interleaved({"plain": lambda: plain(x), "mona_fused": lambda: mona(x)}, rounds)
        flops = {}
        for name, model in (("plain", plain), ("mona_fused", mona)):
            with FlopCounterMode(display=False) as counter:
                model(x)
            flops[name] = counter.get_total_flops()
    return {"plain_ms": 1e3 * statistics.median(times["plain"]),
            "mona_fused_ms": 1e3 * statistics.median(times["mona_fused"]),
            "overhead_pct": 100 * (ratio(times, "mona_fused", "plain") - 1),
            "plain_gflops": flops["plain"] / 1e9, "flops_overhead_pct": 100 * (flops["mona_fused"] / flops["plain"] - 1)}


def training_step(method: str) -> tuple[Callable[[], None], torch.nn.Module]:
    """One AdamW step of Swin-T with `method` on a 512^2 image; the loss touches every output level."""
    torch.manual_seed(0)
    model = inject(build_backbone("swin-t"), method)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    image = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        sum(f.square().mean() for f in model(image)).backward()
        optimizer.step()

    return step, model


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(method: str) -> dict:
    """Run in a fresh process: peak RSS during the first training step (optimizer state is created there)
    minus the RSS before it, in MB."""
    step, model = training_step(method)
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    step()
    return {"method": method, "step_peak_mb": (_status_kb("VmHWM") - before) / 1024,
            "trainable_params": trainable_report(model).trainable_backbone_params}


def bench_training(rounds: int) -> dict:
    steps = {method: training_step(method)[0] for method in TRAIN_METHODS}
    times = interleaved(steps, rounds)
    memory = {}
    for method in TRAIN_METHODS:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", method,
                              "--threads", str(torch.get_num_threads())], check=True, capture_output=True, text=True)
        memory[method] = json.loads(out.stdout.strip().splitlines()[-1])
    return {method: {"step_s": statistics.median(times[method]),
                     "time_vs_full": ratio(times, method, "full"),
                     "step_peak_mb": memory[method]["step_peak_mb"],
                     "memory_vs_full": memory[method]["step_peak_mb"] / memory["full"]["step_peak_mb"],
                     "trainable_params": memory[method]["trainable_params"]} for method in TRAIN_METHODS}


def markdown(results: dict) -> str:
    m, f, t = results["module"], results["forward"], results["training"]
    lines = [
        "# Adapter core benchmarks",
        "",
        f"CPU: {results['machine']}, torch {results['torch']}, {results['threads']} threads, "
        f"load average at start {results['load']}. Ratios are medians of per-round ratios (interleaved runs).",
        "",
        "## One Mona, Swin-T stage 1 at 512^2 (128x128 tokens, C=96, inner 64), forward",
        "",
        "| official formulation | training form (combined weights per call) | fused | "
        "fused speed-up vs official (goal >= 1.6x) | max abs difference |",
        "|---|---|---|---|---|",
        f"| {m['official_ms']:.1f} ms | {m['training_ms']:.1f} ms ({m['training_speedup']:.2f}x) | "
        f"{m['fused_ms']:.1f} ms | {m['speedup']:.2f}x | {m['max_abs_diff']:.1e} |",
        "",
        f"## Swin-T forward at {SIDE}^2, batch 1",
        "",
        "| plain Swin-T | Mona-Swin-T (fused) | latency overhead (goal <= +8%) | FLOP overhead (counted) |",
        "|---|---|---|---|",
        f"| {f['plain_ms']:.0f} ms ({f['plain_gflops']:.0f} GFLOP) | {f['mona_fused_ms']:.0f} ms | "
        f"{f['overhead_pct']:+.1f}% | {f['flops_overhead_pct']:+.1f}% |",
        "",
        "FLOPs from torch's FlopCounterMode (matmuls and convs). Mona's width is a constant 64, so its share is",
        "largest where tokens are many and channels few: Swin's first stage.",
        "",
        f"## One training step, Swin-T at {SIDE}^2, batch 1, AdamW",
        "",
        "| method | trainable params | step time | vs full (goal <= 0.9x) | step peak memory | vs full (goal <= 0.7x) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {r['trainable_params']:,} | {r['step_s']:.2f} s | {r['time_vs_full']:.2f}x | "
              f"{r['step_peak_mb']:.0f} MB | {r['memory_vs_full']:.2f}x |" for name, r in t.items()]
    lines += ["", "Step peak memory: peak RSS during the first step minus RSS before it, each method in a fresh "
                  "process (activations, gradients, optimizer state; the model itself excluded)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--module-rounds", type=int, default=30)
    parser.add_argument("--forward-rounds", type=int, default=5)
    parser.add_argument("--train-rounds", type=int, default=2)
    parser.add_argument("--memory-probe", choices=TRAIN_METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe)))
        return
    results = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "load": round(os.getloadavg()[0], 1)}
    for name, bench, rounds in (("module", bench_module, args.module_rounds),
                                ("forward", bench_forward, args.forward_rounds),
                                ("training", bench_training, args.train_rounds)):
        start = time.perf_counter()
        results[name] = bench(rounds)
        print(f"{name}: {json.dumps(results[name])} ({time.perf_counter() - start:.0f} s)", flush=True)
    with atomic_path(RESULTS / "adapters.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_path(RESULTS / "adapters.md") as tmp:
        tmp.write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
