"""The GPU check (scripts/device_check.sh runs it on a borrowed H100/H200; README "On a GPU").

Checks, in order: `domainmona doctor`; the detection demo recipe trained (AMP) and tested; one Mona, fused vs
the official formulation, at each Swin-B stage shape of a 1024² image; Mona-Swin-B vs plain Swin-B forward
(latency and counted FLOPs); one training step of Swin-B, Mona vs full fine-tuning, with and without AMP (time
and `torch.cuda.max_memory_allocated`); the CT demo recipe; the geo segmentation demo
(geo-seg training + segmentation tile-predict). After each check OUT/device_check.json and .md are
rewritten, so a run cut off by the command's time limit still brings back what it measured; results
accumulate in WORK/../device_check.json across the device commands (`--checks run`, then `--checks geo`).
`--smoke` runs everything small on whatever device there is, to rehearse the script here on the CPU.

    python benchmarks/device_check.py --checks run|geo|all --out $OUT [--work .device/work] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
SWIN_B_STAGES = ((128, 256), (256, 128), (512, 64), (1024, 32))  # (channels, tokens per side) at 1024²


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], rounds: int) -> float:
    """Median seconds of `fn` over `rounds` calls after two warm-up calls, the device synchronised."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli(args: list[str], work: Path, log_name: str) -> dict:
    """Run `domainmona ARGS` in a fresh process; its exit code, seconds and last output lines."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "domainmona.cli", *args], cwd=work, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "160"})
    seconds = time.perf_counter() - start
    (work / f"{log_name}.log").write_text(proc.stdout + proc.stderr)
    return {"rc": proc.returncode, "seconds": round(seconds, 1),
            "tail": (proc.stdout + proc.stderr).strip().splitlines()[-6:]}


def number_after(pattern: str, text: list[str]) -> float | None:
    match = re.search(pattern + r"\s*([0-9.]+)", "\n".join(text))
    return float(match.group(1)) if match else None


def check_doctor(work: Path) -> dict:
    return cli(["doctor"], work, "doctor")


def check_detection_demo(work: Path) -> dict:
    result = cli(["demo", "--out", str(work / "detection-demo")], work, "detection-demo")
    summary = work / "detection-demo" / "demo.json"
    if summary.is_file():
        result["map"] = json.loads(summary.read_text())["map"]
    return result


def check_mona_module(device: torch.device, smoke: bool) -> list[dict]:
    from domainmona.adapters import Mona, fuse

    rows = []
    for channels, side in SWIN_B_STAGES[2:] if smoke else SWIN_B_STAGES:
        torch.manual_seed(0)
        mona = Mona(channels).to(device).eval()
        fused = fuse(copy.deepcopy(mona))
        x = torch.randn(1, side * side, channels, device=device)
        with torch.no_grad():
            official = timed(lambda: mona.reference_forward(x, (side, side)), 5 if smoke else 50)
            fast = timed(lambda: fused(x, (side, side)), 5 if smoke else 50)
            diff = (mona.reference_forward(x, (side, side)) - fused(x, (side, side))).abs().max().item()
        rows.append({"channels": channels, "tokens": f"{side}x{side}", "official_ms": 1e3 * official,
                     "fused_ms": 1e3 * fast, "speedup": official / fast, "max_abs_diff": diff})
    return rows


def check_forward(device: torch.device, smoke: bool) -> dict:
    from domainmona.adapters import fuse, inject
    from domainmona.adapters.backbones import build_backbone

    side = 256 if smoke else 1024
    torch.manual_seed(0)
    plain = build_backbone("swin-t" if smoke else "swin-b").to(device)
    plain.eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
    mona = fuse(inject(copy.deepcopy(plain), "mona"))
    mona.eval()
    x = torch.randn(1, 3, side, side, device=device)
    with torch.no_grad():
        times = {name: timed(lambda m=m: m(x), 3 if smoke else 30) for name, m in (("plain", plain), ("mona", mona))}
        flops = {}
        for name, model in (("plain", plain), ("mona", mona)):
            with FlopCounterMode(display=False) as counter:
                model(x)
            flops[name] = counter.get_total_flops()
    return {"backbone": "swin-t" if smoke else "swin-b", "side": side, "plain_ms": 1e3 * times["plain"],
            "mona_ms": 1e3 * times["mona"], "overhead_pct": 100 * (times["mona"] / times["plain"] - 1),
            "flops_overhead_pct": 100 * (flops["mona"] / flops["plain"] - 1)}


def check_training_step(device: torch.device, smoke: bool) -> list[dict]:
    """One AdamW step of Swin-B at 1024² (batch 1; the loss touches every output level) per method and precision."""
    from domainmona.adapters import inject
    from domainmona.adapters.backbones import build_backbone
    from domainmona.devices import amp_dtype, autocast, grad_scaler

    side = 256 if smoke else 1024
    rows = []
    for method in ("full", "mona"):
        for amp in (False, True):
            dtype = amp_dtype(device, amp)
            if amp and dtype is None:
                continue  # no mixed precision off CUDA
            torch.manual_seed(0)
            model = inject(build_backbone("swin-t" if smoke else "swin-b").to(device), method)
            model.train()
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
            scaler = grad_scaler(device, dtype)
            image = torch.randn(1, 3, side, side, device=device)

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    loss = sum(f.float().square().mean() for f in model(image))
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(step, 2 if smoke else 10)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            rows.append({"method": method, "precision": str(dtype or torch.float32).removeprefix("torch."),
                         "step_ms": 1e3 * seconds, "peak_mib": peak,
                         "trainable": sum(p.numel() for p in trainable)})
            del model, optimizer
    return rows


def check_ct_demo(work: Path, smoke: bool) -> dict:
    epochs = ["--max-epochs", "2"] if smoke else []  # the recipe's 40 epochs: well under a minute on a GPU
    result = cli(["segment-ct", "demo", "--out", str(work / "ct-demo"), *epochs], work, "ct-demo")
    evaluation = work / "ct-demo" / "evaluation.json"
    if evaluation.is_file():
        result["mean_dice"] = json.loads(evaluation.read_text())["mean_dice"]
    return result


def check_geo_demo(work: Path) -> dict:
    result = cli(["geo-demo", "--task", "segmentation", "--out", str(work / "geo-demo")], work, "geo-demo")
    result["miou"] = number_after(r"mIoU over the scene:", result["tail"])
    return result


def environment(device: torch.device) -> dict:
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
            "cpus": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    lines = [f"# GPU check, {env.get('date')}: {env.get('gpu', env.get('device'))}", "",
             f"Python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('cuda')}), {env.get('cpus')} CPU "
             "cores. Written by benchmarks/device_check.py (scripts/device_check.sh).", "",
             "| check | result | seconds |", "| --- | --- | --- |"]
    for name, key, metric in (("doctor", "doctor", None), ("detection demo (train AMP + test)", "detection_demo",
                                                           "map"),
                              ("CT demo", "ct_demo", "mean_dice"), ("geo segmentation demo", "geo_demo", "miou")):
        if "rc" in results.get(key, {}) and "error" not in results[key]:
            r = results[key]
            value = f"{metric} {r[metric]:.3f}" if r.get(metric) is not None else ""
            lines.append(f"| {name} | {'ok' if r['rc'] == 0 else 'FAILED rc ' + str(r['rc'])} {value} | {r['seconds']} |")
    errors = [f"- {name}: {r['error']}" for name, r in results.items() if isinstance(r, dict) and "error" in r]
    if errors:
        lines += ["", "Checks that raised:", "", *errors]
    if isinstance(results.get("mona_module"), list):
        lines += ["", "One Mona at Swin-B stage shapes (1024² image), fused vs the official formulation:", "",
                  "| channels | tokens | official ms | fused ms | speed-up | max abs diff |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['channels']} | {r['tokens']} | {r['official_ms']:.3f} | {r['fused_ms']:.3f} | "
                  f"{r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |" for r in results["mona_module"]]
    if "plain_ms" in results.get("forward", {}):
        f = results["forward"]
        lines += ["", f"{f['backbone']} forward at {f['side']}² (fp32, batch 1): plain {f['plain_ms']:.2f} ms, "
                      f"Mona (fused) {f['mona_ms']:.2f} ms: {f['overhead_pct']:+.1f}% time for "
                      f"{f['flops_overhead_pct']:+.1f}% counted FLOPs."]
    if isinstance(results.get("training_step"), list):
        lines += ["", "One AdamW training step (batch 1, 1024²):", "",
                  "| method | precision | step ms | peak MiB | trainable |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['method']} | {r['precision']} | {r['step_ms']:.1f} | "
                  f"{'' if r['peak_mib'] is None else round(r['peak_mib'])} | {r['trainable']:,} |"
                  for r in results["training_step"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", choices=("run", "geo", "all"), default="all")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=ROOT / ".device" / "work")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from domainmona.devices import default_device

    device, work = default_device(), args.work
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    state = work.parent / "device_check.json"
    results = json.loads(state.read_text()) if state.is_file() else {}
    results["environment"] = environment(device)
    checks = {"doctor": lambda: check_doctor(work),
              "detection_demo": lambda: check_detection_demo(work),
              "mona_module": lambda: check_mona_module(device, args.smoke),
              "forward": lambda: check_forward(device, args.smoke),
              "training_step": lambda: check_training_step(device, args.smoke),
              "ct_demo": lambda: check_ct_demo(work, args.smoke),
              "geo_demo": lambda: check_geo_demo(work)}
    if args.checks != "all":
        checks = {k: v for k, v in checks.items() if (k == "geo_demo") == (args.checks == "geo")}
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            results[name] = check()
        except Exception as exc:  # one failed check must not lose the others' numbers
            results[name] = {"rc": -1, "seconds": 0.0, "error": f"{type(exc).__name__}: {exc}"}
        print(f"[device_check] {name}: {time.perf_counter() - start:.1f} s", flush=True)
        for folder in (args.out, state.parent):
            (folder / "device_check.json").write_text(json.dumps(results, indent=2))
        (args.out / "device_check.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
