"""The backbone x pipeline table: every registered 2D backbone (read from `domainmona.adapters.backbones`), the
route each 2D pipeline takes it by, and one real training step per method from `domainmona adapters probe`
(the same code: `probe.settings` + `probe.probe`, each row in a fresh process). Writes
benchmarks/results/backbones.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/backbone_table.py            # every registered 2D backbone
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/backbone_table.py --quick    # three, one per route

Routes, read from the pipelines' own code: detection (`train dota|star`, `train geo-det`, `test`,
`tile-predict` of a detector) builds the backbone `domainmona.detection.config.load_config` puts in the
shipped config (`MonaSwinTransformer`: mmdet's Swin; `MonaBackbone`: the registry's features module, CNN stage
outputs or a ViT's simple feature pyramid) under mmrotate's FPN; geo-seg (`train geo-seg`, `tile-predict` of a
segmenter) builds smp's `tu-` encoder where the registration names a timm model smp takes, else domainmona's
`SmpEncoder` around the features module (`domainmona.geo.segmodel.build_model`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
from report import write_markdown

from domainmona.adapters import probe
from domainmona.adapters.backbones import backbones, check_backbone_name, get_backbone
from domainmona.adapters.report import method_reports

RESULT = Path(__file__).parent / "results" / "backbones.md"
METHODS = ("mona", "full")
QUICK = ("micro", "mobilenetv2", "vit-s-16")  # one per route: mmdet Swin, CNN stages, ViT simple pyramid
# The 2D pipelines, as the table's header names them; each checks its --backbone with check_backbone_name.
PIPELINES = "`train dota\\|star`, `train geo-det`, `test`, `tile-predict`, `train geo-seg`"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def detection_route(name: str) -> str:
    """The backbone type the detection config gets (`set_backbone`), and what feeds the FPN."""
    from domainmona.detection.config import load_config

    kind = load_config("dota1.0", name).model.backbone.type
    spec = get_backbone(name)
    feeds = "Swin stages" if kind == "MonaSwinTransformer" else \
        {"stages": "timm stages", "simple": "simple pyramid"}[spec.pyramid]
    return f"`{kind}`: {feeds} → FPN"


def segmentation_route(name: str) -> str:
    """The smp encoder geo-seg builds (the rule of `domainmona.geo.segmodel.build_model`)."""
    spec = get_backbone(name)
    if spec.timm:
        return f"smp `tu-{spec.timm[0]}`"
    return "`SmpEncoder`" + (" (simple pyramid)" if spec.pyramid == "simple" else "")


def _mb(count: int | None) -> str:
    return "—" if count is None else f"{count / 2**20:,.0f} MB"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f} s"


def measure(name: str, size: int, steps: int) -> tuple[str, list[str], float]:
    """One table row for the backbone `name`, what failed in it, and the seconds it took."""
    start = time.perf_counter()
    check_backbone_name(name, dims=2)  # what every 2D pipeline's --backbone runs first
    spec = get_backbone(name)
    report = dict(method_reports(name, ["mona"]))["mona"]
    rows = {row.setting.method: row for row in probe.probe(
        probe.settings(name, size, 1, list(METHODS), recompute="on", checkpoint_blocks=False, amp=False,
                       steps=steps))}
    failed = [f"`{name}` {m}: {r.failure}" for m, r in rows.items() if r.failure]
    mona, full = rows["mona"], rows["full"]
    maps = "/".join(map(str, spec.channels))
    if spec.strides != (4, 8, 16, 32):
        maps += f" at strides {'/'.join(map(str, spec.strides))}"
    cells = [f"`{name}`", spec.family, maps, detection_route(name),
             segmentation_route(name), f"{report.backbone_params / 1e6:.1f} M",
             f"{report.percent_of_backbone:.2f}%", f"{mona.trainable_params / 1e6:.2f} M",
             f"{full.trainable_params / 1e6:.1f} M", _s(mona.step_s), _s(full.step_s),
             _mb(mona.peak_bytes), _mb(full.peak_bytes)]
    return "| " + " | ".join(cells) + " |", failed, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--size", type=int, default=224, help="square input size (a multiple of 32)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (median)")
    parser.add_argument("--only", help="comma-separated backbone names (a check, not the table)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    chosen = QUICK if args.quick else args.only.split(",") if args.only else None
    names = [n for n in backbones(dims=2) if chosen is None or n in chosen]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    started, lines, failures = time.perf_counter(), [], []
    for name in names:
        row, failed, seconds = measure(name, args.size, args.steps)
        lines.append(row)
        failures += failed
        print(f"{name}: {seconds:.0f} s  {row}", *failed, sep="\n", flush=True)
    total = time.perf_counter() - started
    command = " ".join([f"OMP_NUM_THREADS={threads} .venv/bin/python benchmarks/backbone_table.py", *sys.argv[1:]])
    header = [
        "# Backbones × pipelines", "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_model()}, {os.cpu_count()} cores,"
        f" OMP_NUM_THREADS={threads}; torch {torch.__version__}, Python {platform.python_version()}. "
        f"{len(names)} registered 2D backbones, {total / 60:.1f} min in all. Command: `{command}`.", "",
        f"Every row is taken by every 2D pipeline ({PIPELINES}); the route columns say how. Detection: "
        "`MonaSwinTransformer` is mmdet's Swin itself, `MonaBackbone` the registry's features module (a CNN's "
        "stage outputs, or a plain ViT's last block through ViTDet's simple feature pyramid), under mmrotate's "
        "FPN. geo-seg: smp's timm universal encoder (`tu-`) where the registration names a timm model smp "
        "takes (the `tu-` name is the timm architecture; the registration's shape options go with it, e.g. the "
        "micro Swin's widths), else domainmona's `SmpEncoder` around the features module.", "",
        f"Step columns: `domainmona adapters probe --backbone NAME --size {args.size} --batch 1 --method "
        f"{','.join(METHODS)}` (the same functions): one training step (forward, backward, AdamW) of the "
        "features module with random weights on CPU, each method in a fresh process; step time is the median of "
        f"{args.steps} steps after the first; peak memory is the rise of anonymous resident memory over building "
        "and the first step (weights, activations, gradients, optimizer state). The trainable columns count "
        "what trains in that step: for a plain ViT also its simple pyramid, which trains with the head "
        "whatever the method (full's count minus the backbone's). Mona % of backbone: Mona's parameters over "
        "the backbone's own (`domainmona adapters report`), as in the Mona paper.", "",
        "| backbone | family | channels at strides 4/8/16/32 | detection | geo-seg encoder | backbone params "
        "| Mona % of backbone | trainable, Mona | trainable, full | step, Mona | step, full | peak, Mona "
        "| peak, full |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    footer = ["", "Failed (— in the row): " + "; ".join(failures) + "."] if failures else []
    write_markdown(args.out, header + lines + footer)
    print(f"{len(names)} backbones in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
