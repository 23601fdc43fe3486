"""What a plain ViT's side network costs: trainable parameters, one training step (CPU and wall seconds, peak
memory), the adapter file and inference latency of ViT-B/16 with the simple pyramid (full, fixed, Mona), HST
(dense-s, cls) and ViT-CoMer (det-B, fixed and Mona) at 512² and 1024², batch 1, fp32, on the CPU. Training
rows are `domainmona adapters probe` itself (`probe.settings` + `probe.probe`: one fresh process per row);
inference latency is measured here, also in a fresh process per row, after `prepare_for_inference`. Writes
benchmarks/results/side_costs.md and side_costs.json.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/side_costs.py           # ViT-B at 512² and 1024² (about an hour)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/side_costs.py --quick   # ViT-S at 128², 3 rows, printed (30-70 s)

--quick took 32 s on 2 cores at a load average of 2.6, 69 s at 6. With 2 threads there it takes minutes: a
thread waiting at OpenMP's barrier for one that is descheduled spins, and at 128² ViT-CoMer's many small
operations are almost all barrier.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from backbone_table import cpu_model
from report import write_markdown

from domainmona.adapters import probe
from domainmona.adapters.report import method_reports
from domainmona.io import atomic_path

RESULT = Path(__file__).parent / "results" / "side_costs.md"
# (side network, its options, the ViT's adapter method); the simple pyramid with `fixed` is what the others are
# read against.
ROWS = (
    ("simple", {}, "full"),
    ("simple", {}, "fixed"),
    ("simple", {}, "mona"),
    ("hst", {}, "fixed"),
    ("hst", {"preset": "cls"}, "fixed"),
    ("vit-comer", {}, "fixed"),
    ("vit-comer", {}, "mona"),
)
# --quick: one row per side network (the baseline, HST with its LayerNorms, ViT-CoMer with Monas to fuse), as
# each row costs two fresh interpreters (~15 s on 2 busy cores) and a test should take under a minute.
QUICK_ROWS = (("simple", {}, "fixed"), ("hst", {"preset": "cls"}, "fixed"), ("vit-comer", {}, "mona"))
FULL = ("vit-b-16", (512, 1024), ROWS)
QUICK = ("vit-s-16", (128,), QUICK_ROWS)
LIMIT_S = 600  # per measurement (training row, inference row): over it the cell says "not measured"
REPEATS = 3
# One MSDeformAttn call of ViT-CoMer-B (CPU seconds: forward under no_grad, forward+backward), copied from
# benchmarks/results/msda.md (2026-12-05); ViT-CoMer makes 12 per forward.
MSDA_CPU_S = {512: (0.37, 1.13), 1024: (1.44, 4.32)}
MSDA_CALLS = 12


def inference_latency(setting: probe.Setting) -> dict:
    """In this process: the probe's model and input for `setting`, merged and fused for prediction, in eval
    mode; the median CPU and wall seconds of REPEATS forwards under no_grad after one untimed (first page
    faults, lazy initialisation)."""
    from domainmona.adapters.merge import prepare_for_inference

    model, image, _ = probe.build(setting, torch.device("cpu"))
    prepare_for_inference(model).eval()
    wall, cpu = [], []
    with torch.no_grad():
        for _ in range(1 + REPEATS):
            began, began_cpu = time.perf_counter(), time.process_time()
            model(image)
            wall.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
    return {"cpu_s": statistics.median(cpu[1:]), "wall_s": statistics.median(wall[1:]),
            "threads": torch.get_num_threads()}


def latency_in_fresh_process(setting: probe.Setting) -> dict:
    """`inference_latency` in a fresh interpreter (as the probe's training rows: no shared allocator caches or
    thread pools between rows); {"failure": why} when it fails or takes over LIMIT_S."""
    try:
        done = subprocess.run([sys.executable, __file__, "--latency-of", json.dumps(dataclasses.asdict(setting))],
                              capture_output=True, text=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        return {"failure": f"not measured (> {LIMIT_S // 60} min)"}
    if done.returncode:
        return {"failure": "killed (out of memory?)" if done.returncode < 0 else
                (done.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def training_step(setting: probe.Setting) -> dict:
    """The probe's row for `setting` (a fresh process), with a run over LIMIT_S marked as not measured."""
    began = time.perf_counter()
    [row] = probe.probe([setting], timeout=LIMIT_S)
    out = {k: v for k, v in dataclasses.asdict(row).items() if k != "setting"}
    if row.failure and time.perf_counter() - began >= LIMIT_S:
        out["failure"] = f"not measured (> {LIMIT_S // 60} min)"
    return out


