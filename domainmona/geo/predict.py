"""`domainmona tile-predict`: stream a scene through a model tile by tile into a GIS output.

Tiles lie on a constant-stride grid read through block-aligned windows, in row-major order, batched.
Segmentation blends overlapping probabilities (RollingBlender) and writes each compressed block row of
the output once; detection keeps only detections (never pixels) and merges tile duplicates with the
detection pipeline's class-wise rotated NMS. All-nodata tiles are skipped. Memory does not grow with the
scene's area.

Several processes (torchrun) share one scene by bands of tile rows (`row_band`): each blends its band into a
part file that rank 0 assembles into the output, or sends its tiles' detections to rank 0, which merges them
as one process would. Batches never span tile rows, so every tile is predicted in the very batch one process
would use: N processes write the bytes one process writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby, islice
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from domainmona.console import progress
from domainmona.errors import UserError
from domainmona.geo.blend import RollingBlender
from domainmona.geo.raster import checked_write, grid_origins, open_raster, read_tile, streaming_env
from domainmona.io import PRODUCER, atomic_path, scratch_dir
from domainmona.options import check_memory, window_bytes
from domainmona.recipes import grid_field

LABEL_NODATA = 255
# What fails one scene (bad or unreadable input, a full disk) rather than the whole run.
SCENE_ERRORS = (UserError, OSError, rasterio.errors.RasterioError)
OUTPUT_BLOCK = 256
GEOTIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class StreamOptions:
    size: int = grid_field("size")
    overlap: int = grid_field("gap")
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


def one_line(exc: BaseException) -> str:
    """A failure as the one line the summary shows."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Ranks:
    """This process's place among those sharing the work (torchrun's RANK / WORLD_SIZE; alone: 0 of 1).
    Collectives go through the default process group, which `domainmona.launch.join_process_group` opens."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    def gather(self, value):
        """Every process's ``value`` in rank order on rank 0; None on the others."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world if self.rank == 0 else None
        dist.gather_object(value, values, dst=0)
        return values

    def collect(self, work: Callable[[], object]) -> list | None:
        """Every process's ``work()`` in rank order on rank 0, None on the others. A scene's failure on any
        process (one alone: the error itself) is a UserError on rank 0, once every process is done."""
        try:
            result = (None, work())
        except SCENE_ERRORS as exc:
            if self.world == 1:
                raise
            result = (one_line(exc), None)
        gathered = self.gather(result)
        if self.rank:
            return None
        failed = [error for error, _ in gathered if error]
        if failed:
            raise UserError(failed[0])
        return [value for _, value in gathered]

    def broadcast(self, value):
        """Rank 0's ``value`` on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


ALONE = Ranks()


def iter_tiles(src: rasterio.DatasetReader, bands: tuple[int, ...], size: int, overlap: int,
               on_tile: Callable[[], None], rows: range | None = None) -> Iterator[Tile]:
    """The constant-stride grid's non-empty tiles in row-major order (of tile ``rows`` only, if given);
    ``on_tile`` ticks for every tile."""
    stride = size - overlap
    origins = grid_origins(src.height, size, stride, fit_last=False)
    for r in range(len(origins)) if rows is None else rows:
        for c, col in enumerate(grid_origins(src.width, size, stride, fit_last=False)):
            pixels, valid = read_tile(src, bands, col, origins[r], size)
            on_tile()
            if valid.any():
                yield Tile(r, c, col, origins[r], pixels, valid)


def batches(tiles: Iterator[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Batches of one tile row's tiles: a row is batched alike whichever process predicts it (a network's
    output may change in the last bits with the batch it is computed in)."""
    for _, row in groupby(tiles, key=lambda tile: tile.row_index):
        while batch := list(islice(row, batch_size)):
            yield batch


def tile_rows(src: rasterio.DatasetReader, size: int, overlap: int) -> int:
    return len(grid_origins(src.height, size, size - overlap, False))


