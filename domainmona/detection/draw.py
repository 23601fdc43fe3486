"""A PNG of one scene with its rotated detections, for people to look at."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from domainmona.boxes.detections import Detections
from domainmona.boxes.geometry import obb_to_poly
from domainmona.io import atomic_path


def class_colour(index: int, count: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(index / max(count, 1), 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image_path: Path, dets: Detections, classes: Sequence[str], out: Path,
                    score_thr: float = 0.3) -> Path:
    """Draw the detections scoring at least `score_thr` as class-coloured polygons with `class score`."""
    image = Image.open(image_path).convert('RGB')
    pen = ImageDraw.Draw(image)
    keep = dets.scores >= score_thr
    polys = obb_to_poly(dets.boxes[keep]).reshape(-1, 4, 2)
    for poly, score, label in zip(polys, dets.scores[keep], dets.labels[keep], strict=True):
        colour = class_colour(int(label), len(classes))
        points = [tuple(p) for p in poly.tolist()]
        pen.polygon(points, outline=colour, width=2)
        x, y = np.min(poly, axis=0)
        pen.text((float(x), float(y) - 11), f'{classes[int(label)]} {score:.2f}', fill=colour)
    with atomic_path(out) as tmp:
        image.save(tmp, format='PNG')
    return out
