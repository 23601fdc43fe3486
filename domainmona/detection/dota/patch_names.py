"""Patch names and the sliding-window grid shared by the splitter and the merger.

A patch is named `{image}__{size}__{x}___{y}` at rate 1 (the DOTA_devkit/mmrotate convention users
know) and `{image}__{rate}__{x}___{y}` at any other rate, the rate always written with a decimal point
(`0.5`, `2.0`) so that the two forms cannot be confused. x and y are the patch's top-left corner in
the image rescaled by the rate; a full-image coordinate is `(patch coordinate + (x, y)) / rate`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from domainmona.errors import UserError

_PATCH_NAME = re.compile(r"^(?P<image>.+)__(?P<scale>\d+(?:\.\d+)?)__(?P<x>\d+)___(?P<y>\d+)(?:\.[A-Za-z0-9]+)?$")


class PatchName(NamedTuple):
    """Unpacks as `(image, size_or_rate, x, y)`: an int size at rate 1, else the float rate."""

    image: str
    size_or_rate: int | float
    x: int
    y: int

    @property
    def rate(self) -> float:
        return float(self.size_or_rate) if isinstance(self.size_or_rate, float) else 1.0


def patch_name(image: str, size: int, rate: float, x: int, y: int) -> str:
    scale = str(size) if rate == 1 else str(float(rate))
    return f"{image}__{scale}__{x}___{y}"


def parse_patch_name(name: str) -> PatchName:
    """Inverse of `patch_name`; a trailing file extension is ignored."""
    match = _PATCH_NAME.match(name)
    if match is None:
        raise UserError(f"'{name}' is not a patch name of the form IMAGE__SIZE__X___Y or IMAGE__RATE__X___Y")
    scale = match["scale"]
    size_or_rate: int | float = float(scale) if "." in scale else int(scale)
    return PatchName(match["image"], size_or_rate, int(match["x"]), int(match["y"]))


def patch_starts(length: int, size: int, gap: int) -> list[int]:
    """Window starts along one axis: every `size - gap` pixels, the last one shifted back so the window
    ends at the border (DOTA_devkit's grid); a single 0 when the image is not longer than a patch."""
    if length <= size:
        return [0]
    return list(range(0, length - size, size - gap)) + [length - size]
