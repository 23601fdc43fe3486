"""`domainmona adapters ...` commands."""

from __future__ import annotations

from typing import Optional

import typer

from domainmona.commands import CommandGroups
from domainmona.adapters.backbones import DEFAULT_BACKBONE
from domainmona.options import backbone_option, method_choice, side_opt_option, side_option

# Choices from the registries (without torch): the methods or 'all'.
MethodOrAll = method_choice("all")


def _parse_options(options: list[str]) -> dict[str, str]:
    from domainmona.errors import UserError

    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise UserError(f"--option expects KEY=VALUE, got '{option}'")
        parsed[key.replace("-", "_")] = value
    return parsed


def register(groups: CommandGroups) -> None:
    @groups.adapters.command("report")
    def report(
        backbone: str = backbone_option(DEFAULT_BACKBONE, dims=0, what="a registered backbone, built with random weights"),
        method: MethodOrAll = typer.Option("mona", "--method", "-m", help="an adapter method, or 'all'"),
        option: list[str] = typer.Option([], "--option", "-o", help="method option KEY=VALUE (repeatable)"),
        side: Optional[str] = side_option(),
        side_opt: Optional[list[str]] = side_opt_option(),
    ) -> None:
        """Table of backbone / trainable parameters for a backbone and adapter method (built without weights);
        with a side network, what trains beside the backbone too."""
        from rich.table import Table

        from domainmona.adapters import METHODS
        from domainmona.adapters.report import method_reports
        from domainmona.console import console

        from domainmona.settings import parse_assignments

        names = list(METHODS) if method == "all" else [method]
        config = _parse_options(option)
        title = f"trainable parameters: {backbone}" + (f" + side network {side}" if side else "")
        table = Table(title=title)
        columns = ["method", "backbone params", "trainable backbone params", "% of backbone",
                   *(["trainable with side network"] if side else []), "% of whole model"]
        for column in columns:
            table.add_column(column, justify="left" if column == "method" else "right")
        rows = method_reports(backbone, names, side, parse_assignments(side_opt, "--side-opt"),
                              **(config if method != "all" else {}))
        for name, counts in rows:
            if isinstance(counts, str):
                table.add_row(name, f"[dim]not defined: {counts}[/]", *[""] * (len(columns) - 2))
                continue
            table.add_row(name, f"{counts.backbone_params:,}", f"{counts.trainable_backbone_params:,}",
                          f"{counts.percent_of_backbone:.2f}%",
                          *([f"{counts.trainable_model_params:,}"] if side else []), f"{counts.percent_of_model:.2f}%")
        console.print(table)

    @groups.adapters.command("probe")
    def probe(
        backbone: str = backbone_option(DEFAULT_BACKBONE, dims=0, what="a registered backbone, built with random weights"),
        size: Optional[int] = typer.Option(None, "--size", help="input side in pixels/voxels, a multiple of 32 "
                                                                 "[default: 256; 3D networks 96]"),
        batch: int = typer.Option(1, "--batch", help="images (volumes) per step"),
        method: str = typer.Option("mona,lora,full", "--method", "-m",
                                   help="comma-separated adapter methods, or 'all'"),
        no_recompute: bool = typer.Option(False, "--no-recompute", help="adapters store their internals"),
        compare_recompute: bool = typer.Option(False, "--compare-recompute",
                                               help="rows with and without adapter recomputation"),
        checkpoint_blocks: bool = typer.Option(False, "--checkpoint-blocks",
                                               help="add rows with the backbone's block checkpointing"),
        memory_budget: Optional[str] = typer.Option(None, "--memory-budget",
                                                    help="e.g. 8GB: say which settings fit (binary units)"),
        steps: int = typer.Option(2, "--steps", help="timed steps per row after the measured first step"),
        side: Optional[str] = side_option(),
        side_opt: Optional[list[str]] = side_opt_option(),
    ) -> None:
        """Measure one real training step per method and setting on this device (CPU, or CUDA when visible, with
        AMP rows): peak memory, step time, trainable parameters, adapter file size; which settings fit a budget."""
        from domainmona.adapters import probe as p
        from domainmona.adapters.methods import METHODS
        from domainmona.console import console
        from domainmona.errors import UserError

        if no_recompute and compare_recompute:
            raise UserError("--no-recompute and --compare-recompute exclude each other")
        names = list(METHODS) if method.strip() == "all" else [m.strip() for m in method.split(",") if m.strip()]
        size = size if size is not None else (96 if p.is_volume(backbone) else 256)
        p.check_request(backbone, size, batch, names, steps)
        from domainmona.adapters.backbones import check_side
        from domainmona.settings import parse_assignments

        check_side(backbone, side)
        budget = p.parse_budget(memory_budget) if memory_budget is not None else None
        import torch

        recompute = "compare" if compare_recompute else "off" if no_recompute else "on"
        rows = p.probe(p.settings(backbone, size, batch, names, recompute, checkpoint_blocks,
                                  amp=torch.cuda.is_available(), steps=steps, side=side,
                                  side_cfg=parse_assignments(side_opt, "--side-opt")))
        console.print(p.table(rows, budget))
        if budget is not None:
            fitting = [r for r in rows if r.fits(budget)]
            console.print(f"fit in {memory_budget}: " + (", ".join(p.describe(r.setting) for r in fitting) or "none"))
