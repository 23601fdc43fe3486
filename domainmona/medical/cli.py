"""`domainmona segment-ct train|predict|evaluate|demo`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domainmona.cli import CommandGroups


def register(groups: "CommandGroups") -> None:
    from domainmona.cli import not_built

    for sub in ("train", "predict", "evaluate", "demo"):
        groups.segment_ct.command(sub, help=f"segment-ct {sub} (not built yet).")(
            lambda sub=sub: not_built(f"segment-ct {sub}", 5))
