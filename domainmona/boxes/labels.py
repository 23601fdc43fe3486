"""DOTA label files: optional `imagesource:`/`gsd:` headers, then `x1 y1 ... x4 y4 class difficult` lines.

The geometry helpers that label producers need are re-exported here (`poly_to_obb`, `obb_to_poly`,
`polygon_to_dota_quad`, `normalise_quads`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainmona.boxes.geometry import normalise_quads, obb_to_poly, poly_to_obb, polygon_to_dota_quad
from domainmona.errors import UserError
from domainmona.io import atomic_path

__all__ = ["DotaLabels", "DotaObject", "format_dota_line", "normalise_quads", "obb_to_poly", "poly_to_obb",
           "polygon_to_dota_quad", "read_dota_labels", "write_dota_labels"]

_MISSING = ("", "null", "none", "nan")


@dataclass
class DotaObject:
    """One labelled object: `poly` is (4, 2) float pixels, `difficult` 0/1 (2 = cut by a patch border)."""

    poly: np.ndarray
    cls: str
    difficult: int = 0

    def __post_init__(self) -> None:
        self.poly = np.asarray(self.poly, dtype=np.float64).reshape(4, 2)


@dataclass
class DotaLabels:
    """The contents of one label file."""

    objects: list[DotaObject] = field(default_factory=list)
    imagesource: str | None = None
    gsd: float | None = None


def _parse_gsd(value: str, where: str) -> float | None:
    if value.strip().lower() in _MISSING:
        return None
    try:
        gsd = float(value)
    except ValueError:
        raise UserError(f"{where}: gsd '{value.strip()}' is not a number") from None
    return None if math.isnan(gsd) else gsd


def _parse_object(tokens: list[str], where: str, classes: Sequence[str] | None) -> DotaObject:
    # DOTA v1.0 files sometimes omit the difficult flag (DOTA_devkit reads it as 0).
    if len(tokens) not in (9, 10):
        raise UserError(f"{where}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class difficult', got {len(tokens)} fields")
    try:
        coords = np.array(tokens[:8], dtype=np.float64)
    except ValueError:
        raise UserError(f"{where}: the first 8 fields must be numbers: {' '.join(tokens[:8])}") from None
    if not np.isfinite(coords).all():
        raise UserError(f"{where}: coordinates must be finite")
    cls = tokens[8]
    if classes is not None and cls not in classes:
        raise UserError(f"{where}: unknown class '{cls}' (expected one of {', '.join(classes)})")
    difficult = tokens[9] if len(tokens) == 10 else "0"
    if difficult not in ("0", "1", "2"):
        raise UserError(f"{where}: difficult must be 0, 1 or 2, got '{difficult}'")
    return DotaObject(coords.reshape(4, 2), cls, int(difficult))


def read_dota_labels(path: str | os.PathLike, classes: Sequence[str] | None = None) -> DotaLabels:
    """Parse a DOTA label file; any malformed line raises UserError naming `file:line`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read label file {path}: {exc}") from None
    labels = DotaLabels()
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{number}"
        stripped = line.strip()
        if not stripped:
            continue
        key, sep, value = stripped.partition(":")
        if sep and key.strip().lower() == "imagesource":
            labels.imagesource = value.strip() or None
        elif sep and key.strip().lower() == "gsd":
            labels.gsd = _parse_gsd(value, where)
        else:
            labels.objects.append(_parse_object(stripped.split(), where, classes))
    return labels


def format_dota_line(poly: np.ndarray, cls: str, difficult: int) -> str:
    """One label line, coordinates to 0.01 px."""
    coords = " ".join(f"{c:.2f}" for c in np.asarray(poly, dtype=np.float64).reshape(8))
    return f"{coords} {cls} {difficult}"


def write_dota_labels(path: str | os.PathLike, objects: Iterable[DotaObject], imagesource: str | None = None,
                      gsd: float | None = None) -> None:
    """Write a label file atomically, with headers only when given."""
    lines = []
    if imagesource is not None:
        lines.append(f"imagesource:{imagesource}")
    if gsd is not None:
        lines.append(f"gsd:{gsd:g}")
    lines.extend(format_dota_line(obj.poly, obj.cls, obj.difficult) for obj in objects)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