def tile_count(src: rasterio.DatasetReader, size: int, overlap: int, rows: int | None = None) -> int:
    """Tiles of the grid, or of ``rows`` tile rows of it."""
    columns = len(grid_origins(src.width, size, size - overlap, False))
    return columns * (tile_rows(src, size, overlap) if rows is None else rows)


def row_band(rows: int, ranks: Ranks) -> range:
    """The contiguous tile rows that ``ranks.rank`` predicts: ``rows`` shared as evenly as possible."""
    share, extra = divmod(rows, ranks.world)
    start = ranks.rank * share + min(ranks.rank, extra)
    return range(start, start + share + (ranks.rank < extra))


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
    if size is not None:
        check_memory("--size", size, window_bytes(size, batch=batch_size or 1),
                     f"a batch of {batch_size or 1} {size}x{size} float32 tile(s)")
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


def class_map_profile(src: rasterio.DatasetReader, height: int | None = None) -> dict:
    """A tiled, compressed uint8 class map on ``src``'s grid (``height`` rows of it for a part)."""
    return dict(driver="GTiff", width=src.width, height=src.height if height is None else height, count=1,
                dtype="uint8", crs=src.crs, transform=src.transform, nodata=LABEL_NODATA, tiled=True,
                blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK, compress="deflate", BIGTIFF="IF_SAFER")


def band_pixels(src: rasterio.DatasetReader, opts: StreamOptions, rows: range) -> tuple[int, int]:
    """The pixel rows [top, bottom) that a band of tile rows owns: from its first row's origin to the next
    band's (the scene's end for the last band)."""
    stride = opts.size - opts.overlap
    last = rows.stop == tile_rows(src, opts.size, opts.overlap)
    return rows.start * stride, src.height if last else rows.stop * stride


def blend_rows(src: rasterio.DatasetReader, dst: rasterio.io.DatasetWriter, infer: SegmentInfer, channels: int,
               opts: StreamOptions, rows: range, on_tile: Callable[[], None]) -> tuple[int, int]:
    """Blend tile ``rows`` (a non-empty band of the grid) into ``dst``, which receives the pixel rows the band
    owns (`band_pixels`). Returns (first pixel row, pixels labelled). Tile row ``rows.start - 1`` is predicted
    too: its overlap is part of the band's first rows."""
    bands = opts.bands or tuple(range(1, src.count + 1))
    last = rows.stop == tile_rows(src, opts.size, opts.overlap)
    top, bottom = band_pixels(src, opts, rows)
    writer = BlockRowWriter(dst, OUTPUT_BLOCK)
    labelled = 0

    def emit(y: int, x: int, probs: np.ndarray, weight: np.ndarray) -> None:
        nonlocal labelled
        lo, hi = max(y, top), min(y + len(weight), bottom)
        if lo < hi:
            labels = probs[:, lo - y:hi - y].argmax(axis=0).astype(np.uint8)
            covered = weight[lo - y:hi - y] > 0
            labels[~covered] = LABEL_NODATA
            labelled += int(covered.sum())
            writer.put(lo - top, x, labels)

    first = max(rows.start - 1, 0)
    blender = RollingBlender(src.width, src.height, opts.size, opts.overlap, channels, emit, start_row=first)
    for batch in batches(iter_tiles(src, bands, opts.size, opts.overlap, on_tile, range(first, rows.stop)),
                         opts.batch_size):
        for tile, tile_probs in zip(batch, infer(batch)):
            blender.add(tile.row_index, tile.col_index, tile_probs, tile.valid)
            writer.flush(min(blender.final_rows, bottom) - top)
    blender.finish(None if last else rows.stop)
    writer.flush(bottom - top)
    return top, labelled


def segment_scene(raster: Path, out: Path, infer: SegmentInfer, classes: list[str], opts: StreamOptions,
                  cog: bool = False) -> Path:
    """Write the blended class map (0 background, i + 1 for classes[i], 255 nodata) as a tiled GeoTIFF."""
    predict_class_map(raster, out, infer, classes, opts, cog)
    return out