def measure(backbone: str, size: int, steps: int, side: str, side_cfg: dict, method: str, report) -> dict:
    """One row: the training step and inference latency at `size`, the trainable counts of `report` (`adapters
    report`: the same at every size, and there when the step is not measured), and the load average
    (/proc/loadavg, 1 min) before and after."""
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    [setting] = probe.settings(backbone, size, 1, [method], recompute="on", checkpoint_blocks=False, amp=False,
                               steps=steps, side=side, side_cfg=side_cfg)
    return {"backbone": backbone, "size": size, "side": side, "side_cfg": side_cfg, "method": method,
            "vit_params": report.backbone_params, "trainable_params": report.trainable_model_params,
            "training": training_step(setting), "inference": latency_in_fresh_process(setting),
            "load": [load_before, os.getloadavg()[0]], "seconds": time.perf_counter() - began}


def describe(row: dict) -> str:
    """'`hst` (cls)': the side network and the preset named, if any."""
    preset = row["side_cfg"].get("preset")
    return f"`{row['side']}`" + (f" ({preset})" if preset else "")


def _pair(cpu: float | None, wall: float | None, failure: str) -> str:
    return failure or f"{cpu:.2f} s / {wall:.2f} s"


def table_line(row: dict) -> str:
    train, infer = row["training"], row["inference"]
    failed = train["failure"]
    cells = [describe(row), row["method"], f"{row['size']}²", f"{row['trainable_params']:,}",
             f"{100 * row['trainable_params'] / row['vit_params']:.2f}%",
             _pair(train["step_cpu_s"], train["step_s"], failed),
             failed or f"{train['peak_bytes'] / 2**20:,.0f} MiB",
             failed or f"{train['adapter_file_bytes'] / 2**20:,.1f} MiB",
             _pair(infer.get("cpu_s"), infer.get("wall_s"), infer.get("failure", "")),
             f"{row['load'][0]:.1f} → {row['load'][1]:.1f}"]
    return "| " + " | ".join(cells) + " |"


