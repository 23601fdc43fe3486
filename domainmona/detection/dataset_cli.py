"""`domainmona split dota|star` and `domainmona eval dota`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from domainmona.commands import CommandGroups
from domainmona.options import check_memory, positive, window_bytes

# `split dota` accepts every DOTA version's classes (v2.0 is a superset of v1.0 and v1.5).
_SPLIT_CLASSES = {"dota": "dota2.0", "star": "star"}


def _split(dataset: str, src: Path, dst: Path, size: int, gap: int, rates: list[float], workers: int | None) -> None:
    from domainmona.console import console
    from domainmona.detection.classes import DATASETS
    from domainmona.detection.dota.split import split_dataset

    check_memory("--size", size, window_bytes(size, bands=3, itemsize=1), "one SIZE x SIZE RGB patch")
    summary = split_dataset(src, dst, size=size, gap=gap, rates=rates, workers=workers,
                            classes=DATASETS[_SPLIT_CLASSES[dataset]])
    counts = summary.objects
    resumed = f" ({summary.resumed} already done)" if summary.resumed else ""
    console.print(f"{summary.images} images{resumed} -> {summary.patches} patches in {dst}")
    if summary.labelled:
        console.print(f"objects per patch: {counts.kept} kept, {counts.cut} cut (difficult 2), "
                      f"{counts.dropped} dropped (slivers, or cut into 3 or more than 5 corners)")
    else:
        console.print("no labelTxt/: images only (a test set)")


def _positive_rates(rates: Optional[list[float]]) -> Optional[list[float]]:
    for rate in rates or ():
        positive(rate)
    return rates


def _register_split(groups: CommandGroups, dataset: str) -> None:
    from domainmona.recipes import patch_grid

    grid = patch_grid(dataset)  # the recipe's (pipelines/<dataset>.yaml)
    @groups.split.command(dataset, help=f"Split raw {dataset.upper()} images (SRC/images, SRC/labelTxt) into "
                                        "overlapping patches for mmrotate (DST/images, DST/annfiles).")
    def split(
        src: Annotated[Path, typer.Option(help="Raw dataset folder holding images/ and optionally labelTxt/.")],
        dst: Annotated[Path, typer.Option(help="Output folder; rerunning resumes an interrupted split.")],
        size: Annotated[int, typer.Option(min=1, help="Patch size in pixels.")] = grid[0],
        gap: Annotated[int, typer.Option(min=0, help="Overlap between neighbouring patches in pixels.")] = grid[1],
        rates: Annotated[Optional[list[float]], typer.Option(
            callback=_positive_rates,
            help="Rescaling rates, repeat for multi-scale (e.g. --rates 0.5 --rates 1.0 --rates 1.5).")] = None,
        workers: Annotated[Optional[int], typer.Option(min=1, help="Parallel processes (default: all cores).")] = None,
    ) -> None:
        _split(dataset, src, dst, size, gap, rates or [1.0], workers)


def _print_table(result) -> None:
    from rich.table import Table

    from domainmona.console import console

    table = Table(title=f"Task1 {result.metric} AP, IoU>{result.iou_thr:g}")
    for column, justify in (("class", "left"), ("AP", "right"), ("gts", "right"), ("dets", "right")):
        table.add_column(column, justify=justify)
    for name, item in result.per_class.items():
        table.add_row(name, "-" if item.ap is None else f"{item.ap:.4f}", str(item.num_gts), str(item.num_dets))
    table.add_section()
    table.add_row("[bold]mAP[/]", f"[bold]{result.map:.4f}[/]", "", "")
    console.print(table)


def register(groups: CommandGroups) -> None:
    for dataset in ("dota", "star"):
        _register_split(groups, dataset)

    @groups.eval.command("dota")
    def eval_dota(
        dets: Annotated[Path, typer.Option(help="Folder of Task1_<class>.txt files.")],
        gt: Annotated[Path, typer.Option(help="Folder of full-image DOTA label files (labelTxt).")],
        metric: Annotated[str, typer.Option(help="voc07 (11-point, the DOTA server's) or area.")] = "voc07",
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")] = None,
    ) -> None:
        """Full-image DOTA evaluation of Task1 files: exact polygon IoU, difficult objects ignored."""
        from domainmona.detection.dota.evaluate import evaluate_task1, task1_inputs
        from domainmona.io import claim_file, write_json

        if json_out is not None:  # before the evaluation: never one of its inputs, nor a user's file
            claim_file(json_out, task1_inputs(dets, gt), what="--json")
        result = evaluate_task1(dets, gt, metric=metric)
        _print_table(result)
        if json_out is not None:
            write_json(json_out, result.to_dict())
