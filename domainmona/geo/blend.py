"""Seamless stitching of overlapping tile probabilities with a rolling accumulator.

Each tile's probabilities are weighted by a separable Hann window raised to a floor (so the scene's outer
edges, seen by one tile only, keep a non-zero weight) and by its validity mask; the blended value is
sum(w·p) / sum(w). Tiles arrive in row-major order on a constant-stride grid, so only two overlap strips
(the rows shared with the previous and the next tile row) and one column strip are ever held: memory
grows with the scene's width times the overlap, never with its area.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from domainmona.geo.raster import grid_origins

EDGE_FLOOR = 0.05

# emit(row, col, probabilities (C, h, w), weight sum (h, w)) for a final region of the scene.
Emit = Callable[[int, int, np.ndarray, np.ndarray], None]


def blend_window(size: int, floor: float = EDGE_FLOOR) -> np.ndarray:
    """(size, size) weights: Hann (sin²) in each axis, rescaled to [floor, 1]."""
    hann = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    line = floor + (1.0 - floor) * hann
    return np.outer(line, line).astype(np.float32)


class RollingBlender:
    """Accumulate tiles of a constant-stride grid in row-major order and emit each region once it is final.

    Requires overlap <= size / 2, so that a pixel is covered by at most two tile rows and two tile columns.
    Regions are emitted clipped to the scene; ``final_rows`` says up to which row everything was emitted.
    """

    def __init__(self, width: int, height: int, size: int, overlap: int, channels: int, emit: Emit,
                 floor: float = EDGE_FLOOR):
        if not 0 <= 2 * overlap <= size:
            raise ValueError(f"overlap {overlap} must be between 0 and half the tile size {size}")
        self.width, self.height, self.size, self.overlap = width, height, size, overlap
        self.stride = size - overlap
        self.channels, self.emit = channels, emit
        self.window = blend_window(size, floor)
        self.rows = len(grid_origins(height, size, self.stride, fit_last=False))
        self.columns = len(grid_origins(width, size, self.stride, fit_last=False))
        padded = (self.columns - 1) * self.stride + size
        # Channel 0..C-1: sum of w·p; channel C: sum of w.
        self.top = np.zeros((channels + 1, overlap, padded), np.float32)  # rows [y0, y0+overlap)
        self.bottom = np.zeros_like(self.top)  # rows [y0+stride, y0+size)
        self.middle_right = np.zeros((channels + 1, self.stride - overlap, overlap), np.float32)
        self.row, self.col = 0, -1
        self.final_rows = 0

    def add(self, row: int, col: int, probs: np.ndarray | None, valid: np.ndarray | None = None) -> None:
        """Add tile (row, col) of the grid; ``probs`` (C, size, size) or None for a skipped tile."""
        while self.row < row:
            self._next_row()
        for skipped in range(self.col + 1, col):  # columns never given are skipped tiles
            self._add(skipped, None, None)
        self._add(col, probs, valid)

    def finish(self) -> None:
        """Flush everything after the last tile given (later tiles count as skipped)."""
        while self.row < self.rows:
            self._next_row()
        self._emit(self.row * self.stride, 0, self.top)  # the last tile row's bottom strip
        self.final_rows = self.height

    def _add(self, col: int, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        o, s, size = self.overlap, self.stride, self.size
        x0 = col * s
        weighted = np.zeros((self.channels + 1, size, size), np.float32)
        if probs is not None:
            weight = self.window if valid is None else self.window * valid
            weighted[:-1] = probs * weight
            weighted[-1] = weight
        self.top[:, :, x0:x0 + size] += weighted[:, :o]
        self.bottom[:, :, x0:x0 + size] += weighted[:, s:]
        middle = weighted[:, o:s].copy()
        if col > 0:
            middle[:, :, :o] += self.middle_right
        self.middle_right = middle[:, :, s:].copy()
        self._emit(self.row * s + o, x0, middle[:, :, :s])
        self.col = col

    def _next_row(self) -> None:
        """Complete the current tile row: its top strip becomes final, its bottom strip the next top."""
        for skipped in range(self.col + 1, self.columns):
            self._add(skipped, None, None)
        y0 = self.row * self.stride
        self._emit(y0 + self.overlap, self.columns * self.stride, self.middle_right)
        self._emit(y0, 0, self.top)
        self.top, self.bottom = self.bottom, np.zeros_like(self.bottom)
        self.final_rows = min(y0 + self.stride, self.height)
        self.row, self.col = self.row + 1, -1

    def _emit(self, y0: int, x0: int, acc: np.ndarray) -> None:
        h = min(acc.shape[1], self.height - y0)
        w = min(acc.shape[2], self.width - x0)
        if h <= 0 or w <= 0:
            return
        acc = acc[:, :h, :w]
        weight = acc[-1]
        probs = acc[:-1] / np.where(weight > 0, weight, 1.0)
        self.emit(y0, x0, probs, weight)
