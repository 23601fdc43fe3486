"""`domainmona train|test dota|star` and `domainmona demo`; dataset commands live in dataset_cli.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from domainmona.detection import dataset_cli

if TYPE_CHECKING:
    from domainmona.cli import CommandGroups


def register(groups: "CommandGroups") -> None:
    from domainmona.cli import not_built

    dataset_cli.register(groups)

    @groups.root.command("demo")
    def demo() -> None:
        """Generate DOTA-style scenes, fine-tune a micro Mona-Swin Oriented R-CNN, test, merge, evaluate."""
        not_built("demo", 4)

    for dataset in ("dota", "star"):
        groups.train.command(dataset, help=f"Oriented R-CNN with a Mona-Swin backbone on {dataset.upper()}.")(
            lambda dataset=dataset: not_built(f"train {dataset}", 4))
        groups.test.command(dataset, help=f"Test a {dataset.upper()} checkpoint and write Task1 files.")(
            lambda dataset=dataset: not_built(f"test {dataset}", 4))
