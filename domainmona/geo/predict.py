"""`domainmona tile-predict`: stream a scene through a model tile by tile into a GIS output.

Tiles lie on a constant-stride grid read through block-aligned windows, in row-major order, batched.
Segmentation blends overlapping probabilities (RollingBlender) and writes each compressed block row of
the output once; detection keeps only detections (never pixels) and merges tile duplicates with the
detection pipeline's class-wise rotated NMS. All-nodata tiles are skipped. Memory does not grow with the
scene's area.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from domainmona.console import progress
from domainmona.errors import UserError
from domainmona.geo.blend import RollingBlender
from domainmona.geo.raster import grid_origins, open_raster, read_tile, streaming_env
from domainmona.io import PRODUCER, atomic_path, scratch_dir

LABEL_NODATA = 255
OUTPUT_BLOCK = 256
GEOTIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class StreamOptions:
    size: int = 1024
    overlap: int = 200
    batch_size: int = 4
    bands: tuple[int, ...] | None = None
    allow_no_crs: bool = False
    nodata: float | None = None  # replaces the raster's own nodata value


@dataclass
class Tile:
    row_index: int
    col_index: int
    col: int
    row: int
    pixels: np.ndarray
    valid: np.ndarray


# A batch of tiles -> probabilities (N, C, S, S) for segmentation, or each tile's Detections (le90 boxes in
# tile pixels) for detection.
SegmentInfer = Callable[[list[Tile]], np.ndarray]
DetectInfer = Callable[[list[Tile]], list]


def iter_tiles(src: rasterio.DatasetReader, bands: tuple[int, ...], size: int, overlap: int,
               on_tile: Callable[[], None]) -> Iterator[Tile]:
    """The constant-stride grid's non-empty tiles in row-major order; ``on_tile`` ticks for every tile."""
    stride = size - overlap
    for r, row in enumerate(grid_origins(src.height, size, stride, fit_last=False)):
        for c, col in enumerate(grid_origins(src.width, size, stride, fit_last=False)):
            pixels, valid = read_tile(src, bands, col, row, size)
            on_tile()
            if valid.any():
                yield Tile(r, c, col, row, pixels, valid)


def batches(tiles: Iterator[Tile], batch_size: int) -> Iterator[list[Tile]]:
    while batch := list(islice(tiles, batch_size)):
        yield batch


def tile_count(src: rasterio.DatasetReader, size: int, overlap: int) -> int:
    stride = size - overlap
    return len(grid_origins(src.height, size, stride, False)) * len(grid_origins(src.width, size, stride, False))


def check_stream_options(opts: StreamOptions, half_overlap: bool) -> None:
    check_numbers(opts.size, opts.overlap, opts.batch_size)
    limit = opts.size // 2 if half_overlap else opts.size - 1
    if opts.overlap > limit:
        raise UserError(f"--overlap {opts.overlap} is too large for --size {opts.size} (at most {limit})")


