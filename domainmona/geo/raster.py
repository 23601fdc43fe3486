"""Opening GeoTIFFs with clear errors, and reading tiles through windows aligned to the file's blocks.

GDAL decodes whole blocks: a window that cuts blocks costs the same I/O as the blocks it touches, so each
tile read is widened to the block grid and cropped in numpy. Reads stay inside the raster (boundless
reads are slow) and the outside is padded here.

Nodata: GDAL keeps one nodata value per file, so a band may hold that value as a real measurement where
the other bands are valid. A band value is invalid where GDAL's mask says so (the file's nodata value, a
mask band or alpha), where it equals `--nodata` (which replaces the file's value), or, for floats, where
it is NaN or infinite; a *pixel* is nodata only when every band is invalid there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from domainmona.console import console
from domainmona.errors import UserError
from domainmona.tiling import grid_origins  # noqa: F401  (the grid; predict and blend import it from here)

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# GDAL's block cache defaults to 5% of RAM and keeps decoded blocks of a big scene until it is full, so
# streaming jobs cap it: a few full-width block rows, enough for the overlap between tile rows to hit it.
STREAM_CACHE_BYTES = 64 * 2**20


def streaming_env() -> rasterio.Env:
    """rasterio environment for streamed reads and writes whose memory must not grow with the scene."""
    return rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_BYTES)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """`"1,2,3"` → (1, 2, 3); None keeps every band."""
    if text is None or not text.strip():
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--bands must be comma-separated band numbers like 1,2,3, got '{text}'") from None
    if any(b < 1 for b in bands):
        raise UserError(f"--bands are 1-based band numbers, got '{text}'")
    return bands


def check_nodata(value: float, dtype: str, path: str | Path) -> None:
    """Refuse a `--nodata` the raster's pixels cannot hold: it would silently mark nothing."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        if not (math.isnan(value) or math.isinf(value) or abs(value) <= float(np.finfo(kind).max)):
            raise UserError(f"--nodata {value}: beyond the range of {dtype}, the pixel type of {path}")
        return
    if not math.isfinite(value) or value != int(value):
        raise UserError(f"--nodata {value}: {path} holds {dtype} pixels, which are whole numbers")
    info = np.iinfo(kind)
    if not info.min <= value <= info.max:
        raise UserError(f"--nodata {value}: outside {info.min}..{info.max}, the range of {dtype} ({path})")


def warn_nodata(src: rasterio.DatasetReader) -> None:
    """One warning line for a float raster that declares no nodata (and no --nodata was given): NaN and
    infinite pixels are nodata anyway, and refusing would block the many float products that use only NaN."""
    if src.override_nodata is None and src.nodata is None and np.dtype(src.dtypes[0]).kind == "f":
        console.print(f"[yellow]warning:[/] {src.name}: {src.dtypes[0]} raster declares no nodata value: only NaN "
                      "and infinite pixels are nodata (pass --nodata to name another value)",
                      soft_wrap=True, highlight=False)


