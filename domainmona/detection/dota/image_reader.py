"""Patch reads from images of any size with bounded memory.

Everything goes through GDAL (rasterio), so PNG, JPEG, BMP and TIFF behave alike and rescaling uses
one resampler. An image up to LARGE_IMAGE_BYTES is decoded once into memory (one decode beats many
window reads for DOTA-sized images). A larger one (STAR scenes reach ~28k x 31k px, 2.6 GB decoded) is
read through windows: a tiled GeoTIFF directly; anything else (PNG and JPEG cannot seek to a window,
striped TIFFs re-decode whole-width strips per window) is first streamed top to bottom, once, into a
tiled GeoTIFF cache, holding one 512-row strip at a time.
"""

from __future__ import annotations

import struct
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window
from PIL import PngImagePlugin

from domainmona.errors import UserError
from domainmona.io import atomic_path

LARGE_IMAGE_BYTES = 256 * 2**20
_TILE = 512
# GDAL's block cache defaults to 5% of RAM per process; a band of patches of a 31k-px-wide image fits here.
GDAL_CACHE_MB = 128


def _open(path: Path, mode: str = "r", **profile) -> rasterio.DatasetReader:
    """rasterio.open without the warning that plain images have no georeference."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, mode, **profile)
    except RasterioIOError as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


@contextmanager
def _reading(path: Path):
    """A failed decode (a truncated JPEG, a broken TIFF block) as a one-line error naming the file."""
    try:
        yield
    except RasterioIOError as exc:
        reason = str(exc.__cause__ or exc).splitlines()[0].split(" (this error can be")[0]  # GDAL's hint: not ours
        raise UserError(f"cannot read image {path}: {reason}") from None


def _bands(dataset: rasterio.DatasetReader, path: Path) -> list[int]:
    if dataset.dtypes[0] != "uint8":
        raise UserError(f"{path}: expected an 8-bit image, got {dataset.dtypes[0]}")
    return [1, 2, 3] if dataset.count >= 3 else [1]  # alpha dropped; grey becomes RGB on read


def check_image(path: Path) -> None:
    """Refuse, before any patch is written, an image that is empty, foreign, not 8-bit, or a PNG whose
    chunks are cut short: GDAL decodes a truncated PNG without a word, as black pixels."""
    with _open(path) as dataset:
        _bands(dataset, path)
        driver = dataset.driver
    if driver == "PNG":
        try:
            with open(path, "rb") as file:
                file.seek(8)  # the signature, which GDAL has checked
                PngImagePlugin.PngStream(file).verify()  # every chunk's length and CRC, up to IEND; no decoding
        except (OSError, SyntaxError, EOFError, struct.error) as exc:
            raise UserError(f"cannot read image {path}: truncated or corrupt PNG ({exc})") from None


def _stream_to_tiled_tiff(dataset: rasterio.DatasetReader, bands: list[int], target: Path) -> None:
    profile = dict(driver="GTiff", width=dataset.width, height=dataset.height, count=len(bands), dtype="uint8",
                   tiled=True, blockxsize=_TILE, blockysize=_TILE, compress="deflate", zlevel=1,
                   BIGTIFF="IF_SAFER")
    with atomic_path(target) as tmp, _open(tmp, "w", **profile) as out:
        for row in range(0, dataset.height, _TILE):  # whole tile rows: each compressed block written once
            window = Window(0, row, dataset.width, min(_TILE, dataset.height - row))
            with _reading(Path(dataset.name)):
                pixels = dataset.read(bands, window=window)
            out.write(pixels, window=window)


class ImageSource:
    """One image opened for patch reads; use as a context manager (removes its cache on success)."""

    def __init__(self, path: Path, cache_dir: Path) -> None:
        self.path = path
        self._cache: Path | None = None
        with ExitStack() as stack:  # on any error here, close what was opened and restore GDAL's settings
            # a truncated JPEG is an error, not a warning over grey pixels, whatever the user's GDAL settings
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_ERROR_ON_LIBJPEG_WARNING=True))
            dataset = stack.enter_context(_open(path))
            bands = _bands(dataset, path)
            self.in_memory = dataset.width * dataset.height * len(bands) <= LARGE_IMAGE_BYTES
            if not self.in_memory and not (dataset.driver == "GTiff" and dataset.profile.get("tiled")):
                self._cache = cache_dir / f"{path.stem}.tif"
                if not self._cache.exists():
                    _stream_to_tiled_tiff(dataset, bands, self._cache)
                dataset.close()
                dataset, bands = stack.enter_context(_open(self._cache)), list(range(1, len(bands) + 1))
            self._dataset, self._bands = dataset, bands
            self.width, self.height = dataset.width, dataset.height
            self._resources = stack.pop_all()

    def at_rate(self, rate: float) -> "RescaledImage":
        return RescaledImage(self, rate)

    def read(self, window: Window | None, out_width: int, out_height: int) -> np.ndarray:
        """(bands, out_height, out_width) pixels of a (fractional) window, bilinear when rescaled."""
        with _reading(self.path):
            return self._dataset.read(self._bands, window=window,
                                      out_shape=(len(self._bands), out_height, out_width),
                                      resampling=Resampling.bilinear)

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._resources.close()
        if exc_info[0] is None and self._cache is not None:
            self._cache.unlink(missing_ok=True)


class RescaledImage:
    """(size, size, 3) uint8 patches of the image rescaled by `rate`, zero-padded past its border."""

    def __init__(self, source: ImageSource, rate: float) -> None:
        self.source = source
        self.width = max(1, round(source.width * rate))
        self.height = max(1, round(source.height * rate))
        self._pixels = source.read(None, self.width, self.height) if source.in_memory else None

    def read(self, x: int, y: int, size: int) -> np.ndarray:
        width, height = min(size, self.width - x), min(size, self.height - y)
        if self._pixels is not None:
            data = self._pixels[:, y:y + height, x:x + width]
        else:
            scale_x, scale_y = self.source.width / self.width, self.source.height / self.height
            data = self.source.read(Window(x * scale_x, y * scale_y, width * scale_x, height * scale_y), width, height)
        patch = np.zeros((size, size, 3), dtype=np.uint8)
        patch[:height, :width] = np.moveaxis(data, 0, -1)  # one band broadcasts to three
        return patch
