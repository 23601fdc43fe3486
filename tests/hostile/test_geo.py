"""Hostile inputs to the GeoTIFF commands: `tile`, `tile-predict`, `train geo-seg`, `train geo-det`, `geo-demo`.

Every input is generated here, small and real: GeoTIFFs written by GDAL (then truncated, retyped, stripped
of their CRS), vector files written by GDAL (with NaN vertices, null classes, no features), chips from
`tile`, and a geo-seg checkpoint from one iteration of `train geo-seg` on the micro encoder. Each case copies
the assets it needs into its own workspace, so a command that wrongly wrote over an input would show up
as a changed file there.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from harness import (CASES_RUN, MARKER, NEW, Case, Interrupt, Setup, assert_one_error_line, crafted, ids, interrupted,
                     killed_then_rerun, made_new, refused, run_cli, run_subprocess, snapshot, steps, temporaries,
                     write)
from rasterio.crs import CRS

ASSETS: dict[str, Path] = {}  # name -> generated file or folder (see `assets`); cases copy them into `{ws}`
TRANSFORM = Affine(0.5, 0, 400000, 0, -0.5, 5100000)  # the synthetic scenes' grid (UTM 33N)


@pytest.fixture(scope="module", autouse=True)
def assets(tmp_path_factory):
    """A 320-pixel scene with objects and its labels, segmentation and detection chips from it, and a
    one-iteration geo-seg run (its work dir and checkpoint)."""
    from domainmona.geo.segtrain import SegTrainOptions, train_segmentation
    from domainmona.geo.synthetic import SceneSpec, write_scene
    from domainmona.geo.tiling import TileOptions, tile_scenes

    root = tmp_path_factory.mktemp("geo-assets")
    scene = write_scene(root / "scene.tif", root / "labels.gpkg",
                        SceneSpec(width=320, height=320, objects=8, frame=16, seed=1, block=64))
    tile_scenes([scene.raster], scene.labels, root / "chips", TileOptions(size=64, overlap=16, task="segmentation"))
    tile_scenes([scene.raster], scene.labels, root / "detchips", TileOptions(size=64, overlap=16))
    checkpoint = train_segmentation(SegTrainOptions(root / "chips", root / "run", max_iters=1, encoder="micro",
                                                    batch_size=2))
    ASSETS.update({"scene.tif": scene.raster, "labels.gpkg": scene.labels, "chips": root / "chips",
                   "detchips": root / "detchips", "seg.safetensors": checkpoint, "run": root / "run"})
    yield ASSETS
    ASSETS.clear()


# ------------------------------------------------------------------------------------------ workspace setup

def use(*names: str) -> Setup:
    """Copy the named assets into the workspace."""

    def setup(ws: Path) -> None:
        for name in names:
            source = ASSETS[name]
            (shutil.copytree if source.is_dir() else shutil.copy)(source, ws / name)

    return setup


def truncated(name: str, source: str, keep: float) -> Setup:
    """``name``: the first ``keep`` fraction of the bytes of asset ``source``."""

    def setup(ws: Path) -> None:
        data = ASSETS[source].read_bytes()
        (ws / name).write_bytes(data[:int(len(data) * keep)])

    return setup


def raster(name: str, dtype: str = "uint8", count: int = 3, crs: str | None = "EPSG:32633",
           driver: str = "GTiff", value: float = 100, nodata: float | None = None) -> Setup:
    """A 320-pixel raster of one ``value`` on the scene's grid (so the scene's labels overlap it)."""

    def setup(ws: Path) -> None:
        with rasterio.open(ws / name, "w", driver=driver, width=320, height=320, count=count, dtype=dtype,
                           crs=crs, transform=TRANSFORM, nodata=nodata) as dst:
            dst.write(np.full((count, 320, 320), value, dtype=dtype))

    return setup


def labels(name: str, polygons: list, classes: list, crs: str | None = "EPSG:32633") -> Setup:
    """A vector file of map polygons (pixel boxes given as (x0, y0, x1, y1) go through the scene's grid)."""
    from domainmona.geo.labels import affine_polygons
    from domainmona.geo.vectors import write_polygons

    def setup(ws: Path) -> None:
        geoms = np.array([shapely.box(*p) if isinstance(p, tuple) else p for p in polygons], dtype=object)
        write_polygons(ws / name, affine_polygons(geoms, TRANSFORM), {"class": np.array(classes, dtype=object)},
                       CRS.from_user_input(crs) if crs else None)

    return setup


def nonfinite_labels(name: str, value: float) -> Setup:
    """A GeoPackage whose second polygon has one vertex at ``value`` (NaN or inf)."""
    from domainmona.geo.vectors import write_polygons

    bad = shapely.Polygon([(400040, 5099960), (400060, value), (400060, 5099940)])
    good = shapely.box(400010, 5099900, 400050, 5099950)

    def setup(ws: Path) -> None:
        write_polygons(ws / name, np.array([good, bad], dtype=object),
                       {"class": np.array(["water", "crop"], dtype=object)}, CRS.from_epsg(32633))

    return setup


def manifest_edit(folder: str, change: Callable[[dict], None]) -> Setup:
    def setup(ws: Path) -> None:
        path = ws / folder / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return setup


def record(folder: str, content: dict) -> Setup:
    return write(f"{folder}/.domainmona.json", json.dumps({"producer": "domainmona", **content}))


def first_chip(folder: str, kind: str) -> Callable[[Path], Path]:
    return lambda ws: next(iter(sorted((ws / folder / kind).iterdir())))


def chip_damaged(how: str) -> Setup:
    def setup(ws: Path) -> None:
        chip = first_chip("chips", "images")(ws)
        if how == "missing":
            chip.unlink()
        else:
            chip.write_bytes(chip.read_bytes()[:200])

    return setup


# ---------------------------------------------------------------------------------------------------- tile

def tile_with(*extra: str, raster_arg: str = "{ws}/scene.tif", labels_arg: str = "{ws}/labels.gpkg",
              out: str = "{ws}/chips") -> tuple[str, ...]:
    return ("tile", raster_arg, "--labels", labels_arg, "--out", out, "--size", "64", "--overlap", "16", *extra)


TILE = tile_with()
TILE_SEG = tile_with("--task", "segmentation")
SCENE = use("scene.tif", "labels.gpkg")


TILE_CASES = [
    # numbers
    Case("tile-size-0", (*TILE, "--size", "0"), "--size", SCENE),
    Case("tile-size-negative", (*TILE, "--size", "-64"), "--size", SCENE),
    Case("tile-size-too-small", (*TILE, "--size", "31"), "--size", SCENE),
    Case("tile-overlap-negative", (*TILE, "--overlap", "-1"), "--overlap", SCENE),
    Case("tile-overlap-equals-size", (*TILE, "--overlap", "64"), "--overlap < --size", SCENE),
    Case("tile-overlap-beyond-size", (*TILE, "--overlap", "100"), "--overlap < --size", SCENE),
    Case("tile-shots-0", (*TILE, "--shots", "0"), "--shots", SCENE),
    Case("tile-shots-negative", (*TILE, "--shots", "-3"), "--shots", SCENE),
    Case("tile-seed-negative", (*TILE, "--shots", "1", "--seed", "-1"), "--seed", SCENE),
    Case("tile-seed-huge", (*TILE, "--shots", "1", "--seed", "99999999999999999999"), "--seed", SCENE),
    Case("tile-size-not-a-number", (*TILE, "--size", "nan"), "--size", SCENE),
    Case("tile-bands-zero", (*TILE_SEG, "--bands", "0"), "1-based", SCENE),
    Case("tile-bands-text", (*TILE_SEG, "--bands", "red,green"), "comma-separated", SCENE),
    Case("tile-bands-beyond-count", (*TILE_SEG, "--bands", "1,2,9"), "band 9 requested", SCENE),
    Case("tile-bad-task", (*TILE, "--task", "classification"), "--task", SCENE),
    # rasters
    Case("tile-raster-missing", tile_with(raster_arg="{ws}/nothing.tif"), "raster not found", SCENE),
    Case("tile-raster-is-folder", tile_with(raster_arg="{ws}/folder"), "a folder, not a raster",
         steps(SCENE, lambda ws: (ws / "folder").mkdir())),
    Case("tile-raster-empty", tile_with(raster_arg="{ws}/empty.tif"), "not a readable raster",
         steps(SCENE, write("empty.tif", b""))),
    Case("tile-raster-garbage", tile_with(raster_arg="{ws}/bad.tif"), "not a readable raster",
         steps(SCENE, write("bad.tif", b"II*\x00garbage" * 40))),
    Case("tile-raster-truncated-half", tile_with(raster_arg="{ws}/cut.tif"), "cut.tif",
         steps(SCENE, truncated("cut.tif", "scene.tif", 0.5))),
    Case("tile-raster-truncated-header", tile_with(raster_arg="{ws}/cut.tif"), "cut.tif",
         steps(SCENE, truncated("cut.tif", "scene.tif", 0.02))),
    Case("tile-raster-complex64", tile_with(raster_arg="{ws}/c.tif"), "unsupported dtype complex64",
         steps(SCENE, raster("c.tif", "complex64"))),
    Case("tile-raster-int64", tile_with(raster_arg="{ws}/i.tif"), "unsupported dtype int64",
         steps(SCENE, raster("i.tif", "int64"))),
    # --nodata the pixels cannot hold (GDAL would compare against a value no pixel can have)
    Case("tile-nodata-nan-uint8", (*TILE, "--nodata", "nan"), "whole numbers", SCENE),
    Case("tile-nodata-inf-uint8", (*TILE, "--nodata", "inf"), "whole numbers", SCENE),
    Case("tile-nodata-fraction-uint8", (*TILE, "--nodata", "2.5"), "whole numbers", SCENE),
    Case("tile-nodata-beyond-uint8", (*TILE, "--nodata", "256"), "outside 0..255", SCENE),
    Case("tile-nodata-negative-uint8", (*TILE, "--nodata", "-1"), "outside 0..255", SCENE),
    Case("tile-nodata-beyond-float32", tile_with("--nodata", "1e39", raster_arg="{ws}/f.tif"), "beyond the range",
         steps(SCENE, raster("f.tif", "float32"))),
    Case("tile-nodata-text", (*TILE, "--nodata", "none"), "--nodata", SCENE),
    Case("tile-raster-no-crs", tile_with(raster_arg="{ws}/nocrs.tif"), "no CRS",
         steps(SCENE, raster("nocrs.tif", crs=None))),
    Case("tile-raster-is-labels", tile_with(raster_arg="{ws}/labels.gpkg"), "not a readable raster", SCENE),
    Case("tile-rasters-band-counts-differ", (*TILE_SEG, "{ws}/four.tif"), "same number of bands",
         steps(SCENE, raster("four.tif", count=4))),
    # labels
    Case("tile-labels-missing", tile_with(labels_arg="{ws}/none.gpkg"), "label file not found", SCENE),
    Case("tile-labels-empty-file", tile_with(labels_arg="{ws}/empty.gpkg"), "not a readable vector file",
         steps(SCENE, write("empty.gpkg", b""))),
    Case("tile-labels-garbage", tile_with(labels_arg="{ws}/bad.gpkg"), "not a readable vector file",
         steps(SCENE, write("bad.gpkg", b"not a geopackage" * 100))),
    Case("tile-labels-truncated", tile_with(labels_arg="{ws}/cut.gpkg"), "cut.gpkg",
         steps(SCENE, truncated("cut.gpkg", "labels.gpkg", 0.3))),
    Case("tile-labels-broken-json", tile_with(labels_arg="{ws}/bad.geojson"), "not a readable vector file",
         steps(SCENE, write("bad.geojson", '{"type": "FeatureCollection", "features": [{"type": '))),
    Case("tile-labels-no-features", tile_with(labels_arg="{ws}/none.geojson"), "no features",
         steps(SCENE, write("none.geojson", '{"type": "FeatureCollection", "features": []}'))),
    Case("tile-labels-no-class-field", (*TILE, "--class-field", "kind"), "no field 'kind'", SCENE),
    Case("tile-labels-nan-vertex", tile_with(labels_arg="{ws}/nan.gpkg"), "NaN or infinite",
         steps(SCENE, nonfinite_labels("nan.gpkg", float("nan")))),
    Case("tile-labels-inf-vertex", tile_with(labels_arg="{ws}/inf.gpkg"), "NaN or infinite",
         steps(SCENE, nonfinite_labels("inf.gpkg", float("inf")))),
    Case("tile-labels-null-class", tile_with(labels_arg="{ws}/null.geojson"), "no 'class' value",
         steps(SCENE, write("null.geojson", json.dumps({"type": "FeatureCollection", "features": [
             {"type": "Feature", "properties": {"class": None},
              "geometry": {"type": "Polygon", "coordinates": [[[13.7, 46.0], [13.71, 46.0], [13.71, 46.01],
                                                               [13.7, 46.0]]]}}]})))),
    Case("tile-labels-points-only", tile_with(labels_arg="{ws}/points.gpkg"), "no polygon",
         steps(SCENE, labels("points.gpkg", [shapely.Point(400030, 5099970)], ["water"]))),
    Case("tile-labels-elsewhere", tile_with(labels_arg="{ws}/far.gpkg"), "no label overlaps",
         steps(SCENE, labels("far.gpkg", [(5000, 5000, 5040, 5040)], ["water"]))),
    Case("tile-labels-wrong-crs", tile_with(labels_arg="{ws}/mislabelled.gpkg"), "outside the area",
         steps(SCENE, labels("mislabelled.gpkg", [(20, 20, 60, 60)], ["water"], crs="EPSG:4326"))),
    Case("tile-labels-is-raster", tile_with(labels_arg="{ws}/scene.tif"), "not a readable vector file", SCENE),
    # outputs
    Case("tile-out-is-file", tile_with(out="{ws}/notes.txt"), "is a file",
         steps(SCENE, write("notes.txt", "mine"))),
    Case("tile-out-is-the-raster", tile_with(out="{ws}/scene.tif"), "is a file", SCENE),
    Case("tile-out-parent-is-file", tile_with(out="{ws}/notes.txt/chips"), "is a file, not a folder",
         steps(SCENE, write("notes.txt", "mine"))),
    Case("tile-out-holds-user-files", tile_with(out="{ws}/thesis"), "did not write",
         steps(SCENE, write("thesis/thesis.tex", "..."))),
    Case("tile-out-holds-the-raster", tile_with(raster_arg="{ws}/data/scene.tif", out="{ws}/data"), "an input",
         steps(SCENE, lambda ws: (ws / "data").mkdir(), lambda ws: shutil.move(ws / "scene.tif", ws / "data"))),
    Case("tile-out-holds-the-labels", tile_with(labels_arg="{ws}/data/labels.gpkg", out="{ws}/data"), "an input",
         steps(SCENE, lambda ws: (ws / "data").mkdir(), lambda ws: shutil.move(ws / "labels.gpkg", ws / "data"))),
    Case("tile-out-is-workspace", tile_with(out="{ws}"), "an input", SCENE),
    # The case: an old chip folder (a manifest, no record) that also holds the user's files.
    Case("tile-out-old-manifest-and-user-files", tile_with(out="{ws}/site"), "did not write",
         steps(SCENE, write("site/manifest.json", "{}"), write("site/index.html", "<html>"))),
    Case("tile-out-earlier-tile-plus-user-file", tile_with(out="{ws}/chips"), "did not write there",
         steps(SCENE, use("chips"), write("chips/notes.md", "mine"))),
    Case("tile-out-from-another-command", tile_with(out="{ws}/work"), "did not write",
         steps(SCENE, record("work", {"command": "train geo-seg", "files": ["a.txt"]}), write("work/a.txt", "x"))),
]


# -------------------------------------------------------------------------------------------- tile-predict

PREDICT = ("tile-predict", "{ws}/scene.tif", "--checkpoint", "{ws}/seg.safetensors", "--out", "{ws}/pred.tif")
SEG = use("scene.tif", "seg.safetensors")


def predict_with(*extra: str, raster_arg: str = "{ws}/scene.tif", checkpoint: str = "{ws}/seg.safetensors",
                 out: str = "{ws}/pred.tif") -> tuple[str, ...]:
    return ("tile-predict", raster_arg, "--checkpoint", checkpoint, "--out", out, *extra)


def detector_file(ws: Path, scenes: dict | None = None) -> None:
    """`det.safetensors`: a detector checkpoint's header (`DetectorInfo.metadata`, the scenes it records or,
    with ``scenes`` None, none, as before they were recorded) over a placeholder tensor: every check of
    `tile-predict` reads the header before any model is built."""
    import torch
    from safetensors.torch import save_file

    from domainmona.detection.checkpoint import SCENES_KEY, DetectorInfo

    meta = DetectorInfo("model = dict(type='OrientedRCNN')", ("plane",), 64, 16, scenes or {}).metadata()
    if scenes is None:
        del meta[SCENES_KEY]
    save_file({"w": torch.zeros(2)}, str(ws / "det.safetensors"), metadata=meta)


def detector_like(ws: Path) -> None:
    """A detector checkpoint from before the scenes were recorded, with the sidecar `train geo-det` wrote
    then, recording 3-band uint8 training scenes."""
    detector_file(ws)
    (ws / "det.geo.json").write_text(json.dumps({"producer": "domainmona", "bands": [1, 2, 3], "scene_bands": [3],
                                                 "dtypes": ["uint8"], "stats": None, "classes": ["plane"]}))


def dota_detector(recorded: bool) -> Setup:
    """A `train dota|star` detector checkpoint (no sidecar): recording DOTA's 3-band uint8 RGB patches, or
    from before the record (then taken to be one)."""
    from domainmona.detection.checkpoint import RGB_PATCHES

    return lambda ws: detector_file(ws, dict(RGB_PATCHES) if recorded else None)


def ct_adapter_file(ws: Path) -> None:
    """`ct.safetensors`: the adapter file `segment-ct train` writes beside its checkpoints (a tiny SwinUNETR
    with Mona)."""
    from domainmona.medical.model import assemble
    from domainmona.medical.settings import load_settings
    from domainmona.medical.weights import save_adapter_file

    settings = load_settings(None, model={"feature_size": 12, "adapter_cfg": {"inner_dim": 8}}, train={"roi": 64})
    save_adapter_file(assemble(settings["model"], 2), settings["model"], ws / "ct.safetensors")


DET = steps(use("scene.tif"), detector_like)


def vector_file(name: str) -> Setup:
    """A user's own vector file (GDAL-written, no domainmona mark)."""

    def setup(ws: Path) -> None:
        import pyogrio

        driver = "GPKG" if name.endswith(".gpkg") else "GeoJSON"
        pyogrio.raw.write(ws / name, shapely.to_wkb(np.array([shapely.box(0, 0, 1, 1)])), [], [],
                          driver=driver, geometry_type="Polygon", crs="EPSG:4326")

    return setup


PREDICT_CASES = [
    # numbers
    Case("predict-size-0", (*PREDICT, "--size", "0"), "--size", SEG),
    Case("predict-size-negative", (*PREDICT, "--size", "-64"), "--size", SEG),
    Case("predict-size-31", (*PREDICT, "--size", "31"), "--size", SEG),
    Case("predict-size-not-multiple-of-32", (*PREDICT, "--size", "48"), "multiple of 32", SEG),
    Case("predict-overlap-negative", (*PREDICT, "--overlap", "-8"), "--overlap", SEG),
    Case("predict-overlap-over-half", (*PREDICT, "--overlap", "40"), "too large", SEG),
    Case("predict-overlap-over-half-of-given-size", (*PREDICT, "--size", "64", "--overlap", "33"), "too large", SEG),
    Case("predict-gpus-0", (*PREDICT, "--gpus", "0"), "--gpus", SEG),
    Case("predict-gpus-negative", (*PREDICT, "--gpus", "-2"), "--gpus", SEG),
    Case("predict-gpus-not-a-number", (*PREDICT, "--gpus", "two"), "--gpus", SEG),
    Case("predict-batch-size-0", (*PREDICT, "--batch-size", "0"), "--batch-size", SEG),
    Case("predict-batch-size-negative", (*PREDICT, "--batch-size", "-4"), "--batch-size", SEG),
    Case("predict-score-thr-nan", (*PREDICT, "--score-thr", "nan"), "--score-thr", SEG),
    Case("predict-score-thr-negative", (*PREDICT, "--score-thr", "-0.1"), "--score-thr", SEG),
    Case("predict-score-thr-above-1", (*PREDICT, "--score-thr", "1.5"), "--score-thr", SEG),
    Case("predict-score-thr-inf", (*PREDICT, "--score-thr", "inf"), "--score-thr", SEG),
    Case("predict-iou-thr-nan", (*PREDICT, "--iou-thr", "nan"), "--iou-thr", SEG),
    Case("predict-iou-thr-negative", (*PREDICT, "--iou-thr", "-1"), "--iou-thr", SEG),
    Case("predict-iou-thr-above-1", (*PREDICT, "--iou-thr", "2"), "--iou-thr", SEG),
    # checkpoints
    Case("predict-checkpoint-missing", predict_with(checkpoint="{ws}/none.safetensors"), "no such checkpoint",
         use("scene.tif")),
    Case("predict-checkpoint-is-folder", predict_with(checkpoint="{ws}/run"), "a folder", use("scene.tif", "run")),
    Case("predict-checkpoint-empty", predict_with(checkpoint="{ws}/e.safetensors"), "not a safetensors",
         steps(use("scene.tif"), write("e.safetensors", b""))),
    Case("predict-checkpoint-truncated", predict_with(checkpoint="{ws}/cut.safetensors"), "cut.safetensors",
         steps(use("scene.tif"), truncated("cut.safetensors", "seg.safetensors", 0.5))),
    Case("predict-checkpoint-crafted-pickle", predict_with(checkpoint="{ws}/evil.pth"), "evil.pth",
         steps(use("scene.tif"), crafted("evil.pth"))),
    Case("predict-checkpoint-is-a-state", predict_with(checkpoint="{ws}/run/state.pt"), "state.pt",
         use("scene.tif", "run")),
    Case("predict-checkpoint-other-safetensors", predict_with(checkpoint="{ws}/det.safetensors", out="{ws}/d.gpkg"),
         "det.safetensors", DET),
    Case("predict-detector-sidecar-corrupt", predict_with(checkpoint="{ws}/det.safetensors", out="{ws}/d.gpkg"),
         "det.geo.json", steps(DET, write("det.geo.json", "{not json"))),
    # scenes unlike the training scenes
    Case("predict-scene-uint16-model-uint8", predict_with(raster_arg="{ws}/u16.tif"), "trained on uint8",
         steps(SEG, raster("u16.tif", "uint16"))),
    Case("predict-scene-4-bands-model-3", predict_with(raster_arg="{ws}/four.tif"), "4 band(s)",
         steps(SEG, raster("four.tif", count=4))),
    Case("predict-scene-1-band-model-3", predict_with(raster_arg="{ws}/one.tif"), "band 2 requested",
         steps(SEG, raster("one.tif", count=1))),
    Case("predict-detector-scene-uint16", predict_with(raster_arg="{ws}/u16.tif", checkpoint="{ws}/det.safetensors",
                                                       out="{ws}/d.gpkg"), "trained on uint8",
         steps(DET, raster("u16.tif", "uint16"))),
    Case("predict-scene-float32-model-uint8", predict_with(raster_arg="{ws}/f.tif"), "trained on uint8",
         steps(SEG, raster("f.tif", "float32"))),
    Case("predict-scene-complex64", predict_with(raster_arg="{ws}/c.tif"), "unsupported dtype",
         steps(SEG, raster("c.tif", "complex64"))),
    Case("predict-nodata-nan-uint8", (*PREDICT, "--nodata", "nan"), "whole numbers", SEG),
    Case("predict-nodata-beyond-uint8", (*PREDICT, "--nodata", "300"), "outside 0..255", SEG),
    Case("predict-nodata-fraction-detector", predict_with("--nodata", "0.5", checkpoint="{ws}/det.safetensors",
                                                          out="{ws}/d.gpkg"), "whole numbers", DET),
    Case("predict-nodata-text", (*PREDICT, "--nodata", "zero"), "--nodata", SEG),
    Case("predict-scene-no-crs", predict_with(raster_arg="{ws}/nocrs.tif"), "no CRS",
         steps(SEG, raster("nocrs.tif", crs=None))),
    Case("predict-scene-missing", predict_with(raster_arg="{ws}/none.tif"), "raster not found", SEG),
    Case("predict-scene-is-folder", predict_with(raster_arg="{ws}/run"), "a folder", steps(SEG, use("run"))),
    Case("predict-scene-garbage", predict_with(raster_arg="{ws}/bad.tif"), "not a readable raster",
         steps(SEG, write("bad.tif", b"MM\x00*" + b"\x00" * 300))),
    Case("predict-scene-truncated", predict_with(raster_arg="{ws}/cut.tif"), "cut.tif",
         steps(SEG, truncated("cut.tif", "scene.tif", 0.5))),
    # outputs
    Case("predict-out-is-the-scene", predict_with(out="{ws}/scene.tif"), "inputs", SEG),
    Case("predict-out-is-the-checkpoint", predict_with(out="{ws}/seg.safetensors"), "must end in .tif", SEG),
    Case("predict-out-is-the-sidecar", predict_with(checkpoint="{ws}/det.safetensors", out="{ws}/det.geo.json"),
         "inputs", DET),
    Case("predict-out-is-folder", predict_with(out="{ws}/run"), "must end in", steps(SEG, use("run"))),
    Case("predict-out-folder-named-tif", predict_with(out="{ws}/maps.tif"), "is a folder",
         steps(SEG, lambda ws: (ws / "maps.tif").mkdir())),
    Case("predict-out-parent-is-file", predict_with(out="{ws}/notes.txt/pred.tif"), "is a file",
         steps(SEG, write("notes.txt", "mine"))),
    Case("predict-out-user-geotiff", predict_with(out="{ws}/mine.tif"), "not written by domainmona",
         steps(SEG, raster("mine.tif"))),
    Case("predict-out-user-gpkg", predict_with(checkpoint="{ws}/det.safetensors", out="{ws}/mine.gpkg"),
         "not written by domainmona", steps(DET, vector_file("mine.gpkg"))),
    Case("predict-out-user-geojson", predict_with(checkpoint="{ws}/det.safetensors", out="{ws}/mine.geojson"),
         "not written by domainmona", steps(DET, vector_file("mine.geojson"))),
    Case("predict-out-text-named-tif", predict_with(out="{ws}/notes.tif"), "not written by domainmona",
         steps(SEG, write("notes.tif", "my notes"))),
    Case("predict-out-png", predict_with(out="{ws}/pred.png"), "must end in", SEG),
    Case("predict-seg-checkpoint-to-gpkg", predict_with(out="{ws}/pred.gpkg"), "writes a GeoTIFF", SEG),
    Case("predict-detector-to-tif", predict_with(checkpoint="{ws}/det.safetensors"), "writes polygons", DET),
]


# ---------------------------------------------------------------------------------------------- train geo-seg

GEO_SEG = ("train", "geo-seg", "--chips", "{ws}/chips", "--work-dir", "{ws}/work", "--encoder", "micro",
           "--max-iters", "2", "--batch-size", "2")
CHIPS = use("chips")


def geo_seg_with(*extra: str, chips: str = "{ws}/chips", work_dir: str = "{ws}/work") -> tuple[str, ...]:
    return ("train", "geo-seg", "--chips", chips, "--work-dir", work_dir, "--encoder", "micro", "--max-iters", "2",
            "--batch-size", "2", *extra)


def copy_run(ws: Path) -> None:
    """The asset run (one iteration, `--max-iters 1 --batch-size 2`) as `{ws}/work`."""
    shutil.copytree(ASSETS["run"], ws / "work")


RESUME = ("train", "geo-seg", "--chips", "{ws}/chips", "--work-dir", "{ws}/work", "--encoder", "micro",
          "--batch-size", "2", "--resume")

GEO_SEG_CASES = [
    Case("geo-seg-max-iters-0", (*GEO_SEG, "--max-iters", "0"), "--max-iters", CHIPS),
    Case("geo-seg-max-iters-negative", (*GEO_SEG, "--max-iters", "-5"), "--max-iters", CHIPS),
    Case("geo-seg-batch-size-0", (*GEO_SEG, "--batch-size", "0"), "--batch-size", CHIPS),
    Case("geo-seg-batch-size-negative", (*GEO_SEG, "--batch-size", "-2"), "--batch-size", CHIPS),
    Case("geo-seg-lr-nan", (*GEO_SEG, "--lr", "nan"), "--lr", CHIPS),
    Case("geo-seg-lr-inf", (*GEO_SEG, "--lr", "inf"), "--lr", CHIPS),
    Case("geo-seg-lr-negative", (*GEO_SEG, "--lr", "-0.001"), "--lr", CHIPS),
    Case("geo-seg-lr-0", (*GEO_SEG, "--lr", "0"), "--lr", CHIPS),
    Case("geo-seg-save-every-0", (*GEO_SEG, "--save-every", "0"), "--save-every", CHIPS),
    Case("geo-seg-seed-negative", (*GEO_SEG, "--seed", "-1"), "--seed", CHIPS),
    Case("geo-seg-seed-huge", (*GEO_SEG, "--seed", "99999999999999999999"), "--seed", CHIPS),
    Case("geo-seg-unknown-encoder", (*GEO_SEG, "--encoder", "resnet9000"), "unknown backbone 'resnet9000'", CHIPS),
    Case("geo-seg-unknown-arch", (*GEO_SEG, "--arch", "NoSuchNet"), "NoSuchNet", CHIPS),
    # chips
    Case("geo-seg-chips-missing", geo_seg_with(chips="{ws}/none"), "no manifest.json", None),
    Case("geo-seg-chips-not-a-chip-folder", geo_seg_with(chips="{ws}/photos"), "no manifest.json",
         write("photos/a.jpg", b"\xff\xd8")),
    Case("geo-seg-manifest-corrupt", GEO_SEG, "not a readable manifest",
         steps(CHIPS, write("chips/manifest.json", "{\"task\": "))),
    Case("geo-seg-manifest-not-a-dict", GEO_SEG, "not a manifest", steps(CHIPS, write("chips/manifest.json", "[1]"))),
    Case("geo-seg-manifest-no-chips", GEO_SEG, "no chips",
         steps(CHIPS, manifest_edit("chips", lambda m: m.update(chips=[])))),
    Case("geo-seg-manifest-missing-stats", GEO_SEG, "no stats",
         steps(CHIPS, manifest_edit("chips", lambda m: m.pop("stats")))),
    Case("geo-seg-detection-chips", geo_seg_with(chips="{ws}/detchips"), "made for detection", use("detchips")),
    Case("geo-seg-chip-missing", GEO_SEG, "missing or unreadable", steps(CHIPS, chip_damaged("missing"))),
    Case("geo-seg-chip-truncated", GEO_SEG, "missing or unreadable", steps(CHIPS, chip_damaged("truncated"))),
    # pretrained weights
    Case("geo-seg-pretrained-missing", (*GEO_SEG, "--pretrained", "{ws}/none.pth"), "none.pth", CHIPS),
    Case("geo-seg-pretrained-crafted-pickle", (*GEO_SEG, "--pretrained", "{ws}/evil.pth"), "refused",
         steps(CHIPS, crafted("evil.pth"))),
    Case("geo-seg-pretrained-garbage", (*GEO_SEG, "--pretrained", "{ws}/w.safetensors"), "w.safetensors",
         steps(CHIPS, write("w.safetensors", b"\x00" * 64))),
    Case("geo-seg-pretrained-other-model", (*GEO_SEG, "--pretrained", "{ws}/seg.safetensors"), "seg.safetensors",
         use("chips", "seg.safetensors")),
    # work dir
    Case("geo-seg-work-dir-is-file", geo_seg_with(work_dir="{ws}/notes.txt"), "is a file",
         steps(CHIPS, write("notes.txt", "mine"))),
    Case("geo-seg-work-dir-parent-is-file", geo_seg_with(work_dir="{ws}/notes.txt/work"), "is a file",
         steps(CHIPS, write("notes.txt", "mine"))),
    Case("geo-seg-work-dir-holds-user-files", GEO_SEG, "did not write",
         steps(CHIPS, write("work/thesis.tex", "..."))),
    Case("geo-seg-work-dir-holds-a-run", GEO_SEG, "pass --resume", steps(CHIPS, copy_run)),
    Case("geo-seg-resume-other-lr", (*RESUME, "--max-iters", "2", "--lr", "0.5"), "other settings (lr)",
         steps(CHIPS, copy_run)),
    Case("geo-seg-resume-other-chips", (*RESUME, "--max-iters", "2"), "the chips or model",
         steps(CHIPS, copy_run, manifest_edit("chips", lambda m: m.update(classes=["a", "b"])))),
    Case("geo-seg-resume-other-pretrained", (*RESUME, "--max-iters", "2", "--pretrained", "{ws}/seg.safetensors"),
         "pretrained", steps(use("chips", "seg.safetensors"), copy_run)),
    Case("geo-seg-resume-past-max-iters", (*RESUME, "--max-iters", "1"), "past",
         steps(CHIPS, copy_run, lambda ws: _state_at(ws / "work" / "state.pt", 5))),
    Case("geo-seg-resume-crafted-pickle-state", (*RESUME, "--max-iters", "2"), "refused",
         steps(CHIPS, copy_run, crafted("work/state.pt"))),
    Case("geo-seg-resume-state-garbage", (*RESUME, "--max-iters", "2"), "state.pt",
         steps(CHIPS, copy_run, write("work/state.pt", b"PK\x03\x04" + b"\x00" * 50))),
    Case("geo-seg-resume-state-foreign", (*RESUME, "--max-iters", "2"), "not a geo-seg training state",
         steps(CHIPS, copy_run, lambda ws: __import__("torch").save({"step": 1}, ws / "work" / "state.pt"))),
]


def _state_at(path: Path, step: int) -> None:
    import torch

    state = torch.load(path, weights_only=True)
    state["step"] = step
    torch.save(state, path)


# ---------------------------------------------------------------------------------------------- train geo-det

GEO_DET = ("train", "geo-det", "--chips", "{ws}/detchips", "--work-dir", "{ws}/work", "--backbone", "micro",
           "--max-iters", "2")
DET_CHIPS = use("detchips")

GEO_DET_CASES = [
    Case("geo-det-max-iters-0", (*GEO_DET, "--max-iters", "0"), "--max-iters", DET_CHIPS),
    Case("geo-det-max-iters-negative", (*GEO_DET, "--max-iters", "-1"), "--max-iters", DET_CHIPS),
    Case("geo-det-seed-negative", (*GEO_DET, "--seed", "-1"), "--seed", DET_CHIPS),
    Case("geo-det-seed-huge", (*GEO_DET, "--seed", "99999999999999999999"), "--seed", DET_CHIPS),
    Case("geo-det-bad-backbone", (*GEO_DET, "--backbone", "resnet"), "--backbone", DET_CHIPS),
    Case("geo-det-chips-missing", GEO_DET, "no manifest.json", None),
    Case("geo-det-segmentation-chips", (*GEO_DET[:3], "{ws}/chips", *GEO_DET[4:]), "made for segmentation", CHIPS),
    Case("geo-det-manifest-corrupt", GEO_DET, "not a readable manifest",
         steps(DET_CHIPS, write("detchips/manifest.json", "\x00\x01"))),
    Case("geo-det-pretrained-missing", (*GEO_DET, "--pretrained", "{ws}/none.pth"), "none.pth", DET_CHIPS),
    Case("geo-det-pretrained-crafted-pickle", (*GEO_DET, "--pretrained", "{ws}/evil.pth"), "refused",
         steps(DET_CHIPS, crafted("evil.pth"))),
    Case("geo-det-resume-crafted-pickle", (*GEO_DET, "--resume"), "evil.pth",
         steps(DET_CHIPS, record("work", {"command": "train dota1.0"}), write("work/last_checkpoint", "evil.pth"),
               crafted("work/evil.pth"))),
    Case("geo-det-pretrained-garbage", (*GEO_DET, "--pretrained", "{ws}/w.safetensors"), "w.safetensors",
         steps(DET_CHIPS, write("w.safetensors", b"{}" * 10))),
]


# ------------------------------------------------------------------------- train geo-seg|geo-det --scenes


def scene_cases(task: str, model_flags: tuple[str, ...]) -> list[Case]:
    """`train geo-seg|geo-det --scenes`: tile's window flags, refused the way `tile` refuses them."""
    run = ("train", task, "--scenes", "{ws}/scene.tif", "--labels", "{ws}/labels.gpkg", "--work-dir",
           "{ws}/work", *model_flags, "--max-iters", "2")
    return [
        Case(f"{task}-scenes-size-0", (*run, "--size", "0"), "--size", SCENE),
        Case(f"{task}-scenes-size-too-small", (*run, "--size", "31"), "--size", SCENE),
        Case(f"{task}-scenes-overlap-negative", (*run, "--overlap", "-1"), "--overlap", SCENE),
        Case(f"{task}-scenes-overlap-equals-size", (*run, "--size", "64", "--overlap", "64"), "--overlap", SCENE),
        Case(f"{task}-scenes-shots-0", (*run, "--shots", "0"), "--shots", SCENE),
        Case(f"{task}-scenes-nodata-nan-uint8", (*run, "--nodata", "nan"), "whole numbers", SCENE),
        Case(f"{task}-scenes-nodata-text", (*run, "--nodata", "none"), "--nodata", SCENE),
        Case(f"{task}-scenes-and-chips", (*run, "--chips", "{ws}/chips"), "--chips", SCENE),
        Case(f"{task}-scenes-without-labels", (*run[:4], *run[6:]), "--labels", SCENE),
        Case(f"{task}-scenes-missing", (*run[:3], "{ws}/none.tif", *run[4:]), "none.tif", SCENE),
    ]


SCENE_CASES = (scene_cases("geo-seg", ("--encoder", "micro", "--batch-size", "2"))
               + scene_cases("geo-det", ("--backbone", "micro")))


# ------------------------------------------------------------------------------------------------- geo-demo

GEO_DEMO_CASES = [
    Case("geo-demo-out-is-file", ("geo-demo", "--out", "{ws}/notes.txt"), "is a file", write("notes.txt", "mine")),
    Case("geo-demo-out-holds-user-files", ("geo-demo", "--out", "{ws}/home"), "did not write",
         write("home/photo.jpg", b"\xff\xd8")),
    Case("geo-demo-out-parent-is-file", ("geo-demo", "--out", "{ws}/notes.txt/demo"), "is a file",
         write("notes.txt", "mine")),
    Case("geo-demo-bad-task", ("geo-demo", "--out", "{ws}/demo", "--task", "classification"), "--task", None),
]


# ------------------------------------------- refused with outputs under new folders, NaN rings, memory, kinds

NAN_RING = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"class": "water"},
            "geometry": {"type": "Polygon", "coordinates": [[[13.7, 46.0], [float("nan"), 46.0], [13.71, 46.01],
                                                             [13.7, 46.0]]]}}]}