@contextlib.contextmanager
def open_raster(path: str | Path, bands: Sequence[int] | None = None, allow_no_crs: bool = False,
                nodata: float | None = None) -> Iterator[rasterio.DatasetReader]:
    """Open a raster for reading, refusing what the tiler cannot use with a one-line reason.

    ``nodata`` (`--nodata`) replaces the file's nodata value; it travels with the dataset as
    ``override_nodata`` so that every read through this module applies it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a raster file")
    if not path.is_file():
        raise UserError(f"{path}: raster not found")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise UserError(f"{path}: not a readable raster ({gdal_reason(exc)})") from None
    with src:
        dtypes = set(src.dtypes)
        if not dtypes <= set(SUPPORTED_DTYPES):
            raise UserError(f"{path}: unsupported dtype {', '.join(sorted(dtypes))} "
                            f"(supported: {', '.join(SUPPORTED_DTYPES)})")
        for band in bands or ():
            if band > src.count:
                raise UserError(f"{path}: band {band} requested but the raster has {src.count} band(s)")
        if src.crs is None and not allow_no_crs:
            raise UserError(f"{path}: raster has no CRS (pass --allow-no-crs to use pixel coordinates)")
        if nodata is not None:
            check_nodata(nodata, src.dtypes[0], path)
        src.override_nodata = nodata
        yield src


def gdal_reason(exc: BaseException) -> str:
    """GDAL's own words: rasterio's "Read failed. See previous exception" hides them in the cause."""
    exc = exc.__cause__ or exc
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _write_cause(folder: Path) -> str:
    """What the OS would say about a failed write in ``folder``, which GDAL reports only as a write error
    (libtiff prints the errno text on its own line)."""
    import resource

    with contextlib.suppress(OSError):
        stat = os.statvfs(folder)
        if stat.f_bavail * stat.f_frsize < 1 << 20:
            return "No space left on device"
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"File too large (this process may write files of at most {soft:,} bytes)"
    return ""


@contextlib.contextmanager
def checked_write(path: Path) -> Iterator[None]:
    """Around GDAL writes of ``path``: a failure is one UserError naming its cause. GDAL raises "Write failed.
    See previous exception" with the cause chained, and reports a failure while flushing blocks at close (a
    full disk) only to its log, after which the truncated file would be renamed into place."""
    failures: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "signalled an error" in text:
                found = re.search(r"msg='(.*)'", text)
                failures.append(found.group(1) if found else text)

    logger, handler = logging.getLogger("rasterio._err"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        try:
            yield
        except RasterioIOError as exc:
            failures.insert(0, gdal_reason(exc))
        if failures:
            cause = _write_cause(Path(path).parent)
            raise UserError(f"{path}: writing failed: {cause + '; ' if cause else ''}{failures[0]}")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def read_window(src: rasterio.DatasetReader, bands: Sequence[int], window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, per-band bool validity) of ``bands`` in ``window`` under the module's nodata rule. GDAL finds a
    truncated or corrupt file only when it decodes the damaged blocks, long after opening it: that becomes a
    one-line error naming the file."""
    override = getattr(src, "override_nodata", None)
    try:
        pixels = src.read(list(bands), window=window)
        # --nodata replaces masks made from the file's nodata value, not a mask band or alpha
        derived = {MaskFlags.nodata, MaskFlags.all_valid}
        file_masks = override is None or any(not derived & set(src.mask_flag_enums[b - 1]) for b in bands)
        valid = src.read_masks(list(bands), window=window) > 0 if file_masks else np.ones(pixels.shape, bool)
    except RasterioIOError as exc:
        raise UserError(f"{src.name}: unreadable pixels near column {window.col_off}, row {window.row_off} "
                        f"(truncated or corrupt file? {gdal_reason(exc)})") from None
    if override is not None:
        valid &= ~np.isnan(pixels) if math.isnan(override) else pixels != np.array(override).astype(pixels.dtype)
    if pixels.dtype.kind == "f":
        valid &= np.isfinite(pixels)
    return pixels, valid


def selected_bands(src: rasterio.DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(bands) if bands else tuple(range(1, src.count + 1))


def _snap(start: int, stop: int, block: int, limit: int) -> tuple[int, int]:
    """Widen [start, stop) to block boundaries, unless blocks are larger than the span (striped files)."""
    if block > stop - start:
        return start, stop
    return (start // block) * block, min(-(-stop // block) * block, limit)


def block_aligned_window(src: rasterio.DatasetReader, col: int, row: int, width: int, height: int) -> Window:
    """The in-bounds part of a tile window, widened to the file's block grid."""
    block_h, block_w = src.block_shapes[0]
    c0, c1 = max(col, 0), min(col + width, src.width)
    r0, r1 = max(row, 0), min(row + height, src.height)
    c0, c1 = _snap(c0, c1, block_w, src.width)
    r0, r1 = _snap(r0, r1, block_h, src.height)
    return Window(c0, r0, c1 - c0, r1 - r0)


def read_tile(src: rasterio.DatasetReader, bands: Sequence[int], col: int, row: int,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """(bands, size, size) pixels and a bool validity mask for the tile at (col, row); outside is invalid."""
    data = np.zeros((len(bands), size, size), dtype=src.dtypes[bands[0] - 1])
    valid = np.zeros((size, size), dtype=bool)
    if col >= src.width or row >= src.height or col + size <= 0 or row + size <= 0:
        return data, valid
    window = block_aligned_window(src, col, row, size, size)
    pixels, masks = read_window(src, bands, window)
    # The tile's in-bounds part, in the widened window's frame and in the tile's frame.
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + size, src.width), min(row + size, src.height)
    crop = np.s_[r0 - window.row_off:r1 - window.row_off, c0 - window.col_off:c1 - window.col_off]
    place = np.s_[r0 - row:r1 - row, c0 - col:c1 - col]
    data[(slice(None), *place)] = pixels[(slice(None), *crop)]
    valid[place] = masks[(slice(None), *crop)].any(axis=0)
    return data, valid


def processing_windows(src: rasterio.DatasetReader, target: int = 1024) -> Iterator[Window]:
    """Block-aligned windows of about ``target`` pixels a side covering the raster once (for full passes)."""
    block_h, block_w = src.block_shapes[0]
    step_h = block_h * max(1, target // block_h) if block_h <= target else target
    step_w = block_w * max(1, target // block_w) if block_w <= target else target
    for row in range(0, src.height, step_h):
        for col in range(0, src.width, step_w):
            yield Window(col, row, min(step_w, src.width - col), min(step_h, src.height - row))