def reading(rows: list[dict], sizes: tuple[int, ...]) -> list[str]:
    """The sentences under the table (every row of ROWS measured): each network against the simple pyramid on
    the frozen ViT, as ratios per size ("—" where a cell was not measured)."""
    find = {(r["side"], r["side_cfg"].get("preset"), r["method"], r["size"]): r for r in rows}
    keys = {"base": ("simple", None, "fixed"), "full": ("simple", None, "full"), "mona": ("simple", None, "mona"),
            "hst": ("hst", None, "fixed"), "cls": ("hst", "cls", "fixed"), "comer": ("vit-comer", None, "fixed"),
            "comer+mona": ("vit-comer", None, "mona")}
    measures = {"params": lambda r: r["trainable_params"], "step": lambda r: r["training"]["step_cpu_s"],
                "peak": lambda r: r["training"]["peak_bytes"], "infer": lambda r: r["inference"].get("cpu_s")}

    def x(name: str, measure: str, against: str = "base") -> str:
        """'a× / b×': `name`'s `measure` over `against`'s at each size."""
        ratios = []
        for size in sizes:
            value, base = (measures[measure](find[*keys[key], size]) for key in (name, against))
            ratios.append("—" if value is None or base is None else f"{value / base:.1f}×")
        return ratios[0] if measure == "params" else " / ".join(ratios)

    at = " / ".join(f"{s}²" for s in sizes)
    return [
        f"Against the simple pyramid on the frozen ViT ({find[*keys['base'], sizes[0]]['trainable_params']:,} "
        f"trainable), HST (dense-s), HST at the paper's widths (cls) and ViT-CoMer train {x('hst', 'params')}, "
        f"{x('cls', 'params')} and {x('comer', 'params')} its parameters; their training steps cost "
        f"{x('hst', 'step')}, {x('cls', 'step')} and {x('comer', 'step')} its CPU time at {at}, with "
        f"{x('hst', 'peak')}, {x('cls', 'peak')} and {x('comer', 'peak')} its peak memory (their backward runs "
        "through the frozen ViT, the pyramid's does not).",
        f"At inference they cost {x('hst', 'infer')}, {x('cls', 'infer')} and {x('comer', 'infer')} the simple "
        f"pyramid's forward CPU time at {at}.",
        f"For comparison, training the whole ViT (`full`) costs {x('full', 'step')} the baseline's step CPU time "
        f"and {x('full', 'peak')} its memory, Mona in the ViT {x('mona', 'step')} and {x('mona', 'peak')}; Mona in "
        f"the ViT beside ViT-CoMer costs {x('comer+mona', 'step', 'comer')} ViT-CoMer's own step.",
    ]


def msda_share(rows: list[dict], sizes: tuple[int, ...]) -> str:
    """How much of ViT-CoMer's step and forward CPU time its 12 deformable attention calls account for, from
    the single-call costs of benchmarks/results/msda.md (only sizes measured there)."""
    parts = []
    for size in (s for s in sizes if s in MSDA_CPU_S):
        row = next(r for r in rows if r["side"] == "vit-comer" and r["method"] == "fixed" and r["size"] == size)
        forward, both = MSDA_CPU_S[size]
        step, infer = row["training"]["step_cpu_s"], row["inference"].get("cpu_s")
        measured = [f"{MSDA_CALLS} × {both:.2f} s = {MSDA_CALLS * both:.1f} s of forward+backward against a "
                    f"{step:.1f} s step ({MSDA_CALLS * both / step:.0%})" if step else "",
                    f"{MSDA_CALLS} × {forward:.2f} s = {MSDA_CALLS * forward:.1f} s of forward against "
                    f"{infer:.1f} s of inference ({MSDA_CALLS * forward / infer:.0%})" if infer else ""]
        if any(measured):
            parts.append(f"at {size}², " + " and ".join(m for m in measured if m))
    return "" if not parts else (
        "Where ViT-CoMer's time goes: `benchmarks/results/msda.md` measured one torch-path `MSDeformAttn` call in "
        "this configuration (CPU seconds); ViT-CoMer makes 12 per forward (ViT-to-CNN and CNN-to-ViT in each "
        "of its 4 interactions, and the last one's 4 extra ViT-to-CNN), which is " + "; ".join(parts) + ".")


