"""`domainmona tile`: scenes + vector labels → training chips (DOTA detection or segmentation masks).

Two passes per raster, both streamed through block-aligned windows: band statistics (domainmona.geo.stats),
then the chips that hold labels, read one at a time. Chips that are all nodata are skipped.

Detection chips are 8-bit images stretched with the scene statistics: RGB PNGs for 1 or 3 bands (what
`split dota` writes), N-band GeoTIFFs otherwise (read by domainmona.geo.chipload), bands in `--bands` order.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from PIL import Image
from rasterio.features import rasterize

from domainmona.boxes.labels import DotaObject, polygon_to_dota_quad, write_dota_labels
from domainmona.console import console, progress
from domainmona.errors import UserError
from domainmona.geo.labels import PixelIndex, read_labels, reproject
from domainmona.geo.raster import (checked_write, open_raster, read_tile, selected_bands, streaming_env,
                                  warn_nodata)
from domainmona.geo.stats import BandValues, band_values, stretch_to_uint8, summarise
from domainmona.io import atomic_dir, check_parent, check_replaceable
from domainmona.options import check_memory, window_bytes
from domainmona.recipes import grid_field
from domainmona.tiling import (SLIVER_THR, ScaledObjects, grid_origins, objects_in_window, patch_name, scale_objects,
                               select_shots)

IGNORE = 255  # mask value of nodata pixels and of objects a K-shot subset leaves out
MANIFEST = "manifest.json"
LAYOUT = {"detection": ("images", "annfiles"), "segmentation": ("images", "masks")}  # detection: as split writes
PNG_BANDS = (1, 3)  # detection chips with these band counts are RGB PNGs, others N-band GeoTIFFs


@dataclass
class TileOptions:
    size: int = grid_field("size")
    overlap: int = grid_field("gap")
    bands: tuple[int, ...] | None = None
    task: str = "detection"
    class_field: str = "class"
    shots: int | None = None
    seed: int = 0
    allow_no_crs: bool = False
    nodata: float | None = None  # replaces the rasters' own nodata value (NaN allowed for float rasters)


@dataclass
class ChipPlan:
    raster: int
    col: int
    row: int
    name: str
    objects: list  # detection: DotaObjects in chip pixels; segmentation: (class, polygon in raster pixels)
    counts: Counter = field(default_factory=Counter)
    left_out: list = field(default_factory=list)  # objects a K-shot subset does not label (masks: IGNORE)

    def keep_classes(self, classes: frozenset[str]) -> None:
        """Label only the objects of ``classes`` (a K-shot subset's choice for this chip)."""
        every = self.objects
        self.objects = [o for o in every if _object_class(o) in classes]
        self.left_out = [o for o in every if _object_class(o) not in classes]
        self.counts = Counter(_object_class(o) for o in self.objects)


def _object_class(obj) -> str:
    return obj.cls if isinstance(obj, DotaObject) else obj[0]


def detection_chip_suffix(bands: int) -> str:
    return "png" if bands in PNG_BANDS else "tif"


def json_nodata(value: float | None) -> float | str | None:
    """A nodata value as strict JSON (which has no NaN)."""
    return "nan" if value is not None and math.isnan(value) else value


def check_options(opts: TileOptions) -> None:
    if opts.task not in LAYOUT:
        raise UserError(f"--task must be detection or segmentation, got '{opts.task}'")
    if opts.size < 32 or not 0 <= opts.overlap < opts.size:
        raise UserError(f"need --size >= 32 and 0 <= --overlap < --size (got {opts.size}, {opts.overlap})")
    check_memory("--size", opts.size, window_bytes(opts.size, bands=2, itemsize=1),
                 f"one {opts.size}x{opts.size} window (its pixels and validity, a byte each at least)")
    if opts.shots is not None and opts.shots < 1:
        raise UserError(f"--shots must be >= 1, got {opts.shots}")
    if not 0 <= opts.seed < 2**32:  # numpy's seeds
        raise UserError(f"--seed must be between 0 and 2**32 - 1, got {opts.seed}")


def _chip_objects(pixel_labels: PixelIndex, scaled: ScaledObjects | None, col: int, row: int,
                  size: int) -> list:
    if scaled is not None:  # detection: the splitter's rule for cut objects (domainmona.tiling)
        objects, _ = objects_in_window(scaled, col, row, size)
        return objects
    indices = visible_labels(pixel_labels, col, row, size)
    return [(str(pixel_labels.classes[i]), pixel_labels.polygons[i]) for i in indices]


def visible_labels(pixel_labels: PixelIndex, col: int, row: int, size: int) -> np.ndarray:
    """Indices of the labels a segmentation window at (col, row) keeps: at least SLIVER_THR of their area inside."""
    box = shapely.box(col, row, col + size, row + size)
    indices = pixel_labels.query(col, row, size, size)
    polygons = pixel_labels.polygons[indices]
    visible = shapely.area(shapely.intersection(polygons, box)) / shapely.area(polygons)
    return indices[visible >= SLIVER_THR]


def _plan_raster(index: int, path: Path, pixel_labels: PixelIndex, opts: TileOptions,
                 width: int, height: int) -> list[ChipPlan]:
    """The chips of one raster that hold labels, with their objects (geometry only, no pixels read)."""
    scaled = None
    if opts.task == "detection":
        scaled = scale_objects([DotaObject(polygon_to_dota_quad(p), str(c))
                                for p, c in zip(pixel_labels.polygons, pixel_labels.classes)], 1.0)
    stride = opts.size - opts.overlap
    plans = []
    for row in grid_origins(height, opts.size, stride, fit_last=True):
        for col in grid_origins(width, opts.size, stride, fit_last=True):
            objects = _chip_objects(pixel_labels, scaled, col, row, opts.size)
            if objects:
                counts = Counter(_object_class(o) for o in objects)
                plans.append(ChipPlan(index, col, row, patch_name(path.stem, opts.size, 1, col, row), objects, counts))
    return plans


def class_mask(plan: ChipPlan, classes: list[str], size: int, valid: np.ndarray) -> np.ndarray:
    shapes = [(polygon, IGNORE) for _, polygon in plan.left_out]  # burnt first: labelled objects win overlaps
    shapes += [(polygon, classes.index(cls) + 1) for cls, polygon in plan.objects]
    mask = rasterize(shapes, out_shape=(size, size), transform=Affine.translation(plan.col, plan.row),
                     fill=0, dtype="uint8")
    mask[~valid] = IGNORE
    return mask


def _write_chip(out: Path, plan: ChipPlan, data: np.ndarray, valid: np.ndarray, src: rasterio.DatasetReader,
                opts: TileOptions, classes: list[str], stats: list[dict]) -> Affine:
    image_dir, label_dir = LAYOUT[opts.task]
    chip_transform = src.transform @ Affine.translation(plan.col, plan.row)
    profile = dict(driver="GTiff", width=opts.size, height=opts.size, crs=src.crs, transform=chip_transform,
                   tiled=True, blockxsize=min(256, opts.size // 16 * 16), blockysize=min(256, opts.size // 16 * 16),
                   compress="deflate")
    if opts.task == "detection":
        image = stretch_to_uint8(data, stats)
        image[:, ~valid] = 0
        if detection_chip_suffix(len(image)) == "png":
            rgb = np.repeat(image, 3, axis=0) if len(image) == 1 else image
            Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0))).save(out / image_dir / f"{plan.name}.png")
        else:
            with rasterio.open(out / image_dir / f"{plan.name}.tif", "w", count=len(image), dtype="uint8",
                               **profile) as dst:
                dst.write(image)
        write_dota_labels(out / label_dir / f"{plan.name}.txt", plan.objects)
    else:
        nodata = src.nodata if opts.nodata is None else opts.nodata
        with rasterio.open(out / image_dir / f"{plan.name}.tif", "w", count=len(data), dtype=data.dtype,
                           nodata=nodata, **profile) as dst:
            dst.write(data)
        with rasterio.open(out / label_dir / f"{plan.name}.tif", "w", count=1, dtype="uint8", nodata=IGNORE,
                           **profile) as dst:
            dst.write(class_mask(plan, classes, opts.size, valid)[None])
    return chip_transform


