"""Georeferenced sample scenes with rotated objects or areas, and matching vector labels in another CRS.

Used by tests, the demo and the benchmark (real datasets cannot be shipped). The scene is generated and
written block by block, so a 16k² raster costs no more memory than a small one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window

from domainmona.geo.labels import Labels, affine_polygons, reproject
from domainmona.geo.vectors import write_polygons
from domainmona.io import atomic_path

# Distinct colours and footprints so that a tiny model can learn them in minutes.
OBJECT_CLASSES = {  # name: (rgb, (length range), (width range))
    "plane": ((235, 235, 225), (44, 60), (36, 48)),
    "ship": ((170, 40, 40), (60, 90), (14, 22)),
    "storage-tank": ((40, 120, 210), (26, 34), (26, 34)),
}
AREA_CLASSES = {
    "water": ((30, 60, 140), (180, 360), (120, 260)),
    "crop": ((70, 170, 50), (160, 320), (90, 200)),
}
NODATA = 0


@dataclass
class SceneSpec:
    width: int = 2048
    height: int = 2048
    bands: int = 3
    dtype: str = "uint8"
    kind: str = "objects"  # objects (detection) or areas (segmentation)
    objects: int = 40
    crs: str = "EPSG:32633"  # UTM 33N
    origin: tuple[float, float] = (400000.0, 5100000.0)  # upper-left corner, metres
    pixel_size: float = 0.5
    frame: int = 48  # nodata border width, plus a nodata corner triangle
    label_crs: str = "EPSG:4326"
    seed: int = 0
    multipart_every: int = 5  # every n-th pair of same-class objects becomes one MultiPolygon feature
    block: int = 256


@dataclass
class Scene:
    raster: Path
    labels: Path
    polygons: np.ndarray  # pixel-space shapely polygons (ground truth)
    classes: np.ndarray
    transform: Affine
    crs: CRS
    spec: SceneSpec = field(repr=False)


def _rotated_rect(cx: float, cy: float, length: float, width: float, angle: float) -> shapely.Polygon:
    c, s = math.cos(angle), math.sin(angle)
    half = [(length / 2, width / 2), (-length / 2, width / 2), (-length / 2, -width / 2), (length / 2, -width / 2)]
    return shapely.Polygon([(cx + dx * c - dy * s, cy + dx * s + dy * c) for dx, dy in half])


def _valid_region(spec: SceneSpec) -> shapely.Polygon:
    """Everything but the frame and a triangle cut off the top-right corner (all-nodata chips there)."""
    f, w, h = spec.frame, spec.width, spec.height
    cut = min(w, h) // 3
    return shapely.box(f, f, w - f, h - f).difference(shapely.Polygon([(w - cut, 0), (w, 0), (w, cut)]))


def _place_objects(spec: SceneSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    catalogue = OBJECT_CLASSES if spec.kind == "objects" else AREA_CLASSES
    names = list(catalogue)
    region = _valid_region(spec)
    placed: list[shapely.Polygon] = []
    classes: list[str] = []
    for attempt in range(spec.objects * 50):
        if len(placed) == spec.objects:
            break
        name = names[len(placed) % len(names)]
        _, (l0, l1), (w0, w1) = catalogue[name]
        poly = _rotated_rect(rng.uniform(0, spec.width), rng.uniform(0, spec.height), rng.uniform(l0, l1),
                             rng.uniform(w0, w1), rng.uniform(-math.pi, math.pi))
        if region.contains(poly) and not any(poly.distance(p) < 4 for p in placed):
            placed.append(poly)
            classes.append(name)
    return np.array(placed, dtype=object), np.array(classes)


def _class_colours(spec: SceneSpec) -> dict[str, tuple[int, ...]]:
    catalogue = OBJECT_CLASSES if spec.kind == "objects" else AREA_CLASSES
    return {name: rgb for name, (rgb, _, _) in catalogue.items()}


def _background(spec: SceneSpec, window: Window, rng: np.random.Generator) -> np.ndarray:
    """Smooth terrain-like RGB texture with noise; values stay in 20..235 so 0 remains nodata."""
    rows, cols = np.mgrid[window.row_off:window.row_off + window.height, window.col_off:window.col_off + window.width]
    base = (np.sin(cols / 97.0) + np.cos(rows / 131.0) + np.sin((cols + rows) / 53.0)) / 3.0
    rgb = np.stack([100 + 35 * base, 115 + 30 * base, 80 + 25 * base])
    return np.clip(rgb + rng.normal(0, 6, size=rgb.shape), 20, 235)


def _to_dtype(rgb: np.ndarray, spec: SceneSpec) -> np.ndarray:
    """RGB (0..255 floats) → the scene's bands and dtype; extra bands are mixtures (a NIR-like band)."""
    extra = [0.6 * rgb[1] + 0.4 * (255 - rgb[2])] * max(0, spec.bands - 3)
    bands = np.concatenate([rgb, np.stack(extra)]) if extra else rgb
    bands = bands[:spec.bands]
    if spec.dtype == "uint16":
        bands = bands * 40.0 + 200.0  # a 12-bit-like radiometric range, never 0
    return np.clip(np.rint(bands), 1, None).astype(spec.dtype)


