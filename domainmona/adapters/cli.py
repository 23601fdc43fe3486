"""`domainmona adapters ...` commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domainmona.cli import CommandGroups


def register(groups: "CommandGroups") -> None:
    from domainmona.cli import not_built

    @groups.adapters.command("report")
    def report() -> None:
        """Table of backbone / trainable parameters for a backbone and adapter method."""
        not_built("adapters report", 3)
