"""The command tree: the root `domainmona` app and its groups, which every domain's `register(groups)` fills.

A module of its own so that `domainmona.cli` (which runs the tree) and the domain command modules (which
fill it) both import it and neither imports the other. Only typer here: `--help` and `--version` load no
torch, mmcv or MONAI.
"""

from __future__ import annotations

from dataclasses import dataclass

import typer

from domainmona import __version__, logs


@dataclass(frozen=True)
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
for _name in ("train", "test", "eval", "split", "adapters"):
    app.add_typer(getattr(groups, _name), name=_name)
app.add_typer(groups.segment_ct, name="segment-ct")


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"domainmona {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print domainmona's version and exit."),
          verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show the frameworks' logs (mmengine, MONAI, GDAL) on the terminal "
                                            "too; they always go to the command's log file.")) -> None:
    """The root's own options: --version, answered by its eager callback before any command, and --verbose."""
    logs.set_verbose(verbose)
