"""Quadrilateral <-> le90 rotated box conversions and DOTA's vertex order, vectorised over many boxes.

le90 (mmrotate's default): (cx, cy, w, h, angle) with w the longer side, angle in [-pi/2, pi/2) the
direction of the w side in image coordinates (x right, y down), so that the corners are
c +- w/2 (cos a, sin a) +- h/2 (-sin a, cos a).
"""

from __future__ import annotations

import numpy as np
import shapely

from domainmona.errors import UserError

# Every hull edge of four points is one of their six pairwise directions, and a minimum-area rectangle
# has a side along a hull edge (Freeman & Shapira), so trying all six finds it.
_PAIRS = np.array([(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3)])


def as_quads(polys: np.ndarray) -> np.ndarray:
    """(4, 2), (N, 4, 2) or (N, 8) -> (N, 4, 2) float64."""
    quads = np.asarray(polys, dtype=np.float64)
    if quads.ndim == 2 and quads.shape == (4, 2):
        return quads[None]
    return quads.reshape(-1, 4, 2)


def poly_to_obb(poly: np.ndarray) -> np.ndarray:
    """Minimum-area le90 rotated box of each quadrilateral: (4, 2) -> (5,), (N, 4, 2) or (N, 8) -> (N, 5)."""
    quads = as_quads(poly)
    single = np.asarray(poly).shape == (4, 2)
    edges = quads[:, _PAIRS[:, 1]] - quads[:, _PAIRS[:, 0]]  # (N, 6, 2)
    lengths = np.linalg.norm(edges, axis=-1, keepdims=True)
    u = np.where(lengths > 0, edges / np.where(lengths > 0, lengths, 1.0), np.array([1.0, 0.0]))
    v = np.stack([-u[..., 1], u[..., 0]], axis=-1)
    along = np.einsum("npd,nkd->npk", u, quads)  # projections on each candidate axis: (N, 6, 4)
    across = np.einsum("npd,nkd->npk", v, quads)
    extent_u = along.max(-1) - along.min(-1)
    extent_v = across.max(-1) - across.min(-1)
    best = np.argmin(extent_u * extent_v, axis=1)
    rows = np.arange(len(quads))
    u, v = u[rows, best], v[rows, best]
    mid_u = (along.max(-1) + along.min(-1))[rows, best] / 2
    mid_v = (across.max(-1) + across.min(-1))[rows, best] / 2
    center = u * mid_u[:, None] + v * mid_v[:, None]
    len_u, len_v = extent_u[rows, best], extent_v[rows, best]
    longer_is_u = len_u >= len_v
    width = np.where(longer_is_u, len_u, len_v)
    height = np.where(longer_is_u, len_v, len_u)
    direction = np.where(longer_is_u[:, None], u, v)
    angle = np.arctan2(direction[:, 1], direction[:, 0])
    angle = (angle + np.pi / 2) % np.pi - np.pi / 2
    obb = np.stack([center[:, 0], center[:, 1], width, height, angle], axis=1)
    return obb[0] if single else obb


def obb_to_poly(obb: np.ndarray) -> np.ndarray:
    """Corners of rotated boxes, (5,) -> (4, 2) or (N, 5) -> (N, 4, 2); for angle 0: TL, TR, BR, BL."""
    boxes = np.asarray(obb, dtype=np.float64)
    single = boxes.ndim == 1
    boxes = boxes.reshape(-1, 5)
    cos, sin = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    half_w = np.stack([cos, sin], axis=1) * boxes[:, 2:3] / 2
    half_h = np.stack([-sin, cos], axis=1) * boxes[:, 3:4] / 2
    center = boxes[:, :2]
    corners = np.stack([center - half_w - half_h, center + half_w - half_h,
                        center + half_w + half_h, center - half_w + half_h], axis=1)
    return corners[0] if single else corners


def signed_areas(quads: np.ndarray) -> np.ndarray:
    """Shoelace areas of (..., 4, 2) quads: positive when clockwise on screen (y down)."""
    x, y = quads[..., 0], quads[..., 1]
    return 0.5 * np.sum(x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y, axis=-1)


def normalise_quads(polys: np.ndarray) -> np.ndarray:
    """DOTA vertex order: clockwise on screen (y down) and starting at the vertex nearest the top-left,
    chosen like DOTA_devkit's best begin point (least distance to the axis-aligned box's corners), with
    ties broken by position so the result does not depend on the input's starting vertex."""
    quads = as_quads(polys).copy()
    single = np.asarray(polys).shape == (4, 2)
    counter_clockwise = signed_areas(quads) < 0
    quads[counter_clockwise] = quads[counter_clockwise, ::-1]
    lo, hi = quads.min(axis=1), quads.max(axis=1)
    corners = np.stack([lo, np.stack([hi[:, 0], lo[:, 1]], 1), hi, np.stack([lo[:, 0], hi[:, 1]], 1)], axis=1)
    starts = np.arange(4)
    rolled = quads[:, (starts[:, None] + starts[None, :]) % 4]  # (N, start, vertex, 2)
    cost = np.linalg.norm(rolled - corners[:, None], axis=-1).sum(-1)  # (N, 4)
    cost = np.round(cost, 6)
    topmost_then_leftmost = rolled[:, :, 0, 1] * 1e6 + rolled[:, :, 0, 0]
    best = np.argmin(np.where(cost == cost.min(1, keepdims=True), topmost_then_leftmost, np.inf), axis=1)
    result = rolled[np.arange(len(quads)), best]
    return result[0] if single else result


def polygon_to_dota_quad(geometry: shapely.Geometry) -> np.ndarray:
    """(4, 2) DOTA quad of any shapely geometry: its minimum rotated rectangle in DOTA vertex order."""
    envelope = shapely.oriented_envelope(geometry)
    if not isinstance(envelope, shapely.Polygon) or envelope.area <= 0:
        raise UserError(f"cannot make a DOTA quadrilateral from a degenerate geometry: {geometry.wkt[:80]}")
    return normalise_quads(np.asarray(envelope.exterior.coords)[:4])
