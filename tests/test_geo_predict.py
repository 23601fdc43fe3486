"""Streaming whole-scene prediction: seamless blending, GeoTIFF output geometry, tile-border merging."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from rasterio.crs import CRS

from domainmona.geo.blend import RollingBlender
from domainmona.geo.labels import Labels, affine_polygons, reproject
from domainmona.geo.predict import LABEL_NODATA, StreamOptions, detect_scene, segment_scene
from domainmona.geo.raster import grid_origins
from domainmona.geo.synthetic import SceneSpec, write_scene


def _blend(field: np.ndarray, height: int, width: int, size: int, overlap: int, skip=lambda r, c: False):
    """Feed the tiles of a per-pixel field through the blender; returns the output and emission counts."""
    channels = field.shape[0]
    out = np.full((channels, height, width), np.nan, np.float32)
    weight = np.zeros((height, width), np.float32)
    hits = np.zeros((height, width), int)

    def emit(y, x, probs, w):
        h, wd = w.shape
        out[:, y:y + h, x:x + wd] = probs
        weight[y:y + h, x:x + wd] = w
        hits[y:y + h, x:x + wd] += 1

    blender = RollingBlender(width, height, size, overlap, channels, emit)
    stride = size - overlap
    for r, row in enumerate(grid_origins(height, size, stride, fit_last=False)):
        for c, col in enumerate(grid_origins(width, size, stride, fit_last=False)):
            if not skip(r, c):
                blender.add(r, c, field[:, row:row + size, col:col + size])
    blender.finish()
    return out, weight, hits


@pytest.mark.parametrize("height,width,size,overlap", [(300, 437, 64, 20), (128, 128, 64, 32), (50, 70, 64, 0),
                                                       (257, 129, 64, 16)])
def test_blending_reproduces_tile_consistent_predictions_exactly(height, width, size, overlap):
    rng = np.random.default_rng(0)
    field = rng.random((3, height + size, width + size)).astype(np.float32)
    out, weight, hits = _blend(field, height, width, size, overlap)
    assert (hits == 1).all()  # every pixel emitted exactly once
    assert (weight > 0).all()  # the edge floor keeps the scene border weighted
    np.testing.assert_allclose(out, field[:, :height, :width], atol=1e-6)


def test_constant_prediction_has_no_seam_and_skipped_tiles_leave_no_weight():
    height, width, size, overlap = 300, 300, 64, 24
    field = np.full((2, height + size, width + size), 0.25, np.float32)
    field[1] = 0.75
    out, weight, hits = _blend(field, height, width, size, overlap, skip=lambda r, c: (r, c) == (2, 3))
    assert (hits == 1).all()
    covered = weight > 0
    assert not covered.all()  # the region that only the skipped tile covers has no weight
    np.testing.assert_allclose(out[:, covered], field[:, :height, :width][:, covered], atol=1e-6)


class PixelRule(torch.nn.Module):
    """A real network whose prediction depends on each pixel alone: tiles agree wherever they overlap."""

    def __init__(self, bands: int, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(bands, classes, 1)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.conv.weight)

    def forward(self, x):
        return self.conv(x)


def _pixel_infer(model):
    def infer(batch):
        x = torch.from_numpy(np.stack([t.pixels for t in batch]).astype(np.float32) / 255.0)
        with torch.no_grad():
            return torch.softmax(model(x), 1).numpy()
    return infer


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    return write_scene(root / "scene.tif", root / "labels.gpkg", SceneSpec(width=700, height=530, objects=16, seed=5))


@pytest.mark.parametrize("cog", [False, True])
def test_segmentation_output_matches_input_grid_and_has_no_seams(scene, tmp_path, cog):
    model = PixelRule(3, 3).eval()
    out = segment_scene(scene.raster, tmp_path / "pred.tif", _pixel_infer(model), ["a", "b"],
                        StreamOptions(size=128, overlap=40, batch_size=3), cog=cog)
    with rasterio.open(scene.raster) as src:
        pixels = src.read().astype(np.float32) / 255.0
        valid = src.dataset_mask() > 0
        expected_meta = (src.crs, src.transform, src.width, src.height)
    with rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.width, dst.height) == expected_meta
        assert dst.nodata == LABEL_NODATA and dst.profile["tiled"] and dst.compression is not None
        if cog:
            assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        predicted = dst.read(1)
    with torch.no_grad():
        whole = model(torch.from_numpy(pixels)[None]).argmax(1)[0].numpy()
    assert (predicted[~valid] == LABEL_NODATA).all()
    assert (predicted[valid] == whole[valid]).mean() > 0.9999  # equal up to softmax ties
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def _oracle_detector(scene, size):
    """Detections a perfect detector makes on a tile: every visible (possibly cut) object, scored by how
    much of it is inside, so each object cut by a tile border is reported by several tiles."""
    from domainmona.detection.dota.geometry import poly_to_obb, polygon_to_dota_quad
    from domainmona.detection.dota.labels import DotaObject
    from domainmona.detection.dota.merge import Detections
    from domainmona.detection.dota.patch_labels import objects_in_window, scale_objects

    classes = sorted(set(scene.classes.tolist()))
    scaled = scale_objects([DotaObject(polygon_to_dota_quad(p), c) for p, c in zip(scene.polygons, scene.classes)], 1.0)

    def infer(batch):
        results = []
        for tile in batch:
            # iof_thr 1: every object cut by this tile's border comes back as difficult (a partial view).
            objects, _ = objects_in_window(scaled, tile.col, tile.row, size, 1.0, 0.2)
            quads = np.array([o.poly for o in objects]).reshape(-1, 4, 2)
            scores = [0.9 if o.difficult == 0 else 0.5 for o in objects]
            results.append(Detections.of(poly_to_obb(quads) if len(quads) else np.zeros((0, 5)), scores,
                                         [classes.index(o.cls) for o in objects]))
        return results

    return infer, classes


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_detections_cut_by_tile_borders_merge_into_one(scene, tmp_path, suffix):
    size = 160
    infer, classes = _oracle_detector(scene, size)
    out = detect_scene(scene.raster, tmp_path / f"dets{suffix}", infer, classes,
                       StreamOptions(size=size, overlap=100, batch_size=4), score_thr=0.1)
    meta, _, wkb, fields = pyogrio.raw.read(out, columns=["class", "score"])
    polygons = shapely.from_wkb(wkb)
    crs = CRS.from_user_input(meta["crs"])
    if suffix == ".geojson":
        assert crs == CRS.from_epsg(4326)
        lon, lat = shapely.get_coordinates(polygons).mean(axis=0)
        assert 13 < lon < 15 and 45 < lat < 47
        polygons = reproject(Labels(polygons, fields[0], crs), scene.crs, "dets").polygons
    else:
        assert crs == scene.crs
    truth = affine_polygons(scene.polygons, scene.transform)
    assert len(polygons) == len(truth)  # one detection per object, duplicates from overlaps merged
    for polygon, cls in zip(polygons, fields[0]):
        distances = shapely.hausdorff_distance(truth, polygon)
        assert distances.min() < scene.spec.pixel_size and scene.classes[distances.argmin()] == cls


def test_geo_demo_scores_a_geopackage_against_the_scene_labels(tmp_path):
    """The demo's mAP: perfect map polygons score 1, and a class left out scores AP 0 for that class."""
    from domainmona.geo.demo import _report_map
    from domainmona.geo.vectors import write_polygons

    scene = write_scene(tmp_path / "s.tif", tmp_path / "l.gpkg", SceneSpec(width=512, height=512, objects=9, seed=2))
    in_map = affine_polygons(scene.polygons, scene.transform)
    perfect = write_polygons(tmp_path / "perfect.gpkg", in_map,
                             {"class": scene.classes.astype(object), "score": np.ones(len(in_map))}, scene.crs)
    assert _report_map(scene, perfect, tmp_path / "eval-perfect") == pytest.approx(1.0)
    missing = sorted(set(scene.classes))[0]
    keep = scene.classes != missing
    partial = write_polygons(tmp_path / "partial.gpkg", in_map[keep],
                             {"class": scene.classes[keep].astype(object), "score": np.ones(keep.sum())}, scene.crs)
    classes = len(set(scene.classes))
    assert _report_map(scene, partial, tmp_path / "eval-partial") == pytest.approx((classes - 1) / classes)