HUGE = "1000000000"  # 10^9 pixels a side: no buffer of it fits any machine

NEW_PARENT_CASES = [
    # Refused after the output's parents would be made: none may be left (the rows below write under NEW).
    Case("tile-new-parent-truncated-raster", tile_with(raster_arg="{ws}/cut.tif", out=f"{NEW}/chips"), "cut.tif",
         steps(SCENE, truncated("cut.tif", "scene.tif", 0.5))),
    Case("tile-new-parent-all-nodata", tile_with(raster_arg="{ws}/blank.tif", out=f"{NEW}/chips"), "valid pixels",
         steps(SCENE, raster("blank.tif", value=0, nodata=0))),
    Case("tile-new-parent-all-nan", tile_with(raster_arg="{ws}/nan.tif", out=f"{NEW}/chips"), "valid pixels",
         steps(SCENE, raster("nan.tif", "float32", value=float("nan")))),
    Case("tile-labels-geojson-nan-ring", tile_with(labels_arg="{ws}/nan.geojson", out=f"{NEW}/chips"),
         "NaN or infinite", steps(SCENE, write("nan.geojson", json.dumps(NAN_RING)))),
    Case("tile-size-beyond-memory", (*tile_with(out=f"{NEW}/chips"), "--size", HUGE), "would need", SCENE),
    Case("predict-new-parent-truncated", predict_with(raster_arg="{ws}/cut.tif", out=f"{NEW}/pred.tif"), "cut.tif",
         steps(SEG, truncated("cut.tif", "scene.tif", 0.5))),
    Case("predict-size-beyond-memory", (*predict_with(out=f"{NEW}/pred.tif"), "--size", HUGE), "would need", SEG),
    Case("predict-dota-detector-4-band-uint16", predict_with(raster_arg="{ws}/u16.tif",
         checkpoint="{ws}/det.safetensors", out=f"{NEW}/d.gpkg"), "trained on scenes with 3 band(s)",
         steps(use("scene.tif"), dota_detector(recorded=True), raster("u16.tif", "uint16", count=4))),
    Case("predict-old-dota-detector-uint16", predict_with(raster_arg="{ws}/u16.tif",
         checkpoint="{ws}/det.safetensors", out="{ws}/d.gpkg"), "taken as trained on 3-band uint8 RGB",
         steps(use("scene.tif"), dota_detector(recorded=False), raster("u16.tif", "uint16"))),
    Case("predict-ct-adapter-to-tif", predict_with(checkpoint="{ws}/ct.safetensors"),
         "an adapter file (mona on", steps(use("scene.tif"), ct_adapter_file)),
    Case("geo-seg-new-parent-damaged-chip", geo_seg_with(work_dir=f"{NEW}/work"), "chips",
         steps(CHIPS, chip_damaged("truncated"))),
    Case("geo-seg-scenes-new-parent-truncated", ("train", "geo-seg", "--scenes", "{ws}/cut.tif", "--labels",
         "{ws}/labels.gpkg", "--work-dir", f"{NEW}/work", "--encoder", "micro", "--max-iters", "2"), "cut.tif",
         steps(SCENE, truncated("cut.tif", "scene.tif", 0.5))),
    Case("geo-seg-scenes-size-beyond-memory", ("train", "geo-seg", "--scenes", "{ws}/scene.tif", "--labels",
         "{ws}/labels.gpkg", "--work-dir", f"{NEW}/work", "--encoder", "micro", "--size", HUGE), "would need", SCENE),
    Case("geo-det-new-parent-manifest-corrupt", (*GEO_DET[:5], f"{NEW}/work", *GEO_DET[6:]),
         "not a readable manifest", steps(DET_CHIPS, write("detchips/manifest.json", "\x00\x01"))),
    Case("geo-det-scenes-size-beyond-memory", ("train", "geo-det", "--scenes", "{ws}/scene.tif", "--labels",
         "{ws}/labels.gpkg", "--work-dir", f"{NEW}/work", "--backbone", "micro", "--size", HUGE), "would need",
         SCENE),
    Case("geo-demo-new-parent-bad-task", ("geo-demo", "--out", f"{NEW}/demo", "--task", "classification"), "--task",
         None),
]


