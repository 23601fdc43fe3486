"""`domainmona tile` on generated GeoTIFF scenes: georeferencing round trips, nodata, statistics, shots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.crs import CRS

from domainmona.detection.dota.labels import DotaObject, read_dota_labels, write_dota_labels
from domainmona.detection.dota.split import split_dataset
from domainmona.geo.labels import Labels, affine_polygons, read_labels, reproject
from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.geo.tiling import IGNORE, TileOptions, tile_scenes
from domainmona.geo.vectors import write_polygons


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    return write_scene(root / "scene.tif", root / "labels.gpkg",
                       SceneSpec(width=1100, height=900, objects=24, label_crs="EPSG:4326", seed=3))


def _map_truth(scene) -> np.ndarray:
    """Ground-truth objects in the raster CRS (map units)."""
    return affine_polygons(scene.polygons, scene.transform)


def test_labels_come_back_in_the_raster_crs_within_a_pixel(scene):
    labels = read_labels(scene.labels, "class")
    assert labels.crs == CRS.from_epsg(4326)
    assert len(labels.polygons) == len(scene.polygons)  # multipolygon features were exploded
    local = reproject(labels, scene.crs, "labels")
    truth = _map_truth(scene)
    pixel = scene.spec.pixel_size
    for polygon, cls in zip(local.polygons, local.classes):
        distances = shapely.hausdorff_distance(truth, polygon)
        assert distances.min() < pixel and scene.classes[distances.argmin()] == cls


def test_detection_chips_map_back_to_the_original_labels(scene, tmp_path):
    manifest = tile_scenes([scene.raster], scene.labels, tmp_path / "chips",
                           TileOptions(size=384, overlap=128, task="detection"))
    truth = _map_truth(scene)
    recovered = np.zeros(len(truth), bool)
    for chip in manifest["chips"]:
        col, row, _, _ = chip["window"]
        for obj in read_dota_labels(tmp_path / "chips" / "annfiles" / f"{chip['name']}.txt").objects:
            if obj.difficult:
                continue
            polygon = affine_polygons(np.array([shapely.Polygon(obj.poly + (col, row))]), scene.transform)[0]
            distances = shapely.hausdorff_distance(truth, polygon)
            best = distances.argmin()
            if distances[best] < scene.spec.pixel_size and scene.classes[best] == obj.cls:
                recovered[best] = True
        assert (tmp_path / "chips" / "images" / f"{chip['name']}.png").is_file()
    assert recovered.all()
    assert manifest["classes"] == ["plane", "ship", "storage-tank"]
    assert CRS.from_wkt(manifest["rasters"][0]["crs"]) == scene.crs


def test_segmentation_masks_are_georeferenced_and_match_the_polygons(scene, tmp_path):
    manifest = tile_scenes([scene.raster], scene.labels, tmp_path / "chips",
                           TileOptions(size=256, overlap=32, task="segmentation"))
    truth = _map_truth(scene)
    classes = manifest["classes"]
    pixel = scene.spec.pixel_size
    checked = 0
    for chip in manifest["chips"]:
        with rasterio.open(tmp_path / "chips" / "masks" / f"{chip['name']}.tif") as src:
            mask, transform = src.read(1), src.transform
            assert src.crs == scene.crs and list(transform)[:6] == chip["transform"]
        rows, cols = np.nonzero((mask > 0) & (mask != IGNORE))
        xs, ys = rasterio.transform.xy(transform, rows, cols)
        centres = shapely.points(xs, ys)
        for centre, value in zip(centres, mask[rows, cols]):
            near = shapely.distance(truth, centre) <= pixel  # within a pixel of an original of that class
            assert any(classes[value - 1] == c for c in scene.classes[near])
        inner = shapely.buffer(truth, -pixel)  # pixels well inside an original carry its class
        for polygon, cls in zip(inner, scene.classes):
            inside = shapely.contains_xy(polygon, xs, ys)
            if inside.any():
                assert (mask[rows, cols][inside] == classes.index(cls) + 1).all()
                checked += 1
    assert checked >= len(truth) // 2


def test_all_nodata_chips_are_skipped(scene, tmp_path):
    # A label inside the nodata corner: its only chip holds no valid pixel.
    w = scene.spec.width
    corner = affine_polygons(np.array([shapely.box(w - 60, 10, w - 30, 40)]), scene.transform)
    labels = tmp_path / "corner.gpkg"
    write_polygons(labels, np.concatenate([corner, _map_truth(scene)[:3]]),
                   {"class": np.array(["ship", *scene.classes[:3]], dtype=object)}, scene.crs)
    manifest = tile_scenes([scene.raster], labels, tmp_path / "chips", TileOptions(size=128, overlap=28))
    assert manifest["skipped_nodata_chips"] == 1
    corner_chip = f"scene__128__{w - 128}___0"
    assert corner_chip not in {c["name"] for c in manifest["chips"]}
    assert not (tmp_path / "chips" / "images" / f"{corner_chip}.png").exists()
    assert len(manifest["chips"]) >= 1


def test_uint16_multiband_statistics_and_band_selection(tmp_path):
    scene = write_scene(tmp_path / "ms.tif", tmp_path / "ms.geojson",
                        SceneSpec(width=600, height=500, bands=5, dtype="uint16", kind="areas", objects=4, seed=1))
    manifest = tile_scenes([scene.raster], scene.labels, tmp_path / "chips",
                           TileOptions(size=256, overlap=64, bands=(5, 3, 1), task="segmentation"))
    with rasterio.open(scene.raster) as src:
        pixels = src.read([5, 3, 1])
        valid = src.dataset_mask() > 0
    for band, stats in zip(pixels, manifest["stats"]):
        values = band[valid].astype(np.float64)
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert stats["std"] == pytest.approx(values.std(), rel=1e-9)
        assert stats["max"] == values.max() > 255
        assert stats["p_low"] == np.percentile(values, 2, method="inverted_cdf")
    chip = manifest["chips"][0]
    with rasterio.open(tmp_path / "chips" / "images" / f"{chip['name']}.tif") as src:
        assert (src.count, src.dtypes[0]) == (3, "uint16")
        col, row, size, _ = chip["window"]
        np.testing.assert_array_equal(src.read(), pixels[:, row:row + size, col:col + size])


def _labelled_totals(manifest: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for chip in manifest["chips"]:
        for cls, n in chip["objects"].items():
            totals[cls] = totals.get(cls, 0) + n
    return totals


def test_shots_label_exactly_k_objects_per_class_and_are_seeded(scene, tmp_path):
    opts = TileOptions(size=256, overlap=64, shots=2, seed=7)
    first = tile_scenes([scene.raster], scene.labels, tmp_path / "a", opts)
    second = tile_scenes([scene.raster], scene.labels, tmp_path / "b", opts)
    assert [(c["name"], c["objects"]) for c in first["chips"]] == [(c["name"], c["objects"]) for c in second["chips"]]
    assert _labelled_totals(first) == {"plane": 2, "ship": 2, "storage-tank": 2}
    everything = tile_scenes([scene.raster], scene.labels, tmp_path / "all", TileOptions(size=256, overlap=64))
    present = {c["name"]: c["objects"] for c in everything["chips"]}
    left_out = 0
    for chip in first["chips"]:
        labelled = read_dota_labels(tmp_path / "a" / "annfiles" / f"{chip['name']}.txt").objects
        assert len(labelled) == sum(chip["objects"].values())  # the annfile holds what the manifest counts
        for cls, n in present[chip["name"]].items():  # a class is labelled with all its objects or none
            assert chip["objects"].get(cls, 0) in (0, n)
            left_out += n - chip["objects"].get(cls, 0)
    assert left_out > 0  # this scene's chips hold objects of full classes: they are left out of the labels
    other = tile_scenes([scene.raster], scene.labels, tmp_path / "c",
                        TileOptions(size=256, overlap=64, shots=2, seed=8))
    assert [c["name"] for c in other["chips"]] != [c["name"] for c in first["chips"]]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["shots"] == 2


def test_segmentation_shots_mark_left_out_objects_ignored(scene, tmp_path):
    manifest = tile_scenes([scene.raster], scene.labels, tmp_path / "chips",
                           TileOptions(size=256, overlap=64, shots=1, seed=0, task="segmentation"))
    assert _labelled_totals(manifest) == {"plane": 1, "ship": 1, "storage-tank": 1}
    ignored = 0
    for chip in manifest["chips"]:
        with rasterio.open(tmp_path / "chips" / "masks" / f"{chip['name']}.tif") as src:
            mask = src.read(1)
        labelled = {manifest["classes"][v - 1] for v in np.unique(mask) if 0 < v < IGNORE}
        assert labelled == set(chip["objects"])
        col, row, size, _ = chip["window"]
        for polygon, cls in zip(shapely.buffer(scene.polygons, -2), scene.classes):  # pixel frame, shrunk
            inside = shapely.box(col, row, col + size, row + size).contains(polygon)
            if inside and cls not in chip["objects"]:  # an object of a class this chip does not label
                rows, cols = np.nonzero(shapely.contains_xy(polygon, *np.meshgrid(np.arange(size) + col + 0.5,
                                                                                  np.arange(size) + row + 0.5)))
                assert (mask[rows, cols] == IGNORE).all()
                ignored += 1
    assert ignored > 0


def test_objects_cut_by_a_chip_border_are_clipped_as_split_dota_clips_them(scene, tmp_path):
    """The one cut-object rule: `tile` writes the annfile `split dota` writes for the same image and objects."""
    diamond = shapely.Polygon([(250, 100), (270, 120), (250, 140), (230, 120)])  # 76% left of x = 256: a pentagon
    strip = shapely.box(40, 236, 80, 286)  # 40% above y = 256: difficult 2
    pixels = np.array([diamond, strip])
    labels = tmp_path / "cut.gpkg"
    write_polygons(labels, affine_polygons(pixels, scene.transform), {"class": np.array(["ship", "plane"], object)},
                   scene.crs)
    tile_scenes([scene.raster], labels, tmp_path / "chips", TileOptions(size=256, overlap=64))
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((scene.spec.height, scene.spec.width, 3), np.uint8)).save(raw / "images" / "scene.png")
    write_dota_labels(raw / "labelTxt" / "scene.txt",
                      [DotaObject(np.asarray(p.exterior.coords)[:4], c) for p, c in zip(pixels, ("ship", "plane"))])
    split_dataset(raw, tmp_path / "split", size=256, gap=64, workers=1)

    def objects(path):
        return sorted((o.cls, o.difficult, tuple(np.round(o.poly, 3).ravel())) for o in read_dota_labels(path).objects)

    tiled = objects(tmp_path / "chips" / "annfiles" / "scene__256__0___0.txt")
    assert tiled == objects(tmp_path / "split" / "annfiles" / "scene__256__0___0.txt")
    assert [(cls, difficult) for cls, difficult, _ in tiled] == [("plane", 2), ("ship", 0)]
    coordinates = np.array([xy for _, _, xy in tiled])
    assert coordinates.min() >= 0 and coordinates.max() <= 256  # nothing outside the chip
    assert set(tiled[0][2]) == {40, 80, 236, 256}  # the strip, clipped at y = 256


def test_labels_in_the_raster_crs_need_no_reprojection(scene, tmp_path):
    labels = tmp_path / "utm.gpkg"
    write_polygons(labels, _map_truth(scene), {"class": scene.classes.astype(object)}, scene.crs)
    read = read_labels(labels, "class")
    assert read.crs == scene.crs
    assert reproject(read, scene.crs, "x") is read
    moved = reproject(Labels(read.polygons, read.classes, CRS.from_epsg(3857)), scene.crs, "x")
    assert moved.crs == scene.crs


def test_manifest_records_windows_and_transforms(scene, tmp_path):
    manifest = tile_scenes([scene.raster], scene.labels, tmp_path / "chips", TileOptions(size=512, overlap=100))
    for chip in manifest["chips"]:
        col, row, size, _ = chip["window"]
        expected = scene.transform @ rasterio.Affine.translation(col, row)
        assert chip["transform"] == pytest.approx(list(expected)[:6])
        assert col + size <= scene.spec.width and row + size <= scene.spec.height
    assert Path(manifest["rasters"][0]["path"]) == scene.raster.resolve()
