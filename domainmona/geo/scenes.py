"""Training windows read straight from scenes (`train geo-seg|geo-det --scenes ... --labels ...`): no chip files.

Everything but the pixels is `tile`'s: the plan (domainmona.geo.tiling.plan_tiles: labels reprojected to each
raster's CRS, the tiling grid, the cut-object rule, the K-shot subset), the pooled robust band statistics
(stored in the checkpoint, so `tile-predict` normalises identically) and the nodata rule. Pixels are read
on demand, one window at a time, through block-aligned windowed reads (domainmona.geo.raster.read_tile);
the scene is never loaded whole.

Samplers draw from the training loop's torch.Generator, so a seed gives the same windows and `--resume`
continues the same sequence:
  grid    the tiling grid's labelled windows holding valid pixels, i.e. the chips `tile` writes, drawn as
          chip training draws chips (same seed: the same batches as training on those chips);
  random  a window holding a labelled object, placed uniformly among the windows that hold it whole (that
          hold its centre, for an object larger than a window), or, with probability BACKGROUND, a uniformly
          placed window anywhere on a scene (scenes weighted by area) that touches no unlabelled object
          (it would teach that object as background); windows without valid pixels are drawn again.
Labelled objects are those the K-shot subset labels (every object without `--shots`): an object a chosen
grid window keeps (at least SLIVER_THR of its area inside), in a class that window labels. In a random
window, segmentation keeps the labelled objects by the grid's rule and makes every other object IGNORE in
the mask, as `tile` masks the objects a subset leaves out; detection cuts the labelled objects by the tiling
contract (domainmona.tiling.objects_in_window: clipped, difficult 2 when partly visible) and, as `tile`'s
chips, does not label the others. Detection images are `tile`'s: stretched to uint8 with the statistics,
nodata 0.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainmona.boxes.labels import DotaObject, polygon_to_dota_quad
from domainmona.console import progress
from domainmona.errors import UserError
from domainmona.geo.raster import open_raster, read_tile, streaming_env
from domainmona.geo.stats import normalise, stretch_to_uint8
from domainmona.geo.tiling import (IGNORE, ChipPlan, TileOptions, TilePlan, check_options, class_mask,
                                   plan_tiles, scene_statistics, visible_labels)
from domainmona.recipes import grid_field
from domainmona.tiling import ScaledObjects, objects_in_window, scale_objects

SAMPLERS = ("random", "grid")
BACKGROUND = 0.25  # share of random windows placed anywhere rather than on a labelled object
REDRAWS = 50  # random windows drawn again (no valid pixel; background on an unlabelled object), at most


@dataclass
class SceneOptions:
    """The scene inputs of a training run (the K-shot seed is the run's --seed)."""

    rasters: list[Path]
    labels: Path
    size: int = grid_field("size")
    overlap: int = grid_field("gap")
    bands: tuple[int, ...] | None = None
    class_field: str = "class"
    shots: int | None = None
    allow_no_crs: bool = False
    nodata: float | None = None
    sampler: str = "random"

    def identity(self) -> dict:
        """What a resumed run must share besides the rasters, bands and statistics its model spec records."""
        return {"labels": str(Path(self.labels).resolve()), "class_field": self.class_field, "shots": self.shots,
                "sampler": self.sampler}


@dataclass
class _Window:
    raster: int
    col: int
    row: int
    plan: ChipPlan | None = None  # a grid window's plan; random windows are labelled when read
    pixels: tuple[np.ndarray, np.ndarray] | None = None  # a random window's read (pixels, validity), kept once


@dataclass
class SceneWindows:
    """Labelled windows of scenes for one task, read on demand; use as a context manager (keeps rasters open)."""

    opts: SceneOptions
    tile: TileOptions
    manifest: dict  # the keys of a chip manifest that training and its checkpoint use
    plan: TilePlan
    labelled: list[np.ndarray]  # per raster: bool per label, True where the K-shot subset labels it
    centres: list[tuple[int, int]]  # (raster, label) of every labelled object, for random windows
    grid: list[_Window] = field(default_factory=list)
    _sources: list = field(default_factory=list)
    _scaled: dict[int, ScaledObjects] = field(default_factory=dict)  # detection: labelled objects per raster
    _stack: contextlib.ExitStack | None = None

    @classmethod
    def open(cls, opts: SceneOptions, task: str, seed: int, stats: list[dict] | None = None) -> "SceneWindows":
        """Check the inputs, plan the windows and compute the statistics (one streamed pass per scene, unless
        ``stats`` are given: those an earlier `open` of the same inputs computed)."""
        if opts.sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got '{opts.sampler}'")
        if not opts.rasters:
            raise UserError("give at least one raster with --scenes")
        tile = TileOptions(opts.size, opts.overlap, opts.bands, task, opts.class_field, opts.shots, seed,
                           opts.allow_no_crs, opts.nodata)
        check_options(tile)
        rasters = [Path(r) for r in opts.rasters]
        plan = plan_tiles(rasters, Path(opts.labels), tile)
        if stats is None:
            with streaming_env(), progress() as bar:
                stats = scene_statistics(rasters, tile, plan.scenes, bar)
        manifest = {"task": task, "size": opts.size, "overlap": opts.overlap, "classes": plan.classes,
                    "shots": opts.shots, "seed": seed, "stats": stats, "rasters": plan.scenes}
        labelled = [np.full(len(index.polygons), opts.shots is None) for index in plan.labels]
        if opts.shots is not None:
            for chip in plan.plans:
                index = plan.labels[chip.raster]
                kept = [i for i in visible_labels(index, chip.col, chip.row, opts.size)
                        if index.classes[i] in chip.counts]
                labelled[chip.raster][kept] = True
        centres = [(r, int(i)) for r, mask in enumerate(labelled) for i in np.flatnonzero(mask)]
        return cls(opts, tile, manifest, plan, labelled, centres)

    def __enter__(self) -> "SceneWindows":
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(streaming_env())
        self._sources = [self._stack.enter_context(open_raster(path, self.tile.bands, self.tile.allow_no_crs,
                                                               self.tile.nodata)) for path in self.opts.rasters]
        if self.opts.sampler == "grid":
            self.grid = [_Window(p.raster, p.col, p.row, p) for p in self.plan.plans
                         if self._read(p.raster, p.col, p.row)[1].any()]  # tile skips all-nodata chips
            if not self.grid:
                raise UserError("no window of the grid holds both labels and valid pixels: nothing to train on")
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def objects(self) -> int:
        """How many objects are labelled (the K-shot subset's, or all)."""
        return int(sum(mask.sum() for mask in self.labelled))

    def _read(self, raster: int, col: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        return read_tile(self._sources[raster], self.plan.scenes[raster]["bands"], col, row, self.opts.size)

    def draw(self, count: int, generator) -> list[_Window]:
        """``count`` windows (the grid sampler: at most its number of windows, as chip training draws chips)."""
        import torch

        if self.opts.sampler == "grid":
            picks = torch.randint(len(self.grid), (min(count, len(self.grid)),), generator=generator)
            return [self.grid[i] for i in picks.tolist()]
        return [self.random_window(generator) for _ in range(count)]

    def random_window(self, generator) -> _Window:
        """One window of the random sampler (module docstring)."""
        import torch

        size = self.opts.size
        centres = self.centres
        areas = np.cumsum([s["width"] * s["height"] for s in self.plan.scenes], dtype=np.float64)
        for _ in range(REDRAWS):
            u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
            if not centres or u[0] < BACKGROUND:
                raster = int(np.searchsorted(areas, u[1] * areas[-1], side="right"))
                scene = self.plan.scenes[raster]
                col = math.floor(u[2] * max(scene["width"] - size + 1, 1))
                row = math.floor(u[3] * max(scene["height"] - size + 1, 1))
                touched = self.plan.labels[raster].query(col, row, size, size)
                if not self.labelled[raster][touched].all():
                    continue  # background would teach an unlabelled object as background
            else:
                raster, index = centres[min(int(u[1] * len(centres)), len(centres) - 1)]
                scene = self.plan.scenes[raster]
                x0, y0, x1, y1 = self.plan.labels[raster].polygons[index].bounds
                col = _place(x0, x1, u[2], size, scene["width"])
                row = _place(y0, y1, u[3], size, scene["height"])
            window = _Window(raster, col, row, pixels=self._read(raster, col, row))
            if window.pixels[1].any():
                return window
        raise UserError(f"{REDRAWS} random windows in a row held no valid pixel (or were background on an "
                        "unlabelled object): are the scenes mostly nodata?")

    def window_plan(self, window: _Window) -> ChipPlan:
        """The labels of a window: a grid window's plan, or for a random one its labelled objects that pass the
        grid's sliver rule, every other object it touches left out (IGNORE)."""
        if window.plan is not None:
            return window.plan
        index = self.plan.labels[window.raster]
        labelled = self.labelled[window.raster]
        kept = [i for i in visible_labels(index, window.col, window.row, self.opts.size) if labelled[i]]
        touched = index.query(window.col, window.row, self.opts.size, self.opts.size)
        plan = ChipPlan(window.raster, window.col, window.row, "", [(str(index.classes[i]), index.polygons[i])
                                                                     for i in kept])
        plan.left_out = [(str(index.classes[i]), index.polygons[i]) for i in touched if not labelled[i]]
        return plan

    def segmentation_sample(self, window: _Window) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 (bands, S, S) image and int64 (S, S) mask, exactly as `load_chips` gives the
        chip `tile` would write for this window (IGNORE pixels zeroed)."""
        data, valid = window.pixels or self._read(window.raster, window.col, window.row)
        mask = class_mask(self.window_plan(window), self.plan.classes, self.opts.size, valid).astype(np.int64)
        image = normalise(data, self.manifest["stats"])
        image[:, mask == IGNORE] = 0.0
        return image, mask

    def detection_sample(self, window: _Window) -> tuple[np.ndarray, list[DotaObject]]:
        """The uint8 (bands, S, S) image and the DOTA objects (window pixels) of the chip `tile` would write
        for this window."""
        data, valid = window.pixels or self._read(window.raster, window.col, window.row)
        image = stretch_to_uint8(data, self.manifest["stats"])
        image[:, ~valid] = 0
        if window.plan is not None:
            return image, window.plan.objects
        if window.raster not in self._scaled:
            index, labelled = self.plan.labels[window.raster], self.labelled[window.raster]
            self._scaled[window.raster] = scale_objects([DotaObject(polygon_to_dota_quad(p), str(c)) for p, c, keep
                                                         in zip(index.polygons, index.classes, labelled) if keep], 1.0)
        objects, _ = objects_in_window(self._scaled[window.raster], window.col, window.row, self.opts.size)
        return image, objects

    def segmentation_batch(self, count: int, generator):
        """A training batch of ``count`` windows as (images, masks) tensors."""
        import torch

        samples = [self.segmentation_sample(w) for w in self.draw(count, generator)]
        return (torch.from_numpy(np.stack([s[0] for s in samples])),
                torch.from_numpy(np.stack([s[1] for s in samples])))


def _place(low: float, high: float, u: float, size: int, length: int) -> int:
    """Window origin along one axis for an object spanning [low, high]: uniform (``u``) among the origins that
    hold it whole, or that hold its centre when it is longer than a window; kept in bounds."""
    slack = size - (high - low)
    start = low - u * slack if slack >= 0 else (low + high) / 2 - u * size
    return min(max(math.floor(start), 0), max(length - size, 0))
