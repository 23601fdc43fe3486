"""The evaluate command's output: a rich table per class, optional JSON with per-case scores."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from domainmona.console import console, err_console
from domainmona.io import claim_file, write_json
from domainmona.medical.evaluate import Evaluation, evaluate_dirs


def _fmt(value: float, digits: int) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def evaluation_table(evaluation: Evaluation) -> Table:
    table = Table(title=f"segment-ct evaluation ({len(evaluation.per_case)} cases)")
    for column in ("class", "name", "Dice", "HD95 (mm)"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for index, name in evaluation.names.items():
        table.add_row(str(index), name, _fmt(evaluation.mean(index, 0), 4), _fmt(evaluation.mean(index, 1), 2))
    table.add_row("", "mean", _fmt(evaluation.mean_dice, 4), "", style="bold")
    return table


def evaluate_and_report(pred_dir: str | Path, gt_dir: str | Path, json_out: str | Path | None = None) -> Evaluation:
    """Score, print the table, and write `json_out` (checked first: never a folder, an input, or a file
    domainmona did not write)."""
    if json_out:
        inputs = [p for folder in map(Path, (pred_dir, gt_dir)) if folder.is_dir() for p in folder.iterdir()]
        claim_file(json_out, inputs, what="--json")
    evaluation = evaluate_dirs(pred_dir, gt_dir)
    if evaluation.unmatched:
        err_console.print(f"[yellow]note:[/] {len(evaluation.unmatched)} prediction(s) without ground truth skipped")
    console.print(evaluation_table(evaluation))
    if json_out:
        write_json(json_out, evaluation.to_json())
    return evaluation
