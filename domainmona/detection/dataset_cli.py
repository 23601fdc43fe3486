"""`domainmona split dota|star` and `domainmona eval dota`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domainmona.cli import CommandGroups


def register(groups: "CommandGroups") -> None:
    from domainmona.cli import not_built

    for dataset in ("dota", "star"):
        groups.split.command(dataset, help=f"Split raw {dataset.upper()} images into patches.")(
            lambda dataset=dataset: not_built(f"split {dataset}", 4))
    groups.eval.command("dota", help="Full-image DOTA evaluation of Task1 files.")(
        lambda: not_built("eval dota", 4))
