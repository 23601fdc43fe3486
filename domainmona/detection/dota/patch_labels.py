"""Which objects a patch keeps, and how: the geometry half of the splitter.

Per object, IoF = (area inside the patch) / (object area):
  IoF = 1                -> kept as labelled;
  iof_thr <= IoF < 1     -> kept with its original difficulty, polygon clipped to the patch;
  sliver_thr <= IoF < iof_thr -> kept as difficult 2 (partly visible), polygon clipped;
  IoF < sliver_thr       -> dropped (a sliver).
A clipped shape that is not a quadrilateral becomes its minimum rotated rectangle. Zero-area labels are
skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from domainmona.detection.dota.geometry import normalise_quads, polygon_to_dota_quad
from domainmona.detection.dota.labels import DotaObject

CUT_DIFFICULT = 2


@dataclass
class PatchCounts:
    kept: int = 0
    cut: int = 0
    dropped: int = 0

    def add(self, other: "PatchCounts") -> None:
        self.kept += other.kept
        self.cut += other.cut
        self.dropped += other.dropped


@dataclass
class ScaledObjects:
    """An image's objects at one rate, with what every window query needs computed once."""

    objects: list[DotaObject]
    quads: np.ndarray  # (N, 4, 2) in the rescaled image
    polygons: np.ndarray  # (N,) shapely polygons, made valid
    bounds: np.ndarray  # (N, 4) xmin, ymin, xmax, ymax
    areas: np.ndarray  # (N,)


def scale_objects(objects: Sequence[DotaObject], rate: float) -> ScaledObjects:
    quads = np.array([obj.poly for obj in objects], dtype=np.float64).reshape(-1, 4, 2) * rate
    polygons = shapely.polygons(quads)
    invalid = ~shapely.is_valid(polygons)
    polygons[invalid] = shapely.make_valid(polygons[invalid])  # self-intersecting labels exist in DOTA
    bounds = np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)
    return ScaledObjects(list(objects), quads, polygons, bounds, shapely.area(polygons))


def _clipped_quad(geometry: shapely.Geometry) -> np.ndarray:
    simplified = shapely.simplify(geometry, 0.0)  # drops collinear vertices left by the clip
    if isinstance(simplified, shapely.Polygon) and len(simplified.exterior.coords) == 5:
        return normalise_quads(np.asarray(simplified.exterior.coords)[:4])
    return polygon_to_dota_quad(geometry)


def objects_in_window(scaled: ScaledObjects, x: int, y: int, size: int, iof_thr: float,
                      sliver_thr: float) -> tuple[list[DotaObject], PatchCounts]:
    """Objects of the patch whose top-left corner is (x, y), in patch coordinates."""
    counts = PatchCounts()
    if not scaled.objects:
        return [], counts
    x_max, y_max = x + size, y + size
    b = scaled.bounds
    touching = (b[:, 0] < x_max) & (b[:, 2] > x) & (b[:, 1] < y_max) & (b[:, 3] > y) & (scaled.areas > 0)
    inside = touching & (b[:, 0] >= x) & (b[:, 1] >= y) & (b[:, 2] <= x_max) & (b[:, 3] <= y_max)
    crossing = np.flatnonzero(touching & ~inside)
    clipped = shapely.intersection(scaled.polygons[crossing], shapely.box(x, y, x_max, y_max))
    iof = shapely.area(clipped) / scaled.areas[crossing]

    offset = np.array([x, y], dtype=np.float64)
    kept: list[DotaObject] = []
    for index in np.flatnonzero(inside):
        obj = scaled.objects[index]
        kept.append(DotaObject(scaled.quads[index] - offset, obj.cls, obj.difficult))
    counts.kept = len(kept)
    for index, geometry, fraction in zip(crossing, clipped, iof, strict=True):
        if fraction < sliver_thr:
            counts.dropped += 1
            continue
        obj = scaled.objects[index]
        if fraction >= iof_thr:
            counts.kept += 1
            difficult = obj.difficult
        else:
            counts.cut += 1
            difficult = CUT_DIFFICULT
        kept.append(DotaObject(_clipped_quad(geometry) - offset, obj.cls, difficult))
    return kept, counts
