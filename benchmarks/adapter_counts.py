"""Trainable parameters of every registered method on the Mona paper's Swin-T/B/L, ViT-B/16, and the first
registered backbone of every other adapter family (read from the registry: ResNet-50 for the CNNs, SwinUNETR,
UNETR and SegResNet for CT): the tables of `domainmona adapters report --backbone B --method all` (same code,
`report.method_reports`), with the Swin-T counts checked against the formulas in the shared notes. Writes
benchmarks/results/adapter_counts.md.

    .venv/bin/python benchmarks/adapter_counts.py
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
from report import machine, write_markdown

from domainmona.adapters import METHODS
from domainmona.adapters.backbones import backbones, get_backbone
from domainmona.adapters.report import method_reports

NAMED = ("swin-t", "swin-b", "swin-l", "vit-b-16")  # the sizes compared with the papers


def chosen_backbones() -> list[str]:
    """NAMED (each checked against the registry), then the first registered backbone of each adapter family
    they leave out, in registration order: a new family gets its table without an edit here."""
    families = {get_backbone(name).family for name in NAMED}
    out = list(NAMED)
    for name, spec in backbones().items():
        if spec.family not in families:
            families.add(spec.family)
            out.append(name)
    return out

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
             "random weights (`domainmona.adapters.backbones`), each method with its default options. Backbone "
             "parameters are the adapted network's own, with no classifier head (for the 2D backbones the "
             "features module the pipelines build; a ViT's simple feature pyramid trains with the head and is "
             "not counted; for CT the encoder adapters go into, as `adapters report` names it). A method a "
             "family does not define shows the one-line refusal. Regenerate: "
             "`.venv/bin/python benchmarks/adapter_counts.py`.", ""]
    for backbone in chosen_backbones():
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