def export_with(*extra: str, checkpoint: str = "{ws}/seg.safetensors", out: str = f"{NEW}/model.onnx"):
    return ("export", checkpoint, "--out", out, *extra)


EXPORT_CASES = [  # `domainmona export` of the geo-seg asset (the CT and detector checkpoints: tests/test_export*.py)
    Case("export-checkpoint-missing", export_with(checkpoint="{ws}/none.safetensors"), "no such checkpoint"),
    Case("export-checkpoint-not-domainmona", export_with(checkpoint="{ws}/mine.safetensors"), "mine.safetensors",
         write("mine.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")),
    Case("export-checkpoint-crafted-pickle", export_with(checkpoint="{ws}/evil.pt"), "evil.pt", crafted("evil.pt")),
    Case("export-out-not-onnx", export_with(out="{ws}/model.tif"), "must end in .onnx", SEG),
    Case("export-out-user-file", export_with(out="{ws}/mine.onnx"), "mine.onnx",
         steps(SEG, write("mine.onnx", b"a user's own model"))),
    Case("export-out-is-a-folder", export_with(out="{ws}/run.onnx"), "run.onnx", steps(SEG, lambda ws: (ws / "run.onnx").mkdir())),
    Case("export-size-0", export_with("--size", "0"), "--size", SEG),
    Case("export-size-negative", export_with("--size", "-64"), "--size", SEG),
    Case("export-size-not-multiple", export_with("--size", "100"), "multiple of 32", SEG),
    Case("export-size-text", export_with("--size", "big"), "--size", SEG),
    Case("export-size-beyond-memory", export_with("--size", "1000000000"), "would need", SEG),
]