@dataclass
class TilePlan:
    """What `tile` and the scene sampler (domainmona.geo.scenes) share: the classes, one record per scene,
    each scene's labels in its pixel frame, and the windows of the tiling grid that hold labels (the K-shot
    subset's only, each labelling its chosen classes)."""

    classes: list[str]
    scenes: list[dict]
    labels: list[PixelIndex]
    plans: list[ChipPlan]


def plan_tiles(rasters: list[Path], labels_path: Path, opts: TileOptions) -> TilePlan:
    """Read the labels, place them on every raster (reprojected to its CRS) and plan the labelled windows;
    geometry only, no pixels read."""
    labels = read_labels(labels_path, opts.class_field)
    classes = labels.class_names
    scenes, indexes, plans = [], [], []
    for index, path in enumerate(rasters):
        with open_raster(path, opts.bands, opts.allow_no_crs, opts.nodata) as src:
            warn_nodata(src)
            local = reproject(labels, src.crs, str(labels_path))
            pixel_labels = PixelIndex(local, src.transform)
            nodata = src.nodata if opts.nodata is None else opts.nodata
            scenes.append({"path": str(Path(path).resolve()), "crs": src.crs.to_wkt() if src.crs else None,
                           "transform": list(src.transform)[:6], "width": src.width, "height": src.height,
                           "dtype": src.dtypes[0], "nodata": json_nodata(nodata), "count": src.count,
                           "bands": list(selected_bands(src, opts.bands)),
                           "labels": len(pixel_labels.query(0, 0, src.width, src.height))})
            indexes.append(pixel_labels)
            plans += _plan_raster(index, Path(path), pixel_labels, opts, src.width, src.height)
    if not any(scene["labels"] for scene in scenes):
        raise UserError(f"{labels_path}: no label overlaps {', '.join(str(r) for r in rasters)} "
                        "(wrong file, or a CRS mismatch?)")
    if len({len(scene["bands"]) for scene in scenes}) > 1:
        raise UserError("all rasters must provide the same number of bands (use --bands)")
    if opts.shots:
        selection = select_shots([p.counts for p in plans], opts.shots, opts.seed)
        for index, kept in selection.labelled.items():
            plans[index].keep_classes(kept)
        plans = [plans[i] for i in selection.chosen]
        short = [f"{c} ({selection.totals[c]})" for c in classes if selection.totals[c] < opts.shots]
        if short:
            console.print(f"[yellow]fewer than {opts.shots} shots available for: {', '.join(short)}[/]")
    return TilePlan(classes, scenes, indexes, plans)