def predict_class_map(raster: Path, out: Path, infer: SegmentInfer, classes: list[str], opts: StreamOptions,
                      cog: bool = False, ranks: Ranks = ALONE) -> int:
    """`segment_scene` shared by ``ranks``, every one of which calls it; returns the pixels labelled (on rank
    0). Alone, the blend goes straight into the output. Shared, each rank blends its band of tile rows into a
    part in rank 0's scratch folder and rank 0 copies the parts into the output; a failure on any rank is a
    UserError on rank 0 (the others return 0)."""
    check_stream_options(opts, half_overlap=True)
    if ranks.world == 1:
        with streaming_env(), open_raster(raster, opts.bands, opts.allow_no_crs, opts.nodata) as src, \
                scratch_dir(out) as scratch, progress() as bar:
            task = bar.add_task("tile-predict", total=tile_count(src, opts.size, opts.overlap))
            rows = range(tile_rows(src, opts.size, opts.overlap))
            return write_class_map(src, out, classes, cog, scratch, lambda dst: blend_rows(
                src, dst, infer, len(classes) + 1, opts, rows, lambda: bar.advance(task))[1])
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(scratch_dir(out)) if ranks.rank == 0 else None
        scratch = ranks.broadcast(scratch)  # rank 0's folder (its pid in the name): the others write into it

        def blend_my_band() -> list[tuple[int, Path, int]]:
            with streaming_env(), open_raster(raster, opts.bands, opts.allow_no_crs, opts.nodata) as src, \
                    progress() as bar:
                mine = row_band(tile_rows(src, opts.size, opts.overlap), ranks)
                if not mine:
                    return []
                predicted = mine.stop - max(mine.start - 1, 0)  # with the tile row above the band
                task = bar.add_task(f"tile-predict (rank {ranks.rank})",
                                    total=tile_count(src, opts.size, opts.overlap, predicted))
                top, bottom = band_pixels(src, opts, mine)
                part = scratch / f"part-{ranks.rank}.tif"
                with rasterio.open(part, "w", **class_map_profile(src, bottom - top)) as dst:
                    top, labelled = blend_rows(src, dst, infer, len(classes) + 1, opts, mine,
                                               lambda: bar.advance(task))
                return [(top, part, labelled)]

        gathered = ranks.collect(blend_my_band)
        if gathered is None:
            return 0
        parts = [part for mine in gathered for part in mine]
        with streaming_env(), rasterio.open(raster) as src:
            return write_class_map(src, out, classes, cog, scratch, lambda dst: assemble(parts, dst))


def write_class_map(src: rasterio.DatasetReader, out: Path, classes: list[str], cog: bool, scratch: Path,
                    fill: Callable[[rasterio.io.DatasetWriter], int]) -> int:
    """Create the class map on ``src``'s grid, let ``fill`` write its pixels, and rename it onto ``out`` (as
    a COG, converted from a tiled GTiff in ``scratch``: GDAL's COG driver would hold the map in memory)."""
    with atomic_path(out) as tmp, checked_write(out):
        tiled = scratch / "tiled.tif" if cog else tmp
        with rasterio.open(tiled, "w", **class_map_profile(src)) as dst:
            dst.update_tags(classes=",".join(["background", *classes]), PRODUCER=PRODUCER)
            result = fill(dst)
        if cog:
            rasterio.shutil.copy(tiled, tmp, driver="COG", compress="DEFLATE", BIGTIFF="IF_SAFER")
    return result


def assemble(parts: list[tuple[int, Path, int]], dst: rasterio.io.DatasetWriter) -> int:
    """Copy parts (first pixel row, file, pixels labelled) that tile ``dst`` from top to bottom into it, one
    block row at a time (each compressed block written once); returns the pixels labelled."""
    with contextlib.ExitStack() as stack:
        opened = [(top, stack.enter_context(rasterio.open(path))) for top, path, _ in parts]
        for y in range(0, dst.height, OUTPUT_BLOCK):
            rows = np.empty((min(OUTPUT_BLOCK, dst.height - y), dst.width), np.uint8)
            for top, part in opened:
                lo, hi = max(y, top), min(y + len(rows), top + part.height)
                if lo < hi:
                    rows[lo - y:hi - y] = part.read(1, window=Window(0, lo - top, dst.width, hi - lo))
            dst.write(rows[None], window=Window(0, y, dst.width, len(rows)))
    return sum(labelled for _, _, labelled in parts)


