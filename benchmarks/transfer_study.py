"""Few-shot transfer study of every adapter method on the CPU (issue 7).

Source: the micro Swin shipped in domainmona/assets/, pretrained by `domainmona.detection.pretrain_micro` to
classify generated tiles (tank/plane/pool/roof on green terrain) and regress their orientation.
Target: semantic segmentation of the generated DOTA-style scenes (vehicle/ship/court/container, rotated,
on brown terrain), 96x96 px, with K in {1, 5, 20} training scenes. Every method (domainmona.adapters.METHODS)
gets the same budget (steps, batch, head, schedule); the K scenes of a (K, seed) pair are the same for
every method, so differences between methods are paired. Metric: mIoU of the four object classes on 24
held-out scenes. One thread (`torch.set_num_threads(1)`): the CPU is shared.
Writes benchmarks/results/transfer_study.{md,json,png} (`--quick`: transfer_study_quick.*, a smoke run).

    .venv/bin/python benchmarks/transfer_study.py [--quick] [--steps 100] [--seeds 3] [--from-json RESULTS.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from domainmona.adapters import METHODS
from domainmona.console import console, progress
from domainmona.detection.synthetic import SYNTHETIC_CLASSES
from domainmona.io import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer.data import scene_tensors  # noqa: E402
from transfer.report import write_results  # noqa: E402
from transfer.run import (BASE_WEIGHT_METHODS, HEAD_LR, PEFT_LR, Budget, adapt, inference_ratios,  # noqa: E402
                          peak_memory_mb, undefined_reason)

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 96
POOL, TEST = 40, 24  # generated training pool (K scenes drawn per seed) and held-out scenes
LATENCY_ROUNDS = 31


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: K in {1, 5}, 1 seed, 4 steps")
    parser.add_argument("--steps", type=int, default=Budget.steps)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--from-json", type=Path, help="only re-render the .md and .png of a saved run")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        write_results(args.from_json.with_suffix(""), saved["setup"], saved["runs"])
        return
    torch.set_num_threads(args.threads)
    shots, seeds, budget = ((1, 5), 1, Budget(steps=4)) if args.quick else ((1, 5, 20), args.seeds, Budget(args.steps))
    n_classes = len(SYNTHETIC_CLASSES) + 1
    undefined = {m: reason for m in METHODS if (reason := undefined_reason(m))}
    methods = [m for m in METHODS if m not in undefined]
    with tempfile.TemporaryDirectory() as tmp:
        pool = scene_tensors(Path(tmp) / "pool", POOL, seed=1000, side=SIDE)
        test = scene_tensors(Path(tmp) / "test", TEST, seed=2000, side=SIDE)
    runs, start = [], time.perf_counter()
    with progress() as bar:
        task = bar.add_task("transfer study", total=len(shots) * seeds * len(methods))
        for k in shots:
            for seed in range(seeds):
                chosen = torch.from_numpy(np.random.default_rng([k, seed]).choice(POOL, k, replace=False))
                train = (pool[0][chosen], pool[1][chosen])
                for method in methods:
                    runs.append({"k": k, **adapt(method, train, test, n_classes, seed, budget)})
                    bar.update(task, advance=1, description=f"K={k} seed {seed} {method}: mIoU {runs[-1]['miou']:.3f}")
        memory = bar.add_task("peak memory, one fresh process per method", total=len(methods))
        for method in methods:
            peak = peak_memory_mb(method, (pool[0][:5], pool[1][:5]), (test[0][:1], test[1][:1]), n_classes)
            for run in runs:
                run["peak_mb"] = peak if run["method"] == method else run["peak_mb"]
            bar.update(memory, advance=1)
    latency = inference_ratios(methods, n_classes, SIDE, rounds=5 if args.quick else LATENCY_ROUNDS)
    for run in runs:
        run["merged_latency"] = latency[run["method"]]
    setup = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) of a "
                        f"shared {os.cpu_count()}-core CPU, torch {torch.__version__}",
             "side": SIDE, "pool": POOL, "test": TEST, "shots": list(shots), "seeds": seeds,
             "steps": budget.steps, "head_lr": HEAD_LR, "peft_lr": PEFT_LR,
             "base_weight_lr": BASE_WEIGHT_METHODS, "batch_size": budget.batch_size,
             "latency_rounds": 5 if args.quick else LATENCY_ROUNDS, "not_defined": undefined, "wall_seconds": time.perf_counter() - start}
    name = "transfer_study_quick" if args.quick else "transfer_study"
    with atomic_path(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps({"setup": setup, "runs": runs}, indent=1))
    write_results(RESULTS / name, setup, runs)
    console.print(f"wrote {RESULTS / name}.md/.json/.png in {setup['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
