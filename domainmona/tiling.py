"""One tiling contract for `split dota`, `tile` and `--shots`: grid, patch names, cut objects, K-shot sampling.

Grid: windows of `size` pixels every `size - overlap` pixels along each axis, the last one moved back so it
ends flush with the edge (DOTA_devkit's grid, no padding needed); an axis not longer than a window gets one
window at 0 (padded). The streaming predictor keeps a constant stride instead (`fit_last=False`).

Names: `{image}__{size}__{x}___{y}` at rate 1 (the DOTA_devkit/mmrotate convention users know) and
`{image}__{rate}__{x}___{y}` at any other rate, the rate always written with a decimal point (`0.5`, `2.0`)
so that the two forms cannot be confused. x and y are the window's top-left corner in the image rescaled by
the rate; a full-image coordinate is `(patch coordinate + (x, y)) / rate`.

Cut objects, per object with IoF = (area inside the window) / (object area), as DOTA_devkit's ImgSplit:
  IoF = 1                      -> kept as labelled;
  IOF_THR <= IoF < 1           -> kept with its own difficulty, clipped;
  SLIVER_THR <= IoF < IOF_THR  -> kept as difficult 2 (partly visible), clipped;
  IoF < SLIVER_THR             -> dropped (a sliver; DOTA_devkit keeps these as difficult 2 too).
Clipped = the intersection polygon with the window, collinear vertices removed: 4 vertices are the quad, 5
become 4 by merging the shortest edge into its midpoint (devkit's GetPoly4FromPoly5), 3 or more than 5 drop
the object (devkit "does not handle" them). Every written vertex is thus inside the window.

K shots (`--shots K` of `train dota|star` and `tile`, help text in `domainmona.options.shots_option`; see
`select_shots`): K labelled objects per class, as the few-shot detection benchmarks (TFA, DeFRCN) draw them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import shapely

from domainmona.boxes.geometry import normalise_quads
from domainmona.boxes.labels import DotaObject
from domainmona.errors import UserError

IOF_THR = 0.7
SLIVER_THR = 0.1
CUT_DIFFICULT = 2

_PATCH_NAME = re.compile(r"^(?P<image>.+)__(?P<scale>\d+(?:\.\d+)?)__(?P<x>\d+)___(?P<y>\d+)(?:\.[A-Za-z0-9]+)?$")


def grid_origins(length: int, size: int, stride: int, fit_last: bool = True) -> list[int]:
    """Window origins along one axis covering [0, length).

    ``fit_last`` shifts the last window back so it ends at the edge (the splitter's grid); otherwise the grid
    keeps a constant stride and the last window overhangs (the streaming predictor needs the constant stride).
    """
    if length <= size:
        return [0]
    origins = list(range(0, length - size, stride))
    last = length - size if fit_last else origins[-1] + stride
    if last > origins[-1]:
        origins.append(last)
    return origins


def patch_starts(length: int, size: int, gap: int) -> list[int]:
    """The splitter's grid along one axis, windows overlapping by ``gap``."""
    return grid_origins(length, size, size - gap)


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


def cut_quad(clipped: shapely.Geometry) -> np.ndarray | None:
    """DOTA_devkit's quadrilateral for the part of an object inside a window, or None when it drops it."""
    simplified = shapely.simplify(clipped, 0.0)  # drops collinear vertices left by the clip
    if not isinstance(simplified, shapely.Polygon):  # a self-intersecting label cut into pieces
        return None
    ring = np.asarray(simplified.exterior.coords)[:-1]
    if len(ring) == 5:  # the shortest edge becomes its midpoint
        lengths = np.round(np.linalg.norm(ring - np.roll(ring, -1, axis=0), axis=1), 9)
        midpoints = (ring + np.roll(ring, -1, axis=0)) / 2
        # equal edges: the topmost, then leftmost midpoint, so GEOS's choice of first vertex does not matter
        shortest = min(np.flatnonzero(lengths == lengths.min()), key=lambda i: (midpoints[i, 1], midpoints[i, 0]))
        ring[shortest] = midpoints[shortest]
        ring = np.delete(ring, (shortest + 1) % 5, axis=0)
    return normalise_quads(ring) if len(ring) == 4 else None


def objects_in_window(scaled: ScaledObjects, x: int, y: int, size: int, iof_thr: float = IOF_THR,
                      sliver_thr: float = SLIVER_THR) -> tuple[list[DotaObject], PatchCounts]:
    """Objects of the window whose top-left corner is (x, y), in window coordinates (module docstring)."""
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
        quad = cut_quad(geometry) if fraction >= sliver_thr else None
        if quad is None:
            counts.dropped += 1
            continue
        obj = scaled.objects[index]
        if fraction >= iof_thr:
            counts.kept += 1
            difficult = obj.difficult
        else:
            counts.cut += 1
            difficult = CUT_DIFFICULT
        # float rounding of the clip must not put a vertex a hair outside the window
        kept.append(DotaObject(np.clip(quad - offset, 0, size), obj.cls, difficult))
    return kept, counts


@dataclass
class ShotSelection:
    """The K-shot subset: for each chosen unit (patch, chip, window) the classes it keeps labelled."""

    labelled: dict[int, frozenset[str]] = field(default_factory=dict)
    totals: Counter = field(default_factory=Counter)  # labelled objects per class

    @property
    def chosen(self) -> list[int]:
        return sorted(self.labelled)

    def short(self, shots: int) -> list[str]:
        """Classes that got fewer than K objects (the data holds no more), as 'class (count)'."""
        return [f"{c} ({n})" for c, n in sorted(self.totals.items()) if n < shots]


def select_shots(unit_counts: Sequence[Mapping[str, int]], shots: int, seed: int) -> ShotSelection:
    """K labelled objects per class from units holding ``unit_counts[i][class]`` objects each, seeded.

    As in TFA's few-shot splits, a unit contributes all its objects of a class or none, and its objects of
    the other classes are left out of the labels. Units are visited in a seeded random order, twice:
      1. a unit labels each class it holds that still fits: count so far + its objects <= K;
      2. a class still short of K (no remaining unit fits it exactly) is topped up by the next units in the
         same order, ending at K or just past it.
    A class with fewer than K objects in the data gets all of them. Deterministic for a seed.
    """
    if shots < 1:
        raise UserError(f"--shots must be at least 1, got {shots}")
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(unit_counts))]
    selection = ShotSelection()
    labelled: dict[int, set[str]] = {}

    def take(index: int, classes: set[str]) -> None:
        labelled.setdefault(index, set()).update(classes)
        selection.totals.update({c: unit_counts[index][c] for c in classes})

    for index in order:
        fits = {c for c, n in unit_counts[index].items() if n > 0 and selection.totals[c] + n <= shots}
        if fits:
            take(index, fits)
    for index in order:
        short = {c for c, n in unit_counts[index].items()
                 if n > 0 and selection.totals[c] < shots and c not in labelled.get(index, ())}
        if short:
            take(index, short)
    selection.labelled = {i: frozenset(c) for i, c in labelled.items()}
    return selection
