"""CPU cost of one multi-scale deformable attention call on the torch path, as ViT-CoMer-B's detection
configuration makes it: D=768, 12 heads, 4 points, value_ratio 0.5, 3 levels at strides 8/16/32, every token a
query at the centre of its own cell (ViT-CoMer calls this 12 times per forward). Batch 1, fp32, 512^2 and
1024^2 inputs. Each cell is measured in a fresh interpreter (an allocator that already served a run reuses its
memory, and every later peak would read ~0): one untimed call, then the median wall and CPU seconds of 3, and
the rise of peak resident memory over all 4. CPU time is what to compare across runs on a busy machine: wall
time also counts the time slices other processes take. Writes benchmarks/results/msda.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_msda.py
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from backbone_table import cpu_model
from report import write_markdown

from domainmona.adapters.side.msda import MSDeformAttn

RESULT = Path(__file__).parent / "results" / "msda.md"
D_MODEL, HEADS, POINTS, VALUE_RATIO = 768, 12, 4, 0.5
STRIDES = (8, 16, 32)
SIDES = (512, 1024)
MODES = ("forward", "forward+backward")
REPEATS = 3


def _status_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1])


def inputs(side: int) -> tuple[torch.Tensor, ...]:
    """Tokens of the three levels (query = value, as in ViT-CoMer's extractors), each query's reference point
    at the centre of its own cell, the level shapes and starts."""
    shapes = [(side // s, side // s) for s in STRIDES]
    centres = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        centres.append(torch.stack((x, y), -1).reshape(-1, 2))
    reference = torch.cat(centres)[None, :, None]  # (1, Q, 1, 2): the same point on every level
    spatial = torch.tensor(shapes)
    sizes = spatial.prod(1)
    start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    tokens = torch.randn(1, len(reference[0]), D_MODEL, generator=torch.Generator().manual_seed(0))
    return tokens, reference, spatial, start


def measure(side: int, mode: str) -> dict:
    """Run in a fresh interpreter: wall and CPU seconds per call (medians of REPEATS after one untimed call,
    which pays the first page faults) and the peak-RSS rise over all the calls in MiB."""
    torch.manual_seed(0)
    attn = MSDeformAttn(D_MODEL, n_levels=len(STRIDES), n_heads=HEADS, n_points=POINTS, value_ratio=VALUE_RATIO)
    tokens, reference, spatial, start = inputs(side)
    tokens.requires_grad_(mode != "forward")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    rss_before = _status_kb("VmRSS")
    wall, cpu = [], []
    for _ in range(1 + REPEATS):
        began, began_cpu = time.perf_counter(), time.process_time()
        if mode == "forward":
            with torch.no_grad():
                attn(tokens, reference, tokens, spatial, start)
        else:
            attn(tokens, reference, tokens, spatial, start).sum().backward()
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    spread = (max(wall[1:]) - min(wall[1:])) / statistics.median(wall[1:])
    return {"wall": statistics.median(wall[1:]), "cpu": statistics.median(cpu[1:]), "spread": spread,
            "peak_mib": (_status_kb("VmHWM") - rss_before) / 1024, "queries": len(tokens[0]),
            "threads": torch.get_num_threads()}


def main() -> None:
    load = os.getloadavg()
    results = {}
    for side in SIDES:
        for mode in MODES:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results[side, mode] = pool.submit(measure, side, mode).result()
            print(side, mode, results[side, mode], flush=True)
    threads = results[SIDES[0], MODES[0]]["threads"]
    spread = max(r["spread"] for r in results.values())
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    lines = [
        "# Multi-scale deformable attention, torch path, on the CPU", "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_model()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={omp} ({threads} torch threads); torch {torch.__version__}, Python "
        f"{platform.python_version()}; load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end; the wall times of one row's {REPEATS} timed calls spread by up to {spread:.0%} of their median "
        "(a load above the core count means other processes took time slices: compare CPU times). Command: "
        f"`OMP_NUM_THREADS={omp} .venv/bin/python benchmarks/bench_msda.py`.", "",
        f"One `MSDeformAttn` call (`domainmona.adapters.side.msda`, backend torch: one `F.grid_sample` per level) "
        f"in ViT-CoMer-B's detection configuration: D={D_MODEL}, {HEADS} heads, {POINTS} points, value_ratio "
        f"{VALUE_RATIO}, levels at strides {'/'.join(map(str, STRIDES))}, every token a query with its reference "
        "point at its own cell's centre, weights at init; batch 1, fp32. Each row is measured in a fresh "
        f"interpreter: one untimed call, then medians of {REPEATS}, as wall seconds / CPU seconds (CPU time is "
        f"summed over the {threads} threads and does not count the time slices other processes take), and the "
        "rise of peak resident memory over all the calls (forward under `no_grad`; forward+backward: "
        "`.sum().backward()` into the module's weights and the tokens). ViT-CoMer makes 12 such calls per "
        "forward.", "",
        "| input | levels | queries | forward, wall / CPU | forward+backward, wall / CPU | peak rise, forward "
        "| peak rise, forward+backward |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for side in SIDES:
        forward, both = results[side, "forward"], results[side, "forward+backward"]
        grids = ", ".join(f"{side // s}²" for s in STRIDES)
        lines.append(f"| {side}² | {grids} | {forward['queries']:,} | {forward['wall']:.2f} s / "
                     f"{forward['cpu']:.2f} s | {both['wall']:.2f} s / {both['cpu']:.2f} s | "
                     f"{forward['peak_mib']:,.0f} MiB | {both['peak_mib']:,.0f} MiB |")
    write_markdown(RESULT, lines)


if __name__ == "__main__":
    main()