def write_scene(raster_path: str | Path, labels_path: str | Path, spec: SceneSpec) -> Scene:
    """Write a tiled GeoTIFF and its labels (GeoPackage or GeoJSON by suffix, in ``spec.label_crs``)."""
    rng = np.random.default_rng(spec.seed)
    polygons, classes = _place_objects(spec, rng)
    transform = Affine.translation(*spec.origin) @ Affine.scale(spec.pixel_size, -spec.pixel_size)
    crs = CRS.from_user_input(spec.crs)
    colours = _class_colours(spec)
    tree = shapely.STRtree(polygons)
    invalid = shapely.box(0, 0, spec.width, spec.height).difference(_valid_region(spec))
    profile = dict(driver="GTiff", width=spec.width, height=spec.height, count=spec.bands, dtype=spec.dtype,
                   crs=crs, transform=transform, nodata=NODATA, tiled=True, blockxsize=spec.block,
                   blockysize=spec.block, compress="deflate")
    with atomic_path(raster_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for _, window in dst.block_windows(1):
            box = shapely.box(window.col_off, window.row_off, window.col_off + window.width,
                              window.row_off + window.height)
            shift = Affine.translation(window.col_off, window.row_off)
            shape = (window.height, window.width)
            rgb = _background(spec, window, np.random.default_rng([spec.seed, window.row_off, window.col_off]))
            for i in tree.query(box, predicate="intersects"):
                inside = rasterize([polygons[i]], out_shape=shape, transform=shift).astype(bool)
                rgb[:, inside] = np.array(colours[classes[i]], dtype=float)[:, None]
            pixels = _to_dtype(rgb, spec)
            if invalid.intersects(box):
                pixels[:, rasterize([invalid], out_shape=shape, transform=shift).astype(bool)] = NODATA
            dst.write(pixels, window=window)
    _write_labels(labels_path, affine_polygons(polygons, transform), classes, crs, spec)
    return Scene(Path(raster_path), Path(labels_path), polygons, classes, transform, crs, spec)


def _write_labels(path: str | Path, map_polygons: np.ndarray, classes: np.ndarray, crs: CRS,
                  spec: SceneSpec) -> None:
    moved = reproject(Labels(map_polygons, classes, crs), CRS.from_user_input(spec.label_crs), str(path))
    geoms, names = _group_multiparts(moved.polygons, classes, spec.multipart_every)
    write_polygons(path, geoms, {"class": np.array(names, dtype=object)}, moved.crs)


def _group_multiparts(polygons: np.ndarray, classes: np.ndarray, every: int) -> tuple[np.ndarray, list[str]]:
    """Every ``every``-th object becomes one MultiPolygon feature with the next object of its class."""
    geoms, names, used = [], [], set()
    for i, polygon in enumerate(polygons):
        if i in used:
            continue
        partner = next((j for j in range(i + 1, len(polygons)) if j not in used and classes[j] == classes[i]), None)
        if every and partner is not None and i % every == every - 1:
            used.add(partner)
            polygon = shapely.MultiPolygon([polygon, polygons[partner]])
        geoms.append(polygon)
        names.append(str(classes[i]))
    return np.array(geoms, dtype=object), names
