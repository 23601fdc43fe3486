"""`domainmona tile`, `tile-predict`, `geo-demo`, `train geo-det|geo-seg`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domainmona.cli import CommandGroups


def register(groups: "CommandGroups") -> None:
    from domainmona.cli import not_built

    for name in ("tile", "tile-predict", "geo-demo"):
        groups.root.command(name, help=f"{name} (not built yet).")(lambda name=name: not_built(name, 6))
    for name in ("geo-det", "geo-seg"):
        groups.train.command(name, help=f"train {name} (not built yet).")(
            lambda name=name: not_built(f"train {name}", 6))
