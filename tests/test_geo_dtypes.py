"""Every supported pixel type through `tile` and `tile-predict`: nodata from the file, from `--nodata`, NaN;
robust statistics that follow the data's units, so that every type normalises to the same model input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
import shapely
import torch

from domainmona.errors import UserError
from domainmona.geo.labels import affine_polygons
from domainmona.geo.predict import LABEL_NODATA, StreamOptions, segment_scene
from domainmona.geo.raster import check_nodata, open_raster, read_tile
from domainmona.geo.stats import SAMPLE_SIZE, band_values, normalise, sample_windows, summarise
from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.geo.tiling import IGNORE, TileOptions, tile_scenes
from domainmona.geo.vectors import write_polygons

TILE = dict(size=128, overlap=32, task="segmentation")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A uint8 scene (nodata 0 frame and corner) and its tiling: the reference every type must reproduce."""
    root = tmp_path_factory.mktemp("base")
    scene = write_scene(root / "scene.tif", root / "labels.gpkg",
                        SceneSpec(width=320, height=320, kind="areas", objects=5, frame=16, seed=2, block=64))
    manifest = tile_scenes([scene.raster], scene.labels, root / "chips", TileOptions(**TILE))
    return scene, manifest, root / "chips"


def _retyped(scene, path, dtype, scale, offset, file_nodata, fill):
    """The scene's pixels mapped by scale * v + offset into ``dtype``, nodata pixels set to ``fill``."""
    with rasterio.open(scene.raster) as src:
        pixels, valid = src.read().astype(np.float64), src.dataset_mask() > 0
        profile = src.profile
    values = pixels * scale + offset
    values[:, ~valid] = fill
    profile.update(dtype=dtype, nodata=file_nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values.astype(dtype))
    return path


# dtype, scale, offset, nodata in the file, value of nodata pixels, --nodata
TYPES = {
    "uint16": ("uint16", 40, 200, 0, 0, None),
    "int8": ("int8", 1, -128, -128, -128, None),
    "int16-dem": ("int16", 10, -1000, -32768, -32768, None),
    "uint32": ("uint32", 100000, 7, 4294967295, 4294967295, None),
    "int32-option": ("int32", 1000, -50000, None, -99999, -99999),
    "float32-nan": ("float32", 1 / 255, 0.0, math.nan, math.nan, None),
    "float64-undeclared-nan": ("float64", 0.01, -20.0, None, math.nan, None),
}


def _chip(chips, name, kind):
    with rasterio.open(chips / kind / f"{name}.tif") as src:
        return src.read(), src.dtypes[0]


@pytest.mark.parametrize("case", list(TYPES))
def test_every_type_tiles_to_the_same_normalised_chips(base, tmp_path, capsys, case):
    """Percentiles, clipped mean and std follow an increasing affine change of units exactly, so chips of any
    type normalise to the uint8 scene's model input, with the same nodata pixels."""
    scene, reference, reference_chips = base
    dtype, scale, offset, file_nodata, fill, option = TYPES[case]
    raster = _retyped(scene, tmp_path / "scene.tif", dtype, scale, offset, file_nodata, fill)
    manifest = tile_scenes([raster], scene.labels, tmp_path / "chips", TileOptions(**TILE, nodata=option))
    warned = "declares no nodata" in capsys.readouterr().out
    assert warned == (case == "float64-undeclared-nan")  # the one float raster without a nodata value
    assert [c["name"] for c in manifest["chips"]] == [c["name"] for c in reference["chips"]]
    for got, want in zip(manifest["stats"], reference["stats"]):
        for key in ("p_low", "p_high", "mean", "min", "max"):
            assert got[key] == pytest.approx(want[key] * scale + offset, rel=1e-6, abs=1e-9), key
        assert got["std"] == pytest.approx(want["std"] * scale, rel=1e-6)
        assert got["count"] == want["count"]
    for chip in manifest["chips"]:
        pixels, chip_dtype = _chip(tmp_path / "chips", chip["name"], "images")
        mask, _ = _chip(tmp_path / "chips", chip["name"], "masks")
        ref_pixels, _ = _chip(reference_chips, chip["name"], "images")
        ref_mask, _ = _chip(reference_chips, chip["name"], "masks")
        assert chip_dtype == dtype
        np.testing.assert_array_equal(mask, ref_mask)
        valid = mask[0] != IGNORE
        np.testing.assert_allclose(normalise(pixels, manifest["stats"])[:, valid],
                                   normalise(ref_pixels, reference["stats"])[:, valid], atol=1e-4)