def detect_scene(raster: Path, out: Path, infer: DetectInfer, classes: list[str], opts: StreamOptions,
                 score_thr: float = 0.3, iou_thr: float = 0.1) -> Path:
    """Write merged rotated detections as polygons with (class, score): GeoPackage in the raster's CRS,
    or GeoJSON in lon/lat."""
    predict_polygons(raster, out, infer, classes, opts, score_thr, iou_thr)
    return out


def predict_polygons(raster: Path, out: Path, infer: DetectInfer, classes: list[str], opts: StreamOptions,
                     score_thr: float = 0.3, iou_thr: float = 0.1, ranks: Ranks = ALONE) -> int:
    """`detect_scene` shared by ``ranks``, every one of which calls it: each predicts its band of tile rows
    and rank 0 merges all the tiles' detections at once, as one process does. Returns the objects written (on
    rank 0; a failure on any rank is a UserError there, the others return 0)."""
    import shapely

    from domainmona.boxes.detections import Detections
    from domainmona.boxes.geometry import obb_to_poly
    from domainmona.detection.dota.merge import merge_patch_detections
    from domainmona.geo.labels import affine_polygons
    from domainmona.geo.vectors import vector_driver, write_polygons

    check_stream_options(opts, half_overlap=False)
    check_numbers(score_thr=score_thr, iou_thr=iou_thr)
    vector_driver(out)
    gathered = ranks.collect(lambda: detect_rows(raster, infer, opts, score_thr, ranks))
    if gathered is None:
        return 0
    per_tile = {name: dets for tiles in gathered for name, dets in tiles.items()}  # row-major, as alone
    merged = merge_patch_detections(per_tile, iou_thr).get("scene") if per_tile else None
    if merged is None:
        merged = Detections.of(np.zeros((0, 5)), [], [])
    with open_raster(raster, opts.bands, opts.allow_no_crs, opts.nodata) as src:
        crs, transform = src.crs, src.transform
    polygons = affine_polygons(shapely.polygons(obb_to_poly(merged.boxes).reshape(-1, 4, 2)), transform)
    names = np.array([classes[i] for i in merged.labels], dtype=object)
    write_polygons(out, polygons, {"class": names, "score": merged.scores.astype(np.float64)}, crs)
    return len(polygons)


def detect_rows(raster: Path, infer: DetectInfer, opts: StreamOptions, score_thr: float, ranks: Ranks) -> dict:
    """The detections (score >= ``score_thr``, centred in the scene) of every tile of this rank's band of
    tile rows, by patch name, in row-major order."""
    from domainmona.boxes.detections import Detections
    from domainmona.tiling import patch_name

    per_tile = {}
    with streaming_env(), open_raster(raster, opts.bands, opts.allow_no_crs, opts.nodata) as src, \
            progress() as bar:
        bands = opts.bands or tuple(range(1, src.count + 1))
        mine = row_band(tile_rows(src, opts.size, opts.overlap), ranks)
        task = bar.add_task("tile-predict", total=tile_count(src, opts.size, opts.overlap, len(mine)))
        tiles = iter_tiles(src, bands, opts.size, opts.overlap, lambda: bar.advance(task), mine)
        for batch in batches(tiles, opts.batch_size):
            for tile, dets in zip(batch, infer(batch)):
                centres = dets.boxes[:, :2] + (tile.col, tile.row)  # boxes centred on the padding are dropped
                keep = (dets.scores >= score_thr) & (centres >= 0).all(1) & (centres < (src.width, src.height)).all(1)
                per_tile[patch_name("scene", opts.size, 1.0, tile.col, tile.row)] = Detections(
                    dets.boxes[keep], dets.scores[keep], dets.labels[keep])
    return per_tile
