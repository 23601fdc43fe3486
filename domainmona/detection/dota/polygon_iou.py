"""Exact IoU of many pairs of quadrilaterals at once (float64).

Why by hand: mmcv's `box_iou_quadri` decides whether a vertex lies inside the other quad by projecting
on two of its edges, which is only right for parallelograms, and computes in float32; DOTA ground truth
holds general quadrilaterals. shapely is exact but makes one GEOS call per pair. Here each pair is clipped
with Sutherland-Hodgman, vectorised over all pairs in numpy: exact whenever one polygon of the pair is
convex (the clip) and the other simple. The rare pairs with no convex member, or with a self-intersecting
(bow-tie) label, go through shapely, after `make_valid`.
"""

from __future__ import annotations

import numpy as np
import shapely

from domainmona.boxes.geometry import signed_areas

_CHUNK = 65536


def _cross(edge: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return edge[..., 0] * vector[..., 1] - edge[..., 1] * vector[..., 0]


def is_convex(quads: np.ndarray) -> np.ndarray:
    """Turns at all four vertices in the same direction (collinear vertices allowed), non-zero area."""
    edges = np.roll(quads, -1, axis=1) - quads
    turns = _cross(edges, np.roll(edges, -1, axis=1))
    return (np.all(turns >= 0, axis=1) | np.all(turns <= 0, axis=1)) & (signed_areas(quads) != 0)


def _clip_area(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Area of subject (P, 4, 2) inside the convex clip (P, 4, 2) polygons of positive signed area."""
    count = len(subject)
    polygon, sizes = subject, np.full(count, 4)
    rows = np.arange(count)[:, None]
    for j in range(4):
        start, edge = clip[:, j], clip[:, (j + 1) % 4] - clip[:, j]
        slots = np.arange(polygon.shape[1])[None]
        valid = slots < sizes[:, None]
        following = np.where(slots + 1 < sizes[:, None], slots + 1, 0)
        current, nxt = polygon, polygon[rows, following]
        side_current = _cross(edge[:, None], current - start[:, None])
        side_next = _cross(edge[:, None], nxt - start[:, None])
        inside_current, inside_next = side_current >= 0, side_next >= 0
        crosses = inside_current != inside_next
        t = np.where(crosses, side_current / np.where(crosses, side_current - side_next, 1.0), 0.0)
        crossing_point = current + t[..., None] * (nxt - current)
        emitted = np.stack([current, crossing_point], axis=2).reshape(count, -1, 2)
        keep = np.stack([inside_current & valid, crosses & valid], axis=2).reshape(count, -1)
        order = np.argsort(~keep, axis=1, kind="stable")
        sizes = keep.sum(axis=1)
        width = max(int(sizes.max(initial=0)), 1)
        polygon = emitted[rows, order[:, :width]]
    slots = np.arange(polygon.shape[1])[None]
    following = np.where(slots + 1 < sizes[:, None], slots + 1, 0)
    nxt = polygon[rows, following]
    terms = np.where(slots < sizes[:, None], _cross(polygon, nxt), 0.0)
    return np.abs(terms.sum(axis=1)) / 2


def _is_simple(quads: np.ndarray, convex: np.ndarray) -> np.ndarray:
    simple = convex.copy()
    simple[~convex] = shapely.is_valid(shapely.polygons(quads[~convex]))
    return simple


def _shapely_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    first, second = shapely.make_valid(shapely.polygons(a)), shapely.make_valid(shapely.polygons(b))
    inter = shapely.area(shapely.intersection(first, second))
    union = shapely.area(first) + shapely.area(second) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def quad_pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i] for (P, 4, 2) arrays of quadrilaterals."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4, 2)
    ious = np.zeros(len(a))
    convex_a, convex_b = is_convex(a), is_convex(b)
    simple_a, simple_b = _is_simple(a, convex_a), _is_simple(b, convex_b)
    vectorised = (convex_a & simple_b) | (convex_b & simple_a)
    slow = np.flatnonzero(~vectorised)
    if len(slow):
        ious[slow] = _shapely_iou(a[slow], b[slow])
    fast = np.flatnonzero(vectorised)
    for begin in range(0, len(fast), _CHUNK):
        index = fast[begin:begin + _CHUNK]
        clip_is_a = convex_a[index]
        clip = np.where(clip_is_a[:, None, None], a[index], b[index])
        subject = np.where(clip_is_a[:, None, None], b[index], a[index])
        origin = clip.mean(axis=1, keepdims=True)  # small coordinates keep float64 exact to ~1e-12
        clip, subject = clip - origin, subject - origin
        clip = np.where((signed_areas(clip) < 0)[:, None, None], clip[:, ::-1], clip)
        inter = _clip_area(subject, clip)
        union = np.abs(signed_areas(a[index])) + np.abs(signed_areas(b[index])) - inter
        ious[index] = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return ious
