"""Scene-level band statistics for normalisation, exact for uint8/uint16 and computed in one streamed pass.

A per-band histogram over the valid pixels (65,536 bins at most) gives mean, std and percentiles exactly
without holding the scene; chips then share one normalisation instead of each chip's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio

from domainmona.geo.raster import processing_windows, read_window

STRETCH_PERCENTILES = (2.0, 98.0)
HISTOGRAM_BINS = 65536  # covers uint8 and uint16; pooled across rasters of either dtype


def band_histograms(src: rasterio.DatasetReader, bands: Sequence[int]) -> np.ndarray:
    """(bands, 256 or 65536) counts of each value over the valid pixels, one block-aligned pass."""
    hist = np.zeros((len(bands), HISTOGRAM_BINS), dtype=np.int64)
    for window in processing_windows(src):
        pixels, masks = read_window(src, bands, window)
        valid = (masks > 0).any(axis=0)
        for i, band_pixels in enumerate(pixels):
            hist[i] += np.bincount(band_pixels[valid], minlength=HISTOGRAM_BINS)
    return hist


def summarise(hist: np.ndarray) -> list[dict[str, float]]:
    """mean, std, min, max and the stretch percentiles of each band from its histogram."""
    return [_histogram_summary(h) for h in hist]


def _histogram_summary(hist: np.ndarray) -> dict[str, float]:
    values = np.arange(hist.size, dtype=np.float64)
    total = int(hist.sum())
    if total == 0:
        return {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 0.0, "p_low": 0.0, "p_high": 1.0, "count": 0}
    mean = float((hist * values).sum() / total)
    std = float(np.sqrt((hist * (values - mean) ** 2).sum() / total))
    cumulative = np.cumsum(hist)
    low, high = (int(np.searchsorted(cumulative, total * p / 100.0)) for p in STRETCH_PERCENTILES)
    present = np.flatnonzero(hist)
    return {"mean": mean, "std": max(std, 1e-6), "min": float(present[0]), "max": float(present[-1]),
            "p_low": float(low), "p_high": float(max(high, low + 1)), "count": total}


def stretch_to_uint8(pixels: np.ndarray, stats: Sequence[dict[str, float]]) -> np.ndarray:
    """Linear percentile stretch to 0..255 per band (uint8 input passes through unchanged)."""
    if pixels.dtype == np.uint8:
        return pixels
    low = np.array([s["p_low"] for s in stats], dtype=np.float32)[:, None, None]
    high = np.array([s["p_high"] for s in stats], dtype=np.float32)[:, None, None]
    scaled = (pixels.astype(np.float32) - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def normalise(pixels: np.ndarray, stats: Sequence[dict[str, float]]) -> np.ndarray:
    """(x - mean) / std per band, float32, for model input."""
    mean = np.array([s["mean"] for s in stats], dtype=np.float32).reshape(-1, *([1] * (pixels.ndim - 1)))
    std = np.array([s["std"] for s in stats], dtype=np.float32).reshape(mean.shape)
    return (pixels.astype(np.float32) - mean) / std