def write_results(out: Path, rows: list[dict], args: argparse.Namespace, backbone: str, sizes: tuple[int, ...],
                  total_s: float, loads: tuple[float, float]) -> None:
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    command = " ".join([f"OMP_NUM_THREADS={threads} .venv/bin/python benchmarks/side_costs.py", *sys.argv[1:]])
    torch_threads = next((r["inference"]["threads"] for r in rows if "threads" in r["inference"]), "?")
    highest = max(max(r["load"]) for r in rows)
    shared = (f"The machine was shared: the load average reached {highest:.1f} (over {os.cpu_count()} cores), "
              "so other processes took time slices: wall times are inflated, and with more than one thread CPU "
              "times too (a thread waiting at OpenMP's barrier for a descheduled one spins), most for the side "
              "networks' many small operations; compare rows measured at similar loads."
              if highest > os.cpu_count() else
              f"The load average stayed at or under {os.cpu_count()} (the core count) throughout.")
    lines = [
        "# Side networks for a frozen plain ViT: what they cost on the CPU", "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_model()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={threads} (torch threads: {torch_threads}); torch {torch.__version__}, Python "
        f"{platform.python_version()}. {len(rows)} rows in {total_s / 60:.1f} min; load average {loads[0]:.1f} at "
        f"the start, {loads[1]:.1f} at the end. {shared} Command: `{command}`.", "",
        f"`{backbone}` with random weights, batch 1, fp32, CPU. Trainable: what trains in the step, the side "
        "network (or simple pyramid) included, from `domainmona adapters report`, and its share of the ViT's own "
        "parameters (" + f"{rows[0]['vit_params']:,}" + "). Training step: `domainmona adapters probe` (the same "
        "functions, each row in a fresh process): forward, backward and AdamW; CPU / wall seconds of the median "
        f"of {args.steps} step(s) after the first (CPU time is summed over threads and does not count other "
        "processes' time slices); peak: the rise of anonymous resident memory over building the model and its "
        "first step (weights, activations, gradients, optimizer state); adapter file: what `save_adapter` writes "
        "(adapters plus what trains whole: the pyramid or side network, HST's LayerNorms; `full`: the whole "
        "ViT). With `fixed` and the simple pyramid the frozen ViT runs without autograd and only the pyramid "
        "backpropagates; HST and ViT-CoMer feed the ViT's tokens (meta tokens, zero-gated injection), so their "
        "backward goes through it. Inference: the same model after `prepare_for_inference` (merge, fuse Monas), "
        f"eval mode, forward under `torch.no_grad()`, CPU / wall seconds, median of {REPEATS} after one untimed, "
        f"in a fresh process. A measurement over {LIMIT_S // 60} min is stopped and marked. Load: the 1-min load "
        "average before and after the row.", "",
        "| side network | ViT method | input | trainable | % of ViT | training step, CPU / wall | peak step memory "
        "| adapter file | inference, CPU / wall | load |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *map(table_line, rows), "",
    ] + ([] if args.quick else [" ".join([*reading(rows, sizes), msda_share(rows, sizes)])])
    write_markdown(out, lines)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
                                   "command": command, "minutes": total_s / 60, "rows": rows}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]} at {QUICK[1][0]}², {len(QUICK_ROWS)} rows, "
                                                              "printed; no files unless --out")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps after the first (median)")
    parser.add_argument("--out", type=Path, help="markdown file, the JSON beside it (default: "
                        "benchmarks/results/side_costs.md; --quick: none)")
    parser.add_argument("--latency-of", help=argparse.SUPPRESS)  # worker: a probe.Setting as JSON
    args = parser.parse_args()
    if args.latency_of:
        print(json.dumps(inference_latency(probe.Setting(**json.loads(args.latency_of)))))
        return
    backbone, sizes, chosen = QUICK if args.quick else FULL
    out = args.out or (None if args.quick else RESULT)
    loads, started, rows = [os.getloadavg()[0]], time.perf_counter(), []
    reports = [dict(method_reports(backbone, [method], side, side_cfg))[method] for side, side_cfg, method in chosen]
    for size in sizes:
        for (side, side_cfg, method), report in zip(chosen, reports):
            rows.append(measure(backbone, size, args.steps, side, side_cfg, method, report))
            print(f"{rows[-1]['seconds']:.0f} s {table_line(rows[-1])}", flush=True)
    loads.append(os.getloadavg()[0])
    total = time.perf_counter() - started
    print(f"{len(rows)} rows in {total:.0f} s")
    if out is not None:
        write_results(out, rows, args, backbone, sizes, total, tuple(loads))


if __name__ == "__main__":
    main()