def _float_scene(path, width=256, height=256, nodata=math.nan):
    """float32 reflectance-like bands; the right half NaN in every band (nodata), and band 2 NaN alone in
    rows 20..29 of the left half (an invalid value in valid pixels)."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.02, 0.6, size=(3, height, width)).astype(np.float32)
    pixels[:, :, width // 2:] = np.nan
    pixels[1, 20:30, :width // 2] = np.nan
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="float32", nodata=nodata,
                   crs="EPSG:32633", transform=rasterio.Affine(0.5, 0, 400000, 0, -0.5, 5100000), tiled=True,
                   blockxsize=64, blockysize=64)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path, profile["transform"]


def test_all_nan_tiles_are_skipped_and_predicted_as_nodata(tmp_path):
    raster, transform = _float_scene(tmp_path / "f.tif")
    labels = tmp_path / "l.gpkg"
    boxes = [shapely.box(10, 40, 60, 90), shapely.box(150, 150, 200, 200)]  # left half, all-NaN right half
    write_polygons(labels, affine_polygons(np.array(boxes), transform),
                   {"class": np.array(["crop", "water"], dtype=object)}, rasterio.crs.CRS.from_epsg(32633))
    manifest = tile_scenes([raster], labels, tmp_path / "chips", TileOptions(size=128, overlap=0,
                                                                             task="segmentation"))
    assert [c["window"][:2] for c in manifest["chips"]] == [[0, 0]]
    assert manifest["skipped_nodata_chips"] == 1 and manifest["rasters"][0]["nodata"] == "nan"
    assert all(math.isfinite(v) for s in manifest["stats"] for v in s.values())

    seen = []

    def infer(batch):  # a per-pixel rule on the normalised input, like segment_infer
        images = np.stack([normalise(t.pixels, manifest["stats"]) * t.valid for t in batch])
        seen.append(images)
        return torch.softmax(torch.from_numpy(images[:, :2] * 4), dim=1).numpy()

    out = segment_scene(raster, tmp_path / "pred.tif", infer, ["a"], StreamOptions(size=64, overlap=16))
    with rasterio.open(out) as dst:
        predicted = dst.read(1)
    assert all(np.isfinite(images).all() for images in seen)  # NaN never reaches a model
    assert (predicted[:, 128:] == LABEL_NODATA).all()
    assert (predicted[:, :128] != LABEL_NODATA).all()  # band 2's NaN rows stay valid: bands 1 and 3 are
    with pytest.raises(UserError, match="no chip holds both labels and valid pixels"):
        only_nan = tmp_path / "nan.gpkg"
        write_polygons(only_nan, affine_polygons(np.array(boxes[1:]), transform),
                       {"class": np.array(["water"], dtype=object)}, rasterio.crs.CRS.from_epsg(32633))
        tile_scenes([raster], only_nan, tmp_path / "none", TileOptions(size=128, overlap=0))


def test_nodata_value_inside_another_bands_range(tmp_path):
    """GDAL keeps one nodata value per file: a pixel is nodata only where every band holds it. Band 3's
    real zeros (rows 40..59) stay valid and count in its statistics; `--nodata 7` replaces the file's 0."""
    pixels = np.full((3, 128, 128), 500, dtype=np.uint16)
    pixels[:, :8] = 0  # the file's nodata (0) in every band
    pixels[2, 40:60] = 0  # a real 0 in band 3 only
    pixels[:, 100:110] = 7  # all bands 7: nodata only under --nodata 7
    path = tmp_path / "u16.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=3, dtype="uint16", nodata=0,
                       crs="EPSG:32633", transform=rasterio.Affine(1, 0, 0, 0, -1, 0)) as dst:
        dst.write(pixels)
    expected = {None: np.r_[8:128], 7.0: np.r_[0:100, 110:128]}
    for option, rows in expected.items():
        with open_raster(path, nodata=option) as src:
            _, valid = read_tile(src, (1, 2, 3), 0, 0, 128)
            stats = summarise(band_values(src, (1, 2, 3)))
        np.testing.assert_array_equal(np.flatnonzero(valid.all(axis=1)), rows)
        assert not valid[np.setdiff1d(np.arange(128), rows)].any()
        assert [s["count"] for s in stats] == [len(rows) * 128] * 3
        assert stats[2]["min"] == 0 and stats[0]["min"] == (0 if option else 7)


