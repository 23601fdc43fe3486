"""Trainable parameters of every registered method on Swin-T/B/L, SwinUNETR and ViT-B: the tables of
`domainmona adapters report --backbone B --method all` (same code, `report.method_reports`), with the Swin-T
counts checked against the formulas in the shared notes. Writes benchmarks/results/adapter_counts.md.

    .venv/bin/python benchmarks/adapter_counts.py
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
from report import machine, write_markdown

from domainmona.adapters import METHODS
from domainmona.adapters.report import method_reports

BACKBONES = ("swin-t", "swin-b", "swin-l", "swinunetr", "vit-b")
# Swin-T trainable counts from the papers' formulas (the shared notes' PEFT-METHODS.md; Mona: its paper's table).
# SSF: the notes' 104,448 count the classification Swin's one final norm; this detection Swin (mmdet, out_indices
# 0-3) has an output norm per stage, and SSF scales and shifts the three more too: + 2 x (96 + 192 + 384).
EXTRA_OUTPUT_NORMS = 2 * (96 + 192 + 384)
SWIN_T = {"mona": 1_408_128, "ssf": 104_448 + EXTRA_OUTPUT_NORMS, "vpt-deep": 44_160, "convpass": 164_352,
          "conv-adapter": 495_336, "fact-tt": 82_944}
RESULT = Path(__file__).parent / "results" / "adapter_counts.md"


def table(backbone: str) -> tuple[list[str], dict[str, int]]:
    """Markdown table lines for one backbone, and each defined method's trainable count."""
    rows = method_reports(backbone, list(METHODS))
    size = next(r.backbone_params for _, r in rows if not isinstance(r, str))
    lines = [f"## {backbone} ({size:,} backbone parameters)", "",
             "| method | trainable backbone params | % of backbone |", "| --- | ---: | ---: |"]
    counts = {}
    for name, report in rows:
        if isinstance(report, str):
            lines.append(f"| {name} | not defined: {report} | |")
        else:
            counts[name] = report.trainable_backbone_params
            lines.append(f"| {name} | {report.trainable_backbone_params:,} | {report.percent_of_backbone:.2f}% |")
    return lines + [""], counts


def main() -> None:
    torch.manual_seed(0)
    lines = ["# Trainable parameters per method and backbone", "",
             f"{datetime.date.today().isoformat()}, {machine()}, torch {torch.__version__}. Backbones built with "
             "random weights (`domainmona.adapters.backbones`), each method with its default options. The mmdet "
             "Swins and SwinUNETR's `swinViT` have no head; timm's ViT-B counts its 1000-class classifier "
             "(769,000 parameters). Regenerate: `.venv/bin/python benchmarks/adapter_counts.py`.", ""]
    for backbone in BACKBONES:
        body, counts = table(backbone)
        if backbone == "swin-t":
            wrong = {m: (counts.get(m), n) for m, n in SWIN_T.items() if counts.get(m) != n}
            if wrong:
                sys.exit(f"Swin-T counts differ from the formulas (got, expected): {wrong}")
            lines += ["Swin-T counts equal the papers' formulas (the shared notes): "
                      + ", ".join(f"{m} {n:,}" for m, n in SWIN_T.items())
                      + f" (SSF: the notes' 104,448 for the one final norm of the classification Swin, plus "
                        f"{EXTRA_OUTPUT_NORMS:,} for this detection Swin's three more output norms).", ""]
        lines += body
        print(f"{backbone}: {len(counts)} methods defined")
    write_markdown(RESULT, lines)


if __name__ == "__main__":
    main()
