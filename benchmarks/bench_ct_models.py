"""The CT demo recipe for SwinUNETR, UNETR and SegResNet, each with Mona and with full fine-tuning, side by side.

For every network: `segment-ct demo --model NAME` (pipelines/ct-demo.yaml: generated CT, 3 training cases, one
held out and predicted back in its scanner geometry, then evaluated) with Mona and with adapter 'none' (full
fine-tuning of the plain network): the held-out Dice and the CPU seconds of the whole run (this process only,
so other jobs on a shared machine are not charged to it). Then the adapter file's size and its Mona tensors,
and sliding-window inference of the merged+fused Mona network vs the plain one with the same weights (both
interleaved in every round, CPU time, median of per-round ratios; goal <= 1.05x). Writes
benchmarks/results/ct_models.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ct_models.py [--epochs 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import tempfile
import time
from pathlib import Path

import torch
from bench_adapters import interleaved, ratio
from monai.inferers import sliding_window_inference
from report import machine, write_markdown

from domainmona.adapters import prepare_for_inference
from domainmona.medical.demo import demo_settings, run_demo
from domainmona.medical.model import assemble
from domainmona.medical.settings import NETWORKS
from domainmona.medical.summary import parameter_counts
from domainmona.recipes import load_recipe

RESULTS = Path(__file__).resolve().parent / "results" / "ct_models.md"
GOAL = 1.05
VOLUME = (96, 96, 64)  # voxels: several 64^3 windows at overlap 0.5


def train_row(name: str, adapter: str, epochs: int, work: Path) -> dict:
    """One demo run: held-out Dice, CPU seconds, and the adapter file it wrote."""
    out = work / f"{name}-{adapter}"
    start = time.process_time()
    dice = run_demo(out, max_epochs=epochs, model=name, adapter=adapter)
    seconds = time.process_time() - start
    adapter_file = out / "run" / "checkpoints" / "best_adapter.safetensors"
    return {"dice": dice, "cpu_s": seconds, "file_bytes": adapter_file.stat().st_size if adapter_file.exists() else 0}


def inference_row(name: str, rounds: int) -> dict:
    """Merged and fused Mona network vs the plain one (same base weights) over one volume, sliding window."""
    settings = demo_settings(load_recipe("ct-demo"), model=name)
    roi = settings["train"]["roi"]
    torch.manual_seed(0)
    mona = assemble(settings["model"], 4, roi=roi)
    plain = assemble(dict(settings["model"], adapter="none"), 4, roi=roi)
    plain.load_state_dict(mona.state_dict(), strict=False)  # the Mona model's base weights; adapters extra
    with torch.no_grad():  # adapters away from their init, as after training
        for param in mona.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)
    counts = parameter_counts(mona)
    training_form = copy.deepcopy(mona).eval()
    fused = prepare_for_inference(mona).eval()
    plain.eval()
    volume = torch.rand(1, 1, *VOLUME, generator=torch.Generator().manual_seed(1))

    def infer(model):
        return sliding_window_inference(volume, (roi,) * 3, settings["train"]["sw_batch_size"], model,
                                        overlap=settings["train"]["overlap"], mode="gaussian")

    with torch.inference_mode():
        agreement = (infer(fused) - infer(training_form)).abs().max().item()
        times = interleaved({"plain": lambda: infer(plain), "fused": lambda: infer(fused)}, rounds)
    return {"ratio": ratio(times, "fused", "plain"), "plain_s": min(times["plain"]), "fused_s": min(times["fused"]),
            "agreement": agreement, "adapter_params": counts["adapter"][0], "encoder_params": counts["encoder"][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="demo epochs (the recipe's 40 take ~6 min per "
                        "SwinUNETR run alone on 2 cores; 6 runs share this machine)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved inference rounds per network")
    parser.add_argument("--models", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            rows[name] = {adapter: train_row(name, adapter, args.epochs, Path(work)) for adapter in ("mona", "none")}
            rows[name]["inference"] = inference_row(name, args.rounds)
            print(name, rows[name], flush=True)
    recipe = load_recipe("ct-demo")
    lines = [
        "# segment-ct networks: Mona vs full fine-tuning on the CT demo recipe",
        "",
        f"Written by `benchmarks/bench_ct_models.py` on {datetime.date.today().isoformat()}, {machine()}, one "
        f"thread (OMP_NUM_THREADS=1), torch {torch.__version__}.",
        "",
        f"- recipe `pipelines/ct-demo.yaml`: {recipe['data']['cases']} generated CT cases of "
        f"{tuple(recipe['data']['shape'])} voxels, {recipe['shots']} train, 1 held out, roi "
        f"{recipe['settings']['train']['roi']}; **{args.epochs} epochs** (the recipe's: "
        f"{recipe['settings']['train']['max_epochs']}; fewer keep six runs short on a shared CPU), the recipe's "
        "small sizes "
        "(SwinUNETR width 12; UNETR ViT width 96, 12 blocks; SegResNet width 8) and Mona inner dim 16",
        "- Dice: mean foreground Dice of the held-out case after `predict` (scanner geometry) and `evaluate`; "
        "CPU s: this process's CPU seconds for the whole demo run (training, validation, prediction)",
        "- adapter file: `best_adapter.safetensors` (the encoder's Monas plus the decoder, which trains); Mona "
        "tensors: the adapters alone in float32",
        f"- inference: sliding window over a {VOLUME} volume, merged+fused Mona network vs the plain network with "
        f"the same base weights, interleaved, median of {args.rounds} per-round CPU-time ratios (goal <= {GOAL}x)",
        "",
        "| network | lr (recipe's `networks`) | Dice Mona | Dice full | CPU s Mona | CPU s full | adapter file | Mona tensors (% of encoder) "
        "| fused / plain inference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        mona, full, inference = row["mona"], row["none"], row["inference"]
        share = 100 * inference["adapter_params"] / inference["encoder_params"]
        lr = demo_settings(recipe, model=name)["train"]["lr"]
        lines.append(f"| {name} | {lr:g} | {mona['dice']:.3f} | {full['dice']:.3f} | {mona['cpu_s']:.0f} | {full['cpu_s']:.0f} "
                     f"| {mona['file_bytes'] / 2**20:.2f} MB | {inference['adapter_params'] * 4 / 2**20:.2f} MB "
                     f"({share:.1f}%) | {inference['ratio']:.3f}x "
                     f"({'met' if inference['ratio'] <= GOAL else 'not met'}) |")
    lines += ["", "Fused vs training-form Mona logits, max abs difference: "
              + ", ".join(f"{name} {row['inference']['agreement']:.1e}" for name, row in rows.items()) + ".",
              "Fastest inference run, plain / fused: "
              + ", ".join(f"{name} {row['inference']['plain_s']:.2f} s / {row['inference']['fused_s']:.2f} s"
                          for name, row in rows.items()) + "."]
    write_markdown(args.out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