@pytest.mark.parametrize("dtype,value,reason", [
    ("uint8", math.nan, "whole numbers"), ("uint8", 256, "outside 0..255"), ("uint16", -1, "outside"),
    ("int16", 2.5, "whole numbers"), ("int32", math.inf, "whole numbers"), ("float32", 1e39, "beyond the range")])
def test_nodata_the_pixels_cannot_hold_is_refused(dtype, value, reason):
    with pytest.raises(UserError, match=reason):
        check_nodata(value, dtype, "x.tif")


@pytest.mark.parametrize("dtype,value", [("uint8", 255), ("int16", -32768), ("uint32", 4294967295),
                                         ("float32", math.nan), ("float32", -3.4e38), ("float64", -9999.5)])
def test_nodata_the_pixels_can_hold_is_accepted(dtype, value):
    check_nodata(value, dtype, "x.tif")


def test_large_float_scenes_are_sampled_with_accurate_percentiles(tmp_path):
    """Above SAMPLE_SIZE pixels, a strided lattice of block-aligned windows: far fewer values, the same
    percentiles within a hair, and counts that stand for the whole scene."""
    side = 1536
    rng = np.random.default_rng(1)
    rows = np.linspace(0, 3, side)[:, None]
    field = (np.sin(rows * 2) + np.cos(np.linspace(0, 5, side))[None, :] + rng.normal(0, 0.3, (side, side)))
    path = tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1, dtype="float32",
                       nodata=math.nan, crs="EPSG:32633", transform=rasterio.Affine(1, 0, 0, 0, -1, 0),
                       tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(field.astype(np.float32)[None])
    with open_raster(path) as src:
        windows, step = sample_windows(src)
        values = band_values(src, (1,))[0]
    assert step > 1 and len(values.values) <= 2 * SAMPLE_SIZE
    stats = summarise([values])[0]
    exact = field.astype(np.float32).astype(np.float64)
    spread = np.percentile(exact, 98) - np.percentile(exact, 2)
    assert abs(stats["p_low"] - np.percentile(exact, 2)) < 0.01 * spread
    assert abs(stats["p_high"] - np.percentile(exact, 98)) < 0.01 * spread
    assert stats["count"] == pytest.approx(side * side, rel=0.01)


@pytest.mark.slow
def test_float32_nan_scene_tiles_trains_and_predicts(base, tmp_path):
    """`tile` → `train geo-seg` → `tile-predict` on float32 reflectance with NaN nodata: the class map is
    nodata exactly where the scene is NaN, and the checkpoint carries the chips' statistics."""
    from typer.testing import CliRunner

    from domainmona.cli import app
    from domainmona.geo.segmodel import read_spec

    def cli(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        return result.output.strip().splitlines()[-1]

    scene = base[0]
    raster = _retyped(scene, tmp_path / "refl.tif", "float32", 1 / 255, 0.0, math.nan, math.nan)
    chips = cli("tile", raster, "--labels", scene.labels, "--out", tmp_path / "chips", "--size", "128",
                "--overlap", "32", "--task", "segmentation")
    checkpoint = cli("train", "geo-seg", "--chips", chips, "--work-dir", tmp_path / "work", "--max-iters", "2",
                     "--encoder", "micro", "--arch", "FPN", "--batch-size", "2")
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    assert read_spec(checkpoint)["stats"] == manifest["stats"] and read_spec(checkpoint)["dtypes"] == ["float32"]
    out = cli("tile-predict", raster, "--checkpoint", checkpoint, "--out", tmp_path / "pred.tif")
    with rasterio.open(raster) as src, rasterio.open(out) as dst:
        nan = np.isnan(src.read()).all(axis=0)
        predicted = dst.read(1)
    assert nan.any() and (predicted[nan] == LABEL_NODATA).all() and (predicted[~nan] != LABEL_NODATA).all()
