"""`domainmona adapters ...` commands."""

from __future__ import annotations

import typer

from domainmona.commands import CommandGroups


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
        backbone: str = typer.Option("swin-t", "--backbone", "-b",
                                     help="swin-t|swin-s|swin-b|swin-l|swinunetr|vit-b|resnet50|convnext-t"),
        method: str = typer.Option("mona", "--method", "-m", help="an adapter method, or 'all'"),
        option: list[str] = typer.Option([], "--option", "-o", help="method option KEY=VALUE (repeatable)"),
    ) -> None:
        """Table of backbone / trainable parameters for a backbone and adapter method (built without weights)."""
        from rich.table import Table

        from domainmona.adapters import METHODS, inject, trainable_report
        from domainmona.adapters.backbones import build_backbone
        from domainmona.console import console

        names = list(METHODS) if method == "all" else [method]
        config = _parse_options(option)
        table = Table(title=f"trainable parameters: {backbone}")
        for column in ("method", "backbone params", "trainable backbone params", "% of backbone",
                       "% of whole model"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for name in names:
            model = inject(build_backbone(backbone), name, **(config if method != "all" else {}))
            counts = trainable_report(model)
            table.add_row(name, f"{counts.backbone_params:,}", f"{counts.trainable_backbone_params:,}",
                          f"{counts.percent_of_backbone:.2f}%", f"{counts.percent_of_model:.2f}%")
        console.print(table)
