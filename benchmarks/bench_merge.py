"""Merged-model latency: after `merge`, a LoRA / SSF / FacT-TT / KronA model should run as fast as the plain
backbone (goal: within 3%), since it is the plain backbone with other weights.

mmdet Swin-T at 512^2 on the CPU, batch 1, no grad. Every method is injected, its tensors moved off their init
(so the merged weights differ from the plain ones), and merged; the unmerged forms run too, for scale. All
models run interleaved in every round (`bench_adapters.interleaved`: CPU time of this single-threaded process,
so other jobs' time slices are not charged to whichever model ran); ratios are medians of per-round ratios.
The plain backbone runs first and a copy of it last in every round; each model is compared with the mean of
the two in its round (so the position in a round cannot favour either side), and the copy's ratio to the
first is the noise of the measurement. Also checks that each merged output equals its unmerged one. Writes
benchmarks/results/merge.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_merge.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics

import torch
from bench_adapters import RESULTS, SIDE, interleaved, ratio
from report import machine, write_markdown

from domainmona.adapters import inject, merge
from domainmona.adapters.backbones import build_backbone

METHODS = ("lora", "ssf", "fact-tt", "krona")
GOAL = 0.03


def _adapted(plain: torch.nn.Module, method: str) -> torch.nn.Module:
    model = inject(copy.deepcopy(plain), method)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    model.eval()  # mmdet's Swin returns None from train()/eval()
    return model


def bench(rounds: int) -> dict:
    torch.manual_seed(0)
    plain = build_backbone("swin-t")
    plain.eval()
    x = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    models = {"plain": plain}
    rows = []
    with torch.no_grad():
        for method in METHODS:
            adapted = _adapted(plain, method)
            unmerged = adapted(x)
            models[f"{method} unmerged"] = adapted
            models[f"{method} merged"] = merge(copy.deepcopy(adapted))
            merged = models[f"{method} merged"](x)
            diff = max((a - b).abs().max().item() for a, b in zip(unmerged, merged))
            rows.append({"method": method, "max_diff": diff})
        models["plain copy"] = copy.deepcopy(plain)
        times = interleaved({name: (lambda m=m: m(x)) for name, m in models.items()}, rounds)
    times["plain mean"] = [(a + b) / 2 for a, b in zip(times["plain"], times["plain copy"])]
    for row in rows:
        row["merged_ratio"] = ratio(times, f"{row['method']} merged", "plain mean")
        row["unmerged_ratio"] = ratio(times, f"{row['method']} unmerged", "plain mean")
        row["merged_ms"] = 1e3 * statistics.median(times[f"{row['method']} merged"])
        row["unmerged_ms"] = 1e3 * statistics.median(times[f"{row['method']} unmerged"])
    return {"plain_ms": 1e3 * statistics.median(times["plain mean"]), "control": ratio(times, "plain copy", "plain"),
            "rounds": rounds, "rows": rows}


def markdown(result: dict, date: str, load: float) -> list[str]:
    lines = ["# Merged-model latency (adapters folded into the frozen weights)", "",
             f"{date}, {machine()}, torch {torch.__version__}, 1 thread, load average {load} at the start. "
             f"mmdet Swin-T backbone, one {SIDE}x{SIDE} image, no grad; CPU time per forward, medians of "
             f"{result['rounds']} interleaved rounds (`benchmarks/bench_merge.py`). Goal: merged within "
             f"{GOAL:.0%} of the plain backbone.", "",
             f"Plain backbone: {result['plain_ms']:.0f} ms (mean of its first and last run in each round); "
             f"the last run is {result['control']:.3f}x the first (the noise of this measurement). "
             f"Within goal: merged / plain <= {1 + GOAL:.2f}.", "",
             "| method | merged ms | merged / plain | within goal | unmerged ms | unmerged / plain "
             "| max abs diff merged vs unmerged |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        ok = "yes" if r["merged_ratio"] <= 1 + GOAL else "no"
        lines.append(f"| {r['method']} | {r['merged_ms']:.0f} | {r['merged_ratio']:.3f} | {ok} | "
                     f"{r['unmerged_ms']:.0f} | {r['unmerged_ratio']:.3f} | {r['max_diff']:.1e} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = round(os.getloadavg()[0], 1)
    result = bench(args.rounds)
    write_markdown(RESULTS / "merge.md", markdown(result, datetime.date.today().isoformat(), load))


if __name__ == "__main__":
    main()
