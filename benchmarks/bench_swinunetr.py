"""Sliding-window inference time of Mona-SwinUNETR (fused, and its training form for reference) vs plain SwinUNETR.

Same volume, same shared weights, runs interleaved in one process so machine load hits every model alike;
the median of the repeats is reported. Goal: fused Mona ≤ 1.10x plain. Writes benchmarks/results/swinunetr.md.

    .venv/bin/python benchmarks/bench_swinunetr.py --size 96 96 128 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import monai
import torch
from monai.inferers import sliding_window_inference

from domainmona.adapters import fuse
from domainmona.io import atomic_path
from domainmona.medical.model import assemble
from domainmona.medical.settings import load_settings
from domainmona.medical.summary import parameter_counts

RESULTS = Path(__file__).resolve().parent / "results" / "swinunetr.md"


def _models(feature_size: int, inner_dim: int, classes: int, device: torch.device) -> dict[str, torch.nn.Module]:
    settings = load_settings(None, model={"feature_size": feature_size, "adapter_cfg": {"inner_dim": inner_dim}})
    torch.manual_seed(0)
    plain = assemble(dict(settings["model"], adapter="none"), classes, device=device)
    mona = assemble(settings["model"], classes, device=device)
    mona.load_state_dict(plain.state_dict(), strict=False)  # identical shared weights; adapters extra
    fused = fuse(copy.deepcopy(mona))
    return {"plain SwinUNETR": plain.eval(), "Mona (training form)": mona.eval(), "Mona (fused)": fused.eval()}


def _time(model, volume, roi, overlap, sw_batch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        sliding_window_inference(volume, (roi,) * 3, sw_batch, model, overlap=overlap, mode="gaussian")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _windows(size, roi, overlap) -> int:
    count = 1
    for s in size:
        step = max(int(roi * (1 - overlap)), 1)
        count *= 1 if s <= roi else -(-(s - roi) // step) + 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 128), help="volume D H W (voxels)")
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch", type=int, default=1)
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--inner-dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = _models(args.feature_size, args.inner_dim, args.classes, device)
    torch.manual_seed(1)
    volume = torch.rand(1, 1, *args.size, device=device)
    with torch.inference_mode():  # warm-up; fused and training form must agree before their times mean anything
        outputs = {name: sliding_window_inference(volume, (args.roi,) * 3, args.sw_batch, model,
                                                  overlap=args.overlap, mode="gaussian")
                   for name, model in models.items()}
    agreement = (outputs["Mona (fused)"] - outputs["Mona (training form)"]).abs().max().item()
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(_time(model, volume, args.roi, args.overlap, args.sw_batch, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["plain SwinUNETR"]
    ratio = medians["Mona (fused)"] / base
    counts = parameter_counts(models["Mona (training form)"])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    lines = [
        "# Sliding-window inference: Mona-SwinUNETR vs plain SwinUNETR",
        "",
        f"Written by `benchmarks/bench_swinunetr.py` on {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"- device: {device_name}; torch {torch.__version__}, MONAI {monai.__version__}",
        f"- volume {tuple(args.size)} voxels, roi {args.roi}³, overlap {args.overlap}, sw batch {args.sw_batch}, "
        f"{_windows(args.size, args.roi, args.overlap)} windows, gaussian blending, {args.classes} classes",
        f"- SwinUNETR feature size {args.feature_size}; Mona inner dim {args.inner_dim}: "
        f"{counts['adapter'][0]:,} adapter parameters on a {counts['encoder'][0]:,}-parameter Swin encoder "
        f"({100 * counts['adapter'][0] / counts['encoder'][0]:.1f}%)",
        f"- fused vs training-form Mona logits: max abs difference {agreement:.2e}",
        f"- median of {args.repeats} interleaved runs after one warm-up run each",
        "",
        "| model | median seconds | runs | vs plain |",
        "|---|---:|---|---:|",
        *(f"| {name} | {medians[name]:.2f} | {', '.join(f'{t:.2f}' for t in times[name])} | "
          f"{medians[name] / base:.3f}x |" for name in models),
        "",
        f"**Fused Mona / plain = {ratio:.3f}x** (goal ≤ 1.10x: {'met' if ratio <= 1.10 else 'not met'}).",
        "",
    ]
    with atomic_path(args.out) as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
