"""DOTA-format scenes generated from a seed: the data of the tests and of `domainmona demo`.

Real DOTA/STAR images may not be redistributed, so tests and the demo draw their own: a muted
terrain texture with a few road-like distractors, and rotated objects whose classes differ in colour,
shape, size and aspect ratio, so that a small detector separates them after minutes of CPU training.
The output is the raw DOTA layout (`images/*.png`, `labelTxt/*.txt` with `imagesource:`/`gsd:` headers)
that `split_dataset` reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw

from domainmona.boxes.geometry import normalise_quads, obb_to_poly
from domainmona.boxes.labels import DotaObject, write_dota_labels
from domainmona.errors import UserError
from domainmona.io import atomic_dir

SYNTHETIC_CLASSES: tuple[str, ...] = ("vehicle", "ship", "court", "container")
DOTA_NAMES = {"vehicle": "small-vehicle", "court": "tennis-court", "container": "storage-tank"}  # ship is DOTA's
IMAGE_SOURCE = "domainmona-synthetic"
GSD = 0.5


@dataclass(frozen=True)
class _Look:
    """How a class is drawn: length and width ranges (px), body colour and its markings."""

    length: tuple[float, float]
    width: tuple[float, float]
    colour: tuple[int, int, int]
    marking: tuple[int, int, int]


_LOOKS = {
    "vehicle": _Look((26, 34), (13, 17), (205, 35, 35), (35, 35, 55)),  # red, dark windscreen
    "ship": _Look((70, 92), (16, 22), (240, 240, 240), (60, 90, 160)),  # white, pointed bow, blue deck
    "court": _Look((84, 104), (44, 54), (40, 145, 65), (250, 250, 250)),  # green, white lines
    "container": _Look((44, 56), (18, 24), (235, 145, 25), (110, 55, 10)),  # orange, dark ribs
}


def _to_image(local: np.ndarray, box: np.ndarray) -> list[tuple[float, float]]:
    """Local (along, across) points, in units of half length/width, to image pixels of `box`."""
    cx, cy, length, width, angle = box
    u, v = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    points = np.array([cx, cy]) + np.outer(local[:, 0] * length / 2, u) + np.outer(local[:, 1] * width / 2, v)
    return [tuple(p) for p in points]


def _draw_object(draw: ImageDraw.ImageDraw, cls: str, box: np.ndarray) -> None:
    look = _LOOKS[cls]
    rect = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if cls == "ship":
        hull = np.array([[-1, -1], [0.55, -1], [1, 0], [0.55, 1], [-1, 1]])
        draw.polygon(_to_image(hull, box), fill=look.colour)
        draw.polygon(_to_image(np.array([[-0.7, -0.35], [0.3, -0.35], [0.3, 0.35], [-0.7, 0.35]]), box),
                     fill=look.marking)
    elif cls == "vehicle":
        draw.polygon(_to_image(rect, box), fill=look.colour)
        draw.polygon(_to_image(np.array([[0.25, -0.8], [0.5, -0.8], [0.5, 0.8], [0.25, 0.8]]), box), fill=look.marking)
    elif cls == "court":
        draw.polygon(_to_image(rect, box), fill=look.colour)
        draw.polygon(_to_image(rect * 0.85, box), outline=look.marking, width=2)
        draw.line(_to_image(np.array([[0.0, -0.85], [0.0, 0.85]]), box), fill=look.marking, width=2)
    else:
        draw.polygon(_to_image(rect, box), fill=look.colour)
        for along in np.linspace(-0.75, 0.75, 6):
            draw.line(_to_image(np.array([[along, -0.9], [along, 0.9]]), box), fill=look.marking, width=2)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Muted terrain: smooth colour patches, fine grain and a few grey roads."""
    coarse = rng.uniform(0, 1, (max(2, height // 96), max(2, width // 96), 3))
    coarse[..., 1:] = 0.8 * coarse[..., :1] + 0.2 * coarse[..., 1:]  # mostly brightness, a little hue
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))
    base = np.array([120.0, 115.0, 95.0]) + (smooth.astype(float) - 128) * 0.3
    grain = rng.normal(0, 7, (height, width, 1))
    image = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):
        start = rng.uniform(0, 1, 2) * (width, height)
        end = rng.uniform(0, 1, 2) * (width, height)
        draw.line([tuple(start), tuple(end)], fill=(95, 95, 95), width=int(rng.integers(8, 16)))
    return image


