"""Scene-level band statistics for normalisation, computed in one streamed pass over block-aligned windows.

Each band's valid values (domainmona.geo.raster's nodata rule) become weighted values: exact counts from
a 65,536-bin histogram for 8- and 16-bit integers, otherwise a sample (a regular lattice of at most
SAMPLE_WINDOWS block-aligned windows, every k-th pixel of each; every pixel when the scene is small), each
value weighted by the pixels it stands for. Weighted values from several rasters pool by concatenation.

Robust normalisation: values further than one stretch width (p_high − p_low) outside [p_low, p_high] are
spikes, not signal (a 1e30 fill in a reflectance product, a −32768 hole in a DEM): they are clipped to that
range, and mean and std are those of the clipped values, so one spike cannot flatten a whole band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from domainmona.geo.raster import processing_windows, read_window

STRETCH_PERCENTILES = (2.0, 98.0)
# 8- and 16-bit integers: value + offset is the bin of a 65,536-bin histogram
HISTOGRAM_OFFSETS = {"uint8": 0, "int8": 32768, "uint16": 0, "int16": 32768}
HISTOGRAM_BINS = 65536
SAMPLE_WINDOWS = 256  # at most 16 x 16 windows of about SAMPLE_WINDOW pixels a side
SAMPLE_WINDOW = 256
SAMPLE_SIZE = 2**18  # about this many values per band; scenes up to this many pixels are read whole


@dataclass
class BandValues:
    """A band's valid values as distinct values and the number of pixels each stands for."""

    values: np.ndarray  # float64
    weights: np.ndarray  # float64

    @classmethod
    def pooled(cls, parts: Sequence["BandValues"]) -> "BandValues":
        return cls(np.concatenate([p.values for p in parts]), np.concatenate([p.weights for p in parts]))


def band_values(src: rasterio.DatasetReader, bands: Sequence[int]) -> list[BandValues]:
    """The valid values of each band: exact for 8/16-bit integers, a block-aligned sample otherwise."""
    offset = HISTOGRAM_OFFSETS.get(src.dtypes[bands[0] - 1])
    if offset is not None:
        return _histogram_values(src, bands, offset)
    return _sampled_values(src, bands)


def _histogram_values(src: rasterio.DatasetReader, bands: Sequence[int], offset: int) -> list[BandValues]:
    hist = np.zeros((len(bands), HISTOGRAM_BINS), dtype=np.int64)
    for window in processing_windows(src):
        pixels, valid = read_window(src, bands, window)
        pixel_valid = valid.any(axis=0)
        for i, band_pixels in enumerate(pixels):
            hist[i] += np.bincount(band_pixels[pixel_valid].astype(np.int64) + offset, minlength=HISTOGRAM_BINS)
    present = [np.flatnonzero(h) for h in hist]
    return [BandValues((p - offset).astype(np.float64), h[p].astype(np.float64)) for p, h in zip(present, hist)]


