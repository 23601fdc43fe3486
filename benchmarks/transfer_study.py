"""Few-shot transfer study of every adapter method on the CPU (issue 7).

Source: the micro Swin shipped in domainmona/assets/, pretrained by `domainmona.detection.pretrain_micro` to
classify generated tiles (tank/plane/pool/roof on green terrain) and regress their orientation.
Target: semantic segmentation of the generated DOTA-style scenes (vehicle/ship/court/container, rotated,
on brown terrain), 96x96 px, with K in {1, 5, 20} training scenes. Every method (domainmona.adapters.METHODS)
gets the same budget (steps, batch, head, schedule); the K scenes of a (K, seed) pair are the same for
every method, so differences between methods are paired. Metric: mIoU of the four object classes on 24
held-out scenes. One thread (`torch.set_num_threads(1)`): the CPU is shared.
Writes benchmarks/results/transfer_study.{md,json,png} (`--quick`: transfer_study_quick.*, a smoke run).

`--vit`: the plain-ViT rows (`VIT_ARMS`), on the shipped micro ViT (pretrained on the same source task, 96 px
tiles): ViTDet's simple pyramid with the ViT fine-tuned (`full`, the reference) or frozen (`fixed`), the frozen
ViT's side networks HST and ViT-CoMer, and Mona in the ViT's blocks under the simple pyramid; the same task,
budget and paired K scenes. Writes transfer_study_vit.{md,json,png}.

    .venv/bin/python benchmarks/transfer_study.py [--vit] [--quick] [--steps 100] [--seeds 3]
                                                  [--from-json RESULTS.json]
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
from domainmona.adapters.backbones import get_backbone
from domainmona.console import console, progress
from domainmona.detection.synthetic import SYNTHETIC_CLASSES
from domainmona.io import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import study_arguments  # noqa: E402
from transfer.data import scene_tensors  # noqa: E402
from transfer.report import write_results  # noqa: E402
from transfer.run import (BASE_WEIGHT_METHODS, HEAD_LR, PEFT_LR, Arm, Budget, adapt,  # noqa: E402
                          inference_ratios, peak_memory_mb, undefined_reason)

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 96
POOL, TEST = 40, 24  # generated training pool (K scenes drawn per seed) and held-out scenes
LATENCY_ROUNDS = 31
MICRO_VIT = "micro-vit"
# HST's released classification widths (32-72; 0.57 M parameters here), its smallest preset: dense-s (64-256) would
# be 5.3 M, 3.7x the micro ViT's 1.42 M. ViT-CoMer's auto preset (det-B's ratios: value 0.5, MRFP D/2, last-map
# mode, 4 extra CTIs) with one deformable head per 32 of the ViT's 96 channels and a stem of width 16 (0.50 M in
# all; the default 64, sized for ViT-B, gives a 1.1 M stem alone).
# Mona's inner dim 8: 1/12 of the width, its default 64's share of ViT-B's 768 (4.7% of the micro ViT, as 16
# is 4.3% of the micro Swin; 16 would be 8.8%).
VIT_ARMS = (Arm("full", MICRO_VIT, "simple"), Arm("fixed", MICRO_VIT, "simple"),
            Arm("fixed", MICRO_VIT, "hst", {"preset": "cls"}),
            Arm("fixed", MICRO_VIT, "vit-comer", {"deform_heads": 3, "base_width": 16}),
            Arm("mona", MICRO_VIT, "simple", method_cfg={"inner_dim": 8}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit", action="store_true", help="the plain-ViT rows on the micro ViT (VIT_ARMS)")
    parser.add_argument("--quick", action="store_true", help="smoke run: K in {1, 5}, 1 seed, 4 steps")
    parser.add_argument("--steps", type=int, default=Budget.steps)
    args = study_arguments(parser, lambda stem, saved: write_results(stem, saved["setup"], saved["runs"]))
    if args is None:
        return
    torch.set_num_threads(args.threads)
    shots, seeds, budget = ((1, 5), 1, Budget(steps=4)) if args.quick else ((1, 5, 20), args.seeds, Budget(args.steps))
    n_classes = len(SYNTHETIC_CLASSES) + 1
    candidates = list(VIT_ARMS) if args.vit else [Arm(m) for m in METHODS]
    undefined = {arm.label: reason for arm in candidates if (reason := undefined_reason(arm))}
    arms = [arm for arm in candidates if arm.label not in undefined]
    with tempfile.TemporaryDirectory() as tmp:
        pool = scene_tensors(Path(tmp) / "pool", POOL, seed=1000, side=SIDE)
        test = scene_tensors(Path(tmp) / "test", TEST, seed=2000, side=SIDE)
    runs, start = [], time.perf_counter()
    with progress() as bar:
        task = bar.add_task("transfer study", total=len(shots) * seeds * len(arms))
        for k in shots:
            for seed in range(seeds):
                chosen = torch.from_numpy(np.random.default_rng([k, seed]).choice(POOL, k, replace=False))
                train = (pool[0][chosen], pool[1][chosen])
                for arm in arms:
                    runs.append({"k": k, **adapt(arm, train, test, n_classes, seed, budget)})
                    bar.update(task, advance=1,
                               description=f"K={k} seed {seed} {arm.label}: mIoU {runs[-1]['miou']:.3f}")
        memory = bar.add_task("peak memory, one fresh process per row", total=len(arms))
        for arm in arms:
            peak = peak_memory_mb(arm, (pool[0][:5], pool[1][:5]), (test[0][:1], test[1][:1]), n_classes)
            for run in runs:
                run["peak_mb"] = peak if run["method"] == arm.label else run["peak_mb"]
            bar.update(memory, advance=1)
    latency = inference_ratios(arms, n_classes, SIDE, rounds=5 if args.quick else LATENCY_ROUNDS)
    for run in runs:
        run["merged_latency"] = latency[run["method"]]
    setup = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) of a "
                        f"shared {os.cpu_count()}-core CPU, torch {torch.__version__}",
             "side": SIDE, "pool": POOL, "test": TEST, "shots": list(shots), "seeds": seeds,
             "steps": budget.steps, "head_lr": HEAD_LR, "peft_lr": PEFT_LR,
             "base_weight_lr": BASE_WEIGHT_METHODS, "batch_size": budget.batch_size,
             "latency_rounds": 5 if args.quick else LATENCY_ROUNDS, "not_defined": undefined, "wall_seconds": time.perf_counter() - start}
    if args.vit:
        setup.update(study="vit", backbone=MICRO_VIT, pretraining=pretraining_recipe(MICRO_VIT),
                     rows={arm.label: {"side": arm.side, "side_cfg": arm.side_cfg, "method": arm.method,
                                       "method_cfg": arm.method_cfg} for arm in arms})
    name = "transfer_study" + ("_vit" if args.vit else "") + ("_quick" if args.quick else "")
    with atomic_path(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps({"setup": setup, "runs": runs}, indent=1))
    write_results(RESULTS / name, setup, runs)
    console.print(f"wrote {RESULTS / name}.md/.json/.png in {setup['wall_seconds']:.0f} s")


def pretraining_recipe(backbone: str) -> dict[str, str]:
    """The recipe the shipped weights of `backbone` were pretrained with (their safetensors metadata)."""
    from safetensors import safe_open

    with safe_open(str(get_backbone(backbone).shipped), "pt") as weights:
        return weights.metadata()


if __name__ == "__main__":
    main()