def _place(rng: np.random.Generator, cls: str, width: int, height: int, near_border: bool) -> np.ndarray:
    look = _LOOKS[cls]
    length, across = rng.uniform(*look.length), rng.uniform(*look.width)
    margin = length / 2 + 2
    if near_border:  # centre within a few pixels of the reach that keeps the object inside the image
        side = rng.integers(4)
        along_x, along_y = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        offset = margin + rng.uniform(0, 6)
        cx = (offset, width - offset, along_x, along_x)[side]
        cy = (along_y, along_y, offset, height - offset)[side]
    else:
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
    return np.array([cx, cy, length, across, rng.uniform(-np.pi / 2, np.pi / 2)])


def _scene(rng: np.random.Generator, width: int, height: int, classes: Sequence[str],
           count: int) -> tuple[Image.Image, list[DotaObject]]:
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    frame = shapely.box(0, 0, width, height)
    taken: list[shapely.Polygon] = []
    objects: list[DotaObject] = []
    for attempt in range(count * 30):
        if len(objects) == count:
            break
        cls = classes[attempt % len(classes)] if attempt < len(classes) else classes[rng.integers(len(classes))]
        box = _place(rng, cls, width, height, near_border=rng.uniform() < 0.2)
        quad = obb_to_poly(box)
        footprint = shapely.Polygon(quad)
        if not frame.contains(footprint) or any(footprint.distance(other) < 4 for other in taken):
            continue
        taken.append(footprint)
        _draw_object(draw, cls, box)
        objects.append(DotaObject(normalise_quads(quad), cls, 0))
    return image, objects


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(width, height) < 128:
        raise UserError(f"image_size must be at least 128 px, got {image_size}")
    return int(width), int(height)


def generate_dota_scenes(out_dir: str | os.PathLike, n_images: int = 8, image_size: int | tuple[int, int] = 1024,
                         classes: Sequence[str] = SYNTHETIC_CLASSES, objects_per_image: int | tuple[int, int] = (10, 20),
                         seed: int = 0, prefix: str = "scene", label_names: Mapping[str, str] | None = None
                         ) -> list[Path]:
    """Write `n_images` scenes to `out_dir` (replaced as a whole, only if it holds nothing but earlier
    generated scenes: `atomic_dir`) and return the image paths. `label_names` renames classes in the label
    files (`DOTA_NAMES`: scenes `train dota` takes as DOTA's).

    Each image draws its object count from `objects_per_image` (an int or an inclusive range) and uses
    every class at least once when the count allows; about a fifth of the objects touch the image border.
    Image i depends only on (seed, i).
    """
    out_dir = Path(out_dir)
    unknown = [cls for cls in classes if cls not in _LOOKS]
    if unknown or not classes:
        raise UserError(f"synthetic classes must come from {', '.join(SYNTHETIC_CLASSES)}, got {list(classes)}")
    width, height = _size(image_size)
    low, high = (objects_per_image, objects_per_image) if isinstance(objects_per_image, int) else objects_per_image
    paths = []
    with atomic_dir(out_dir, "synthetic scenes") as tmp:
        for index in range(n_images):
            rng = np.random.default_rng([seed, index])
            image, objects = _scene(rng, width, height, tuple(classes), int(rng.integers(low, high + 1)))
            name = f"{prefix}{index:04d}"
            (tmp / "images").mkdir(exist_ok=True)
            image.save(tmp / "images" / f"{name}.png", compress_level=1)
            if label_names:
                objects = [replace(o, cls=label_names.get(o.cls, o.cls)) for o in objects]
            write_dota_labels(tmp / "labelTxt" / f"{name}.txt", objects, imagesource=IMAGE_SOURCE, gsd=GSD)
            paths.append(out_dir / "images" / f"{name}.png")
    return paths
