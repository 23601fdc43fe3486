"""Seamless stitching of overlapping tile probabilities with a rolling accumulator.

Each tile's probabilities are weighted by a separable Hann window raised to a floor (so the scene's outer
edges, seen by one tile only, keep a non-zero weight) and by its validity mask; the blended value is
sum(w·p) / sum(w). Tiles arrive in row-major order on a constant-stride grid. The scene is cut into
column chunks one stride wide: tile c covers chunk c and the first `overlap` columns of chunk c + 1, so a
chunk of the current tile row is final as soon as tile c is in. Only the rows shared with the next tile
row are carried over, chunk by chunk: the state is one strip of width x overlap, never the scene.

A band of tile rows [r0, r1) can be blended on its own (one process of several): start at row r0 - 1, whose
carry is all that reaches into row r0, keep what is emitted from pixel row r0 * stride on, and finish at
r1. The sums are the very ones the whole scene's pass makes, in the same order.
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
    ``start_row``: the first tile row given (earlier rows count as absent, not as skipped tiles).
    """

    def __init__(self, width: int, height: int, size: int, overlap: int, channels: int, emit: Emit,
                 floor: float = EDGE_FLOOR, start_row: int = 0):
        if not 0 <= 2 * overlap <= size:
            raise ValueError(f"overlap {overlap} must be between 0 and half the tile size {size}")
        self.width, self.height, self.size, self.overlap = width, height, size, overlap
        self.stride = size - overlap
        self.channels, self.emit = channels, emit
        self.window = blend_window(size, floor)
        self.rows = len(grid_origins(height, size, self.stride, fit_last=False))
        self.columns = len(grid_origins(width, size, self.stride, fit_last=False))
        # Channels 0..C-1 hold sum(w·p), channel C sum(w). band: rows [y0, y0+stride) of the current tile
        # row; carry: rows [y0+stride, y0+size), which the next tile row completes.
        self.band: dict[int, np.ndarray] = {}
        self.carry: dict[int, np.ndarray] = {}
        self.next_carry: dict[int, np.ndarray] = {}
        self.row, self.col = start_row, -1
        self.final_rows = start_row * self.stride

    def add(self, row: int, col: int, probs: np.ndarray | None, valid: np.ndarray | None = None) -> None:
        """Add tile (row, col) of the grid; ``probs`` (C, size, size), or None for a skipped tile."""
        while self.row < row:
            self._next_row()
        for skipped in range(self.col + 1, col):  # columns never given are skipped tiles
            self._add(skipped, None, None)
        self._add(col, probs, valid)

    def finish(self, rows: int | None = None) -> None:
        """Flush everything up to tile row ``rows`` (default: the last), tiles not given counting as skipped.
        Before the last row, the strip that row ``rows`` completes stays unemitted."""
        rows = self.rows if rows is None else rows
        while self.row < rows:
            self._next_row()
        if rows < self.rows:
            return
        for chunk in sorted(self.carry):  # the last tile row's bottom strip
            self._emit(self.row * self.stride, chunk, self.carry.pop(chunk))
        self.final_rows = self.height

    def _chunk_width(self, chunk: int) -> int:
        return self.stride if chunk < self.columns else self.overlap

    def _band(self, chunk: int) -> np.ndarray:
        """The current band's accumulator of a chunk, started from what the previous tile row carried."""
        if chunk not in self.band:
            acc = np.zeros((self.channels + 1, self.stride, self._chunk_width(chunk)), np.float32)
            carried = self.carry.pop(chunk, None)
            if carried is not None:
                acc[:, :self.overlap] = carried
            self.band[chunk] = acc
        return self.band[chunk]

    def _next_carry(self, chunk: int) -> np.ndarray:
        if chunk not in self.next_carry:
            self.next_carry[chunk] = np.zeros((self.channels + 1, self.overlap, self._chunk_width(chunk)), np.float32)
        return self.next_carry[chunk]

    def _add(self, col: int, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        s, o = self.stride, self.overlap
        if probs is not None:
            weight = self.window if valid is None else self.window * valid
            weighted = np.concatenate([probs * weight, weight[None]])
            self._band(col)[...] += weighted[:, :s, :s]
            self._next_carry(col)[...] += weighted[:, s:, :s]
            if o:  # the tile's right overlap opens the next chunk
                self._band(col + 1)[:, :, :o] += weighted[:, :s, s:]
                self._next_carry(col + 1)[:, :, :o] += weighted[:, s:, s:]
        self._emit(self.row * s, col, self._band(col))  # final: tiles col - 1 and col are in
        del self.band[col]
        self.col = col

    def _next_row(self) -> None:
        """Complete the current tile row: emit what is left of its band; its carry seeds the next row."""
        for skipped in range(self.col + 1, self.columns):
            self._add(skipped, None, None)
        if self.overlap:
            self._emit(self.row * self.stride, self.columns, self._band(self.columns))
        self.band.clear()
        self.carry, self.next_carry = self.next_carry, {}
        self.final_rows = min((self.row + 1) * self.stride, self.height)
        self.row, self.col = self.row + 1, -1

    def _emit(self, y0: int, chunk: int, acc: np.ndarray) -> None:
        x0 = chunk * self.stride
        h = min(acc.shape[1], self.height - y0)
        w = min(acc.shape[2], self.width - x0)
        if h <= 0 or w <= 0:
            return
        acc = acc[:, :h, :w]
        weight = acc[-1]
        self.emit(y0, x0, acc[:-1] / np.where(weight > 0, weight, 1.0), weight)