CASES = (TILE_CASES + PREDICT_CASES + GEO_SEG_CASES + GEO_DET_CASES + SCENE_CASES + GEO_DEMO_CASES
         + NEW_PARENT_CASES + EXPORT_CASES)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_refused(case, tmp_path):
    refused(case, tmp_path)
    assert not (tmp_path / MARKER).exists()  # no crafted pickle ran


def _api_calls(ws: Path) -> list[tuple[str, Callable[[], object]]]:
    """The library functions behind the commands, called with numbers the CLI refuses, and what the error
    must name."""
    from domainmona.geo.models import tile_predict
    from domainmona.geo.segtrain import SegTrainOptions, train_segmentation
    from domainmona.geo.tiling import TileOptions, tile_scenes

    scene, labels_file, chips, checkpoint = ws / "scene.tif", ws / "labels.gpkg", ws / "chips", ws / "seg.safetensors"

    def predict(*numbers):
        return lambda: tile_predict(scene, checkpoint, ws / "p.tif", *numbers)

    def train(**options):
        return lambda: train_segmentation(SegTrainOptions(chips, ws / "w", **options))

    return [("--size", lambda: tile_scenes([scene], labels_file, ws / "out", TileOptions(size=0))),
            ("--seed", lambda: tile_scenes([scene], labels_file, ws / "out", TileOptions(64, 16, shots=1, seed=-1))),
            ("--size", predict(0, None, 4, 0.3)),
            ("--batch-size", predict(None, None, 0, 0.3)),
            ("--score-thr", predict(None, None, 4, float("nan"))),
            ("--iou-thr", predict(None, None, 4, 0.3, 2.0)),
            ("max_iters", train(max_iters=0)),
            ("lr", train(lr=float("nan"))),
            ("batch_size", train(batch_size=-1)),
            ("save_every", train(overrides={"save_every": 0}))]


