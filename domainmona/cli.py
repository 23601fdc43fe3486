"""The `domainmona` command line. Thin: each domain registers its commands; errors become one line.

Domain command modules (`domainmona/<domain>/cli.py`) expose `register(groups)` and import their heavy
dependencies (torch, mmrotate, MONAI, GDAL) inside the command functions, so `--help` stays instant.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import typer
from rich.table import Table

from domainmona.console import console, err_console
from domainmona.errors import UserError


@dataclass
class CommandGroups:
    """The root app and its sub-command groups, handed to each domain's `register`."""

    root: typer.Typer
    train: typer.Typer
    test: typer.Typer
    eval: typer.Typer
    split: typer.Typer
    segment_ct: typer.Typer
    adapters: typer.Typer


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True)


app = typer.Typer(
    name="domainmona",
    help="Mona adapters for remote sensing and medical imaging: fine-tune ~5% of a Swin, keep a few-MB adapter.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
groups = CommandGroups(
    root=app,
    train=_group("Fine-tune a backbone with an adapter method: dota, star, geo-det, geo-seg."),
    test=_group("Predict on a dataset, merge patches to full images, write a DOTA Task1 submission."),
    eval=_group("Evaluate full-image detections against ground truth."),
    split=_group("Split raw DOTA/STAR images into overlapping patches."),
    segment_ct=_group("CT segmentation with Mona-3D in MONAI's SwinUNETR: train, predict, evaluate, demo."),
    adapters=_group("Adapter methods: trainable-parameter reports, adapter checkpoints."),
)
for name in ("train", "test", "eval", "split", "adapters"):
    app.add_typer(getattr(groups, name), name=name)
app.add_typer(groups.segment_ct, name="segment-ct")


@app.command()
def doctor() -> None:
    """Print the stack's versions, GDAL and CUDA, and run mmcv's compiled rotated-box ops."""
    from domainmona.doctor import run_checks

    checks = run_checks()
    table = Table(title="domainmona doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        raise UserError(f"{failed[0].name}: {failed[0].detail}{more}")
    console.print("[green]all checks passed[/]")


def _register_domains() -> None:
    from domainmona.adapters import cli as adapters_cli
    from domainmona.detection import cli as detection_cli
    from domainmona.geo import cli as geo_cli
    from domainmona.medical import cli as medical_cli

    for module in (adapters_cli, detection_cli, medical_cli, geo_cli):
        module.register(groups)


_register_domains()


def main() -> None:
    try:
        app()
    except UserError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