def check_numbers(size: int | None = None, overlap: int | None = None, batch_size: int | None = None,
                  score_thr: float = 0.0, iou_thr: float = 0.0) -> None:
    """Refuse tile sizes, overlaps, batch sizes and thresholds that would be replaced or misread silently
    (None: not given, the checkpoint's own value)."""
    if size is not None and size < 32:
        raise UserError(f"--size must be at least 32 pixels, got {size}")
    if overlap is not None and overlap < 0:
        raise UserError(f"--overlap must be >= 0, got {overlap}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    for name, value in (("--score-thr", score_thr), ("--iou-thr", iou_thr)):
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise UserError(f"{name} must be between 0 and 1, got {value}")


def geotiff_is_ours(path: Path) -> bool:
    """A GeoTIFF that `tile-predict` wrote: it carries our PRODUCER tag."""
    try:
        with rasterio.open(path) as src:
            return src.tags().get("PRODUCER") == PRODUCER
    except rasterio.errors.RasterioIOError:
        return False


class BlockRowWriter:
    """Gathers final label regions into full-width rows of output blocks; writes each block row once."""

    def __init__(self, dst: rasterio.io.DatasetWriter, block: int):
        self.dst, self.block = dst, block
        self.pending: dict[int, np.ndarray] = {}

    def put(self, y: int, x: int, labels: np.ndarray) -> None:
        h, w = labels.shape
        for index in range(y // self.block, (y + h - 1) // self.block + 1):
            top = index * self.block
            rows = self.pending.get(index)
            if rows is None:
                rows = np.full((min(self.block, self.dst.height - top), self.dst.width), LABEL_NODATA, np.uint8)
                self.pending[index] = rows
            lo, hi = max(y, top), min(y + h, top + len(rows))
            rows[lo - top:hi - top, x:x + w] = labels[lo - y:hi - y]

    def flush(self, final_rows: int) -> None:
        for index in sorted(self.pending):
            top = index * self.block
            rows = self.pending[index]
            if top + len(rows) <= final_rows:
                self.dst.write(rows[None], window=Window(0, top, self.dst.width, len(rows)))
                del self.pending[index]


def segment_scene(raster: Path, out: Path, infer: SegmentInfer, classes: list[str], opts: StreamOptions,
                  cog: bool = False) -> Path:
    """Write the blended class map (0 background, i + 1 for classes[i], 255 nodata) as a tiled GeoTIFF."""
    check_stream_options(opts, half_overlap=True)
    with streaming_env(), open_raster(raster, opts.bands, opts.allow_no_crs, opts.nodata) as src, \
            atomic_path(out) as tmp, scratch_dir(out) as scratch:
        bands = opts.bands or tuple(range(1, src.count + 1))
        tiled = scratch / "tiled.tif" if cog else tmp
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                       crs=src.crs, transform=src.transform, nodata=LABEL_NODATA, tiled=True,
                       blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK, compress="deflate", BIGTIFF="IF_SAFER")
        with rasterio.open(tiled, "w", **profile) as dst, progress() as bar:
            dst.update_tags(classes=",".join(["background", *classes]), PRODUCER=PRODUCER)
            writer = BlockRowWriter(dst, OUTPUT_BLOCK)

            def emit(y: int, x: int, probs: np.ndarray, weight: np.ndarray) -> None:
                labels = probs.argmax(axis=0).astype(np.uint8)
                labels[weight <= 0] = LABEL_NODATA
                writer.put(y, x, labels)

            blender = RollingBlender(src.width, src.height, opts.size, opts.overlap, len(classes) + 1, emit)
            task = bar.add_task("tile-predict", total=tile_count(src, opts.size, opts.overlap))
            tiles = iter_tiles(src, bands, opts.size, opts.overlap, lambda: bar.advance(task))
            for batch in batches(tiles, opts.batch_size):
                probs = infer(batch)
                for tile, tile_probs in zip(batch, probs):
                    blender.add(tile.row_index, tile.col_index, tile_probs, tile.valid)
                    writer.flush(blender.final_rows)
            blender.finish()
            writer.flush(blender.final_rows)
        if cog:
            rasterio.shutil.copy(tiled, tmp, driver="COG", compress="DEFLATE", BIGTIFF="IF_SAFER")
    return out


def detect_scene(raster: Path, out: Path, infer: DetectInfer, classes: list[str], opts: StreamOptions,
                 score_thr: float = 0.3, iou_thr: float = 0.1) -> Path:
    """Write merged rotated detections as polygons with (class, score): GeoPackage in the raster's CRS,
    or GeoJSON in lon/lat."""
    import shapely

    from domainmona.detection.dota.geometry import obb_to_poly
    from domainmona.detection.dota.merge import Detections, merge_patch_detections
    from domainmona.detection.dota.patch_names import patch_name
    from domainmona.geo.labels import affine_polygons
    from domainmona.geo.vectors import vector_driver, write_polygons

    check_stream_options(opts, half_overlap=False)
    check_numbers(score_thr=score_thr, iou_thr=iou_thr)
    vector_driver(out)
    per_tile: dict[str, Detections] = {}
    with streaming_env(), open_raster(raster, opts.bands, opts.allow_no_crs, opts.nodata) as src, \
            progress() as bar:
        bands = opts.bands or tuple(range(1, src.count + 1))
        task = bar.add_task("tile-predict", total=tile_count(src, opts.size, opts.overlap))
        tiles = iter_tiles(src, bands, opts.size, opts.overlap, lambda: bar.advance(task))
        for batch in batches(tiles, opts.batch_size):
            results = infer(batch)
            for tile, dets in zip(batch, results):
                centres = dets.boxes[:, :2] + (tile.col, tile.row)  # boxes centred on the padding are dropped
                keep = (dets.scores >= score_thr) & (centres >= 0).all(1) & (centres < (src.width, src.height)).all(1)
                per_tile[patch_name("scene", opts.size, 1.0, tile.col, tile.row)] = Detections(
                    dets.boxes[keep], dets.scores[keep], dets.labels[keep])
        crs, transform = src.crs, src.transform
    merged = merge_patch_detections(per_tile, iou_thr).get("scene") if per_tile else None
    if merged is None:
        merged = Detections.of(np.zeros((0, 5)), [], [])
    polygons = affine_polygons(shapely.polygons(obb_to_poly(merged.boxes).reshape(-1, 4, 2)), transform)
    names = np.array([classes[i] for i in merged.labels], dtype=object)
    return write_polygons(out, polygons, {"class": names, "score": merged.scores.astype(np.float64)}, crs)