def test_the_python_api_refuses_what_the_cli_refuses(tmp_path):
    """The checks live in the library functions, so a script calling them gets the same refusals."""
    from domainmona.errors import UserError

    use("scene.tif", "labels.gpkg", "chips", "seg.safetensors")(tmp_path)
    before = snapshot(tmp_path)
    for expect, call in _api_calls(tmp_path):
        with pytest.raises(UserError, match=expect):
            call()
        assert snapshot(tmp_path) == before, expect


# ------------------------------------------------------------------------------- what still works, and how

def test_tile_replaces_its_own_output_and_reruns_leave_nothing(tmp_path):
    """The refusals above must not cost the normal rerun: a `tile` output is replaced by the next `tile`."""
    use("scene.tif", "labels.gpkg")(tmp_path)
    argv = [a.replace("{ws}", str(tmp_path)) for a in TILE_SEG]
    for _ in range(2):
        code, _, stderr = run_cli(argv, tmp_path)
        assert code == 0, stderr
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    assert manifest["rasters"][0]["count"] == 3 and not temporaries(tmp_path)


def test_tile_predict_replaces_its_own_outputs(tmp_path):
    """Our GeoTIFF carries the PRODUCER tag, so a rerun may replace it (COG included)."""
    from domainmona.geo.predict import geotiff_is_ours

    SEG(tmp_path)
    for extra in ([], ["--cog"], []):
        code, _, stderr = run_cli([a.replace("{ws}", str(tmp_path)) for a in (*PREDICT, *extra)], tmp_path)
        assert code == 0, stderr
        assert geotiff_is_ours(tmp_path / "pred.tif")
    assert not temporaries(tmp_path)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_polygon_outputs_are_marked_and_user_files_are_not(tmp_path, suffix):
    from domainmona.geo.vectors import polygons_are_ours, write_polygons

    ours = write_polygons(tmp_path / f"ours{suffix}", np.array([shapely.box(400000, 5099900, 400010, 5099910)]),
                          {"class": np.array(["ship"], dtype=object), "score": np.array([0.5])}, CRS.from_epsg(32633))
    vector_file(f"mine{suffix}")(tmp_path)
    assert polygons_are_ours(ours) and not polygons_are_ours(tmp_path / f"mine{suffix}")
    assert not polygons_are_ours(tmp_path / "absent.gpkg")


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, a write fails with EFBIG as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
from domainmona.cli import run
sys.exit(run(sys.argv[1:]))
"""


def test_a_write_that_fails_names_its_cause(tmp_path):
    """GDAL says "Write failed. See previous exception for details." and keeps the cause (here: the file
    size limit, as a full disk gives "No space left on device") in the chained error: the line names it."""
    import subprocess
    import sys

    SEG(tmp_path)
    result = subprocess.run([sys.executable, "-c", LIMITED, *_argv((*PREDICT[:5], f"{NEW}/pred.tif"), tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    CASES_RUN["tile-predict"] += 1
    line = assert_one_error_line(result.returncode, result.stdout, result.stderr, "file too large")
    assert "see previous exception" not in line.lower()
    assert not (tmp_path / "new").exists() and not temporaries(tmp_path)


# ------------------------------------------------------------------------------------------- interruptions

def _argv(argv, ws: Path) -> list[str]:
    return [a.replace("{ws}", str(ws)) for a in argv]


def test_tile_killed_then_rerun(tmp_path):
    from domainmona.geo.synthetic import SceneSpec, write_scene

    write_scene(tmp_path / "big.tif", tmp_path / "big.gpkg", SceneSpec(width=2048, height=2048, objects=60, seed=3))
    argv = _argv(("tile", "{ws}/big.tif", "--labels", "{ws}/big.gpkg", "--out", "{ws}/chips", "--size", "64",
                  "--overlap", "0", "--task", "segmentation"), tmp_path)

    def writing_chips() -> bool:
        return any(len(list((t / "images").glob("*.tif"))) > 5 for t in temporaries(tmp_path) if t.is_dir()
                   and (t / "images").is_dir())

    killed_then_rerun(argv, tmp_path, writing_chips, command="tile")
    assert not temporaries(tmp_path)
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    assert len(list((tmp_path / "chips" / "images").iterdir())) == len(manifest["chips"]) > 5


def test_tile_predict_killed_then_rerun(tmp_path):
    from domainmona.geo.predict import geotiff_is_ours
    from domainmona.geo.synthetic import SceneSpec, write_scene

    use("seg.safetensors")(tmp_path)
    write_scene(tmp_path / "big.tif", tmp_path / "big.gpkg", SceneSpec(width=768, height=768, objects=8, seed=3))
    argv = _argv(("tile-predict", "{ws}/big.tif", "--checkpoint", "{ws}/seg.safetensors", "--out", "{ws}/pred.tif",
                  "--cog"), tmp_path)
    predicting = lambda: any((t / "tiled.tif").is_file() for t in temporaries(tmp_path))  # noqa: E731
    killed_then_rerun(argv, tmp_path, predicting, command="tile-predict")
    assert not temporaries(tmp_path) and geotiff_is_ours(tmp_path / "pred.tif")
    with rasterio.open(tmp_path / "pred.tif") as src:
        assert src.shape == (768, 768)


def big_scene(size: int) -> Setup:
    def setup(ws: Path) -> None:
        from domainmona.geo.synthetic import SceneSpec, write_scene

        write_scene(ws / "big.tif", ws / "big.gpkg", SceneSpec(width=size, height=size, objects=60, seed=3))

    return setup


def tracing(ws: Path, started: dict = {}) -> bool:
    """Ready: 3 s after the first look, inside torch's exporter (export makes --out's folder only to write)."""
    return time.monotonic() - started.setdefault(ws, time.monotonic()) > 3


INTERRUPT_CASES = [
    Interrupt("tile-interrupted", ("tile", "{ws}/big.tif", "--labels", "{ws}/big.gpkg", "--out", f"{NEW}/chips",
                                   "--size", "64", "--overlap", "0", "--task", "segmentation"), made_new,
              big_scene(2048)),
    Interrupt("tile-predict-interrupted", ("tile-predict", "{ws}/big.tif", "--checkpoint", "{ws}/seg.safetensors",
                                           "--out", f"{NEW}/pred.tif"), made_new, steps(SEG, big_scene(768))),
    Interrupt("geo-seg-interrupted", geo_seg_with("--max-iters", "500", work_dir=f"{NEW}/work"), made_new, CHIPS),
    Interrupt("geo-det-interrupted", (*GEO_DET[:5], f"{NEW}/work", *GEO_DET[6:], "--max-iters", "100"), made_new,
              DET_CHIPS),
    Interrupt("geo-demo-interrupted", ("geo-demo", "--out", f"{NEW}/demo"), made_new),
    Interrupt("export-interrupted", export_with(), tracing, SEG),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", INTERRUPT_CASES, ids=ids(INTERRUPT_CASES))
def test_interrupted(case, tmp_path):
    interrupted(case, tmp_path)


@pytest.mark.slow
def test_train_geo_seg_killed_then_resumed_ends_like_an_uninterrupted_run(tmp_path):
    """Killed after its first periodic save, `--resume` ends with the very weights of a run never killed."""
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    use("chips")(tmp_path)
    common = ("train", "geo-seg", "--chips", "{ws}/chips", "--encoder", "micro", "--max-iters", "30",
              "--batch-size", "2", "--save-every", "5", "--seed", "3")
    whole = run_subprocess(_argv((*common, "--work-dir", "{ws}/whole"), tmp_path), tmp_path)
    assert whole.returncode == 0, whole.stderr
    killed = _argv((*common, "--work-dir", "{ws}/killed"), tmp_path)
    state = tmp_path / "killed" / "state.pt"
    process = subprocess.Popen([sys.executable, "-m", "domainmona.cli", *killed], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not state.exists():
            assert process.poll() is None, "finished before its first save"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    CASES_RUN["train geo-seg"] += 1
    assert not (tmp_path / "killed" / "geo-seg.safetensors").exists()  # killed before the end
    again = run_subprocess(killed, tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr  # a run is there: continuing is explicit
    resumed = run_subprocess([*killed, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at iteration" in resumed.stdout
    expected = load_file(str(tmp_path / "whole" / "geo-seg.safetensors"))
    got = load_file(str(tmp_path / "killed" / "geo-seg.safetensors"))
    assert set(got) == set(expected)
    worst = max(float((got[k].double() - expected[k].double()).abs().max()) for k in expected)
    assert worst <= 1e-6, worst
    assert not temporaries(tmp_path)


def test_train_geo_seg_resume_extends_a_finished_run(tmp_path):
    """`--resume` with a larger --max-iters continues a finished run; the same --max-iters redoes nothing."""
    from safetensors.torch import load_file

    use("chips")(tmp_path)
    copy_run(tmp_path)
    before = load_file(str(tmp_path / "work" / "geo-seg.safetensors"))
    argv = _argv((*RESUME, "--max-iters", "1"), tmp_path)
    assert run_cli(argv, tmp_path)[0] == 0
    same = load_file(str(tmp_path / "work" / "geo-seg.safetensors"))
    assert all(np.array_equal(same[k].numpy(), before[k].numpy()) for k in before)
    code, stdout, stderr = run_cli(_argv((*RESUME, "--max-iters", "3"), tmp_path), tmp_path)
    assert code == 0, stderr
    after = load_file(str(tmp_path / "work" / "geo-seg.safetensors"))
    assert any(not np.array_equal(after[k].numpy(), before[k].numpy()) for k in before)
    import torch

    assert torch.load(tmp_path / "work" / "state.pt", weights_only=True)["step"] == 3


def test_train_geo_seg_resume_with_nothing_saved_starts_from_the_beginning(tmp_path):
    """After a kill before the first save, rerunning the same command with `--resume` just trains."""
    use("chips")(tmp_path)
    code, stdout, stderr = run_cli(_argv((*RESUME, "--max-iters", "1"), tmp_path), tmp_path)
    assert code == 0, stderr
    assert "training from the start" in stdout
    assert stdout.strip().splitlines()[-1] == str(tmp_path / "work" / "geo-seg.safetensors")
    assert (tmp_path / "work" / "geo-seg.safetensors").is_file()