def sample_windows(src: rasterio.DatasetReader) -> tuple[list[Window], int]:
    """Block-aligned windows of a regular lattice over the scene (all of them when there are few), and the
    pixel step within them that keeps the sample near SAMPLE_SIZE values per band."""
    windows = list(processing_windows(src, SAMPLE_WINDOW))
    rows = sorted({w.row_off for w in windows})
    cols = sorted({w.col_off for w in windows})
    side = math.isqrt(SAMPLE_WINDOWS)
    keep_rows = {rows[i] for i in np.linspace(0, len(rows) - 1, min(side, len(rows))).round().astype(int)}
    keep_cols = {cols[i] for i in np.linspace(0, len(cols) - 1, min(side, len(cols))).round().astype(int)}
    chosen = [w for w in windows if w.row_off in keep_rows and w.col_off in keep_cols]
    area = sum(w.width * w.height for w in chosen)
    return chosen, max(1, math.isqrt(area // SAMPLE_SIZE))


def _sampled_values(src: rasterio.DatasetReader, bands: Sequence[int]) -> list[BandValues]:
    windows, step = sample_windows(src)
    sampled = sum(-(-w.width // step) * -(-w.height // step) for w in windows)
    weight = src.width * src.height / sampled  # scene pixels each sampled pixel stands for
    parts: list[list[np.ndarray]] = [[] for _ in bands]
    for window in windows:
        pixels, valid = read_window(src, bands, window)
        pixels, valid = pixels[:, ::step, ::step], valid[:, ::step, ::step]
        pixel_valid = valid.any(axis=0)
        for i, band_pixels in enumerate(pixels):
            values = band_pixels[pixel_valid]
            parts[i].append(values[np.isfinite(values)] if values.dtype.kind == "f" else values)
    result = []
    for chunks in parts:
        values, counts = np.unique(np.concatenate(chunks).astype(np.float64), return_counts=True)
        result.append(BandValues(values, counts * weight))
    return result


def summarise(per_band: Sequence[BandValues]) -> list[dict[str, float]]:
    """mean, std, min, max, the stretch percentiles and the pixel count of each band."""
    return [_summary(band) for band in per_band]


def scene_stats(src: rasterio.DatasetReader, bands: Sequence[int]) -> list[dict[str, float]]:
    return summarise(band_values(src, bands))


def _weighted_percentile(values: np.ndarray, cumulative: np.ndarray, p: float) -> float:
    """The smallest value with at least p% of the weight at or below it (numpy's 'inverted_cdf')."""
    return float(values[min(int(np.searchsorted(cumulative, cumulative[-1] * p / 100.0)), len(values) - 1)])


def _summary(band: BandValues) -> dict[str, float]:
    total = float(band.weights.sum())
    if total == 0:
        return {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 0.0, "p_low": 0.0, "p_high": 1.0, "count": 0}
    order = np.argsort(band.values, kind="stable")
    values, weights = band.values[order], band.weights[order]
    cumulative = np.cumsum(weights)
    low, high = (_weighted_percentile(values, cumulative, p) for p in STRETCH_PERCENTILES)
    high = high if high > low else low + 1.0  # a constant band: any positive width maps it to one value
    clipped = np.clip(values, *clip_range(low, high))
    mean = float((weights * clipped).sum() / total)
    std = float(np.sqrt((weights * (clipped - mean) ** 2).sum() / total))
    return {"mean": mean, "std": max(std, 1e-6), "min": float(values[0]), "max": float(values[-1]),
            "p_low": low, "p_high": high, "count": round(total)}


def clip_range(p_low: float, p_high: float) -> tuple[float, float]:
    """Values beyond one stretch width outside [p_low, p_high] are clipped (module docstring)."""
    width = p_high - p_low
    return p_low - width, p_high + width


def _per_band(stats: Sequence[dict[str, float]], key: str, ndim: int) -> np.ndarray:
    return np.array([s[key] for s in stats], dtype=np.float64).reshape(-1, *([1] * (ndim - 1)))


def _robust(pixels: np.ndarray, stats: Sequence[dict[str, float]]) -> np.ndarray:
    """float64 pixels clipped to each band's clip range, NaN (an invalid band value) at the band's mean."""
    low, high = _per_band(stats, "p_low", pixels.ndim), _per_band(stats, "p_high", pixels.ndim)
    x = pixels.astype(np.float64)
    if pixels.dtype.kind == "f":
        x = np.where(np.isnan(x), _per_band(stats, "mean", pixels.ndim), x)
    return np.clip(x, *clip_range(low, high))


def stretch_to_uint8(pixels: np.ndarray, stats: Sequence[dict[str, float]]) -> np.ndarray:
    """Linear percentile stretch to 0..255 per band (uint8 input passes through unchanged)."""
    if pixels.dtype == np.uint8:
        return pixels
    low, high = _per_band(stats, "p_low", pixels.ndim), _per_band(stats, "p_high", pixels.ndim)
    scaled = (_robust(pixels, stats) - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def normalise(pixels: np.ndarray, stats: Sequence[dict[str, float]]) -> np.ndarray:
    """(clip(x) - mean) / std per band, float32, for model input; invalid (NaN) band values give 0."""
    mean, std = _per_band(stats, "mean", pixels.ndim), _per_band(stats, "std", pixels.ndim)
    return ((_robust(pixels, stats) - mean) / std).astype(np.float32)