def tile_scenes(rasters: list[Path], labels_path: Path, out: Path, opts: TileOptions) -> dict:
    """Write chips, labels and `manifest.json` under ``out`` (atomically); returns the manifest.

    ``out`` is replaced only when an earlier `tile` wrote it and nothing was added to it since; it may not
    hold a raster or the labels."""
    check_options(opts)
    if not rasters:
        raise UserError("give at least one raster to tile")
    rasters, labels_path, out = [Path(r) for r in rasters], Path(labels_path), Path(out)
    check_parent(out, "--out")
    check_replaceable(out, "tile", [*rasters, labels_path])
    plan = plan_tiles(rasters, labels_path, opts)
    return _write_dataset(rasters, out, opts, plan.classes, plan.scenes, plan.plans, [*rasters, labels_path])


def scene_statistics(rasters: list[Path], opts: TileOptions, scenes: list[dict], bar) -> list[dict]:
    """Robust per-band statistics pooled over the scenes (one streamed pass each, domainmona.geo.stats); each
    scene record gets its own under "stats"."""
    per_raster = []
    for index, path in enumerate(rasters):
        with open_raster(path, opts.bands, opts.allow_no_crs, opts.nodata) as src:
            task = bar.add_task(f"statistics {Path(path).name}", total=None)
            per_raster.append(band_values(src, scenes[index]["bands"]))
            bar.remove_task(task)
    for scene, values in zip(scenes, per_raster):
        scene["stats"] = summarise(values)
    return summarise([BandValues.pooled(parts) for parts in zip(*per_raster)])


def _write_dataset(rasters: list[Path], out: Path, opts: TileOptions, classes: list[str], scenes: list[dict],
                   plans: list[ChipPlan], inputs: list[Path]) -> dict:
    chips, skipped = [], 0
    with streaming_env(), atomic_dir(out, "tile", inputs) as tmp, checked_write(out), progress() as bar:
        for sub in LAYOUT[opts.task]:
            (tmp / sub).mkdir()
        stats = scene_statistics(rasters, opts, scenes, bar)
        task = bar.add_task("chips", total=len(plans))
        for index, path in enumerate(rasters):
            with open_raster(path, opts.bands, opts.allow_no_crs, opts.nodata) as src:
                for plan in (p for p in plans if p.raster == index):
                    data, valid = read_tile(src, scenes[index]["bands"], plan.col, plan.row, opts.size)
                    bar.advance(task)
                    if not valid.any():
                        skipped += 1
                        continue
                    chip_transform = _write_chip(tmp, plan, data, valid, src, opts, classes, stats)
                    chips.append({"name": plan.name, "raster": index,
                                  "window": [plan.col, plan.row, opts.size, opts.size],
                                  "transform": list(chip_transform)[:6], "objects": dict(plan.counts)})
        if not chips:
            raise UserError("no chip holds both labels and valid pixels: nothing to write")
        manifest = {"version": 1, "task": opts.task, "size": opts.size, "overlap": opts.overlap,
                    "class_field": opts.class_field, "classes": classes, "shots": opts.shots, "seed": opts.seed,
                    "layout": dict(zip(("images", "labels"), LAYOUT[opts.task])), "stats": stats,
                    "rasters": scenes, "chips": chips, "skipped_nodata_chips": skipped}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


MANIFEST_KEYS = ("task", "size", "overlap", "classes", "layout", "stats", "rasters", "chips")


def read_manifest(chips_dir: Path) -> dict:
    """The manifest of a chip folder made by `domainmona tile`; anything else is a one-line error."""
    path = Path(chips_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{chips_dir}: no {MANIFEST}; make chips with 'domainmona tile' first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable manifest ({type(exc).__name__}); tile again") from None
    missing = [k for k in MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing or not manifest["chips"] or manifest["task"] not in LAYOUT:
        raise UserError(f"{path}: not a manifest written by 'domainmona tile' "
                        f"({'no ' + missing[0] if missing else 'no chips or unknown task'}); tile again")
    return manifest


def scene_record(manifest: dict) -> dict:
    """What `tile-predict` checks a scene against: the bands the chips took, and the training scenes' band
    counts and dtypes (manifests from before the count was recorded give none)."""
    scenes = manifest["rasters"]
    return {"bands": scenes[0]["bands"], "scene_bands": sorted({s["count"] for s in scenes if "count" in s}),
            "dtypes": sorted({s["dtype"] for s in scenes})}
