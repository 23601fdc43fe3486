"""Bad input to `tile` / `tile-predict`: one-line errors, exit code 2, nothing left behind."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from domainmona.errors import UserError
from domainmona.geo.labels import affine_polygons
from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.geo.tiling import TileOptions, tile_scenes
from domainmona.geo.vectors import write_polygons


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    return write_scene(root / "scene.tif", root / "labels.gpkg", SceneSpec(width=400, height=300, objects=6, seed=2))


def _raster(path, dtype="uint8", crs="EPSG:32633", count=3):
    profile = dict(driver="GTiff", width=64, height=64, count=count, dtype=dtype,
                   transform=Affine(0.5, 0, 400000, 0, -0.5, 5100000), crs=crs)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((count, 64, 64), dtype=dtype))
    return path


def _tile_error(rasters, labels, out, **opts) -> str:
    with pytest.raises(UserError) as info:
        tile_scenes(rasters, labels, out, TileOptions(**{"size": 64, "overlap": 8, **opts}))
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # no partial output
    message = str(info.value)
    assert "\n" not in message
    return message


def test_raster_without_crs_is_refused_unless_allowed(scene, tmp_path):
    raster = _raster(tmp_path / "nocrs.tif", crs=None)
    labels = tmp_path / "pixels.gpkg"
    write_polygons(labels, affine_polygons(np.array([shapely.box(10, 10, 30, 20)]), Affine(0.5, 0, 400000, 0, -0.5, 5100000)),
                   {"class": np.array(["ship"], dtype=object)}, None)
    assert "no CRS" in _tile_error([raster], labels, tmp_path / "out")
    manifest = tile_scenes([raster], labels, tmp_path / "out", TileOptions(size=64, overlap=8, allow_no_crs=True))
    assert len(manifest["chips"]) == 1


def test_labels_not_overlapping_the_raster(scene, tmp_path):
    far = affine_polygons(scene.polygons, Affine.translation(1e5, 0) @ scene.transform)
    labels = tmp_path / "far.gpkg"
    write_polygons(labels, far, {"class": scene.classes.astype(object)}, scene.crs)
    assert "no label overlaps" in _tile_error([scene.raster], labels, tmp_path / "out")


def test_corrupt_and_missing_files(scene, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    assert "not a readable raster" in _tile_error([bad], scene.labels, tmp_path / "out")
    bad_labels = tmp_path / "bad.gpkg"
    bad_labels.write_bytes(b"not a geopackage")
    assert "not a readable vector file" in _tile_error([scene.raster], bad_labels, tmp_path / "out")
    assert "not found" in _tile_error([tmp_path / "missing.tif"], scene.labels, tmp_path / "out")


def test_unsupported_dtype_and_band(scene, tmp_path):
    assert "unsupported dtype complex64" in _tile_error([_raster(tmp_path / "c.tif", "complex64")], scene.labels,
                                                        tmp_path / "out")
    assert "band 4 requested" in _tile_error([scene.raster], scene.labels, tmp_path / "out", bands=(1, 2, 4),
                                             task="segmentation")


def test_empty_label_file_and_missing_class_field(scene, tmp_path):
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    assert "no features" in _tile_error([scene.raster], empty, tmp_path / "out")
    assert "no field 'kind'" in _tile_error([scene.raster], scene.labels, tmp_path / "out", class_field="kind")


def test_an_unrelated_output_folder_is_never_replaced(scene, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(UserError, match="did not write"):
        tile_scenes([scene.raster], scene.labels, precious, TileOptions(size=128, overlap=32))
    assert (precious / "thesis.tex").read_text() == "..."
    tile_scenes([scene.raster], scene.labels, tmp_path / "chips", TileOptions(size=128, overlap=32))
    tile_scenes([scene.raster], scene.labels, tmp_path / "chips", TileOptions(size=128, overlap=32))  # re-run


def test_cli_prints_one_line_and_exits_2(scene, tmp_path):
    out = tmp_path / "chips"
    result = subprocess.run([sys.executable, "-m", "domainmona.cli", "tile", str(scene.raster), "--labels",
                             str(scene.labels), "--out", str(out), "--bands", "1,2,9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "band 9 requested" in result.stderr
    assert not out.exists()
    ok = subprocess.run([sys.executable, "-m", "domainmona.cli", "tile", str(scene.raster), "--labels",
                         str(scene.labels), "--out", str(out), "--size", "128", "--overlap", "32"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == str(out) and (out / "manifest.json").is_file()


def test_tile_predict_refuses_bad_checkpoint_and_output(scene, tmp_path):
    from domainmona.geo.models import tile_predict

    not_a_checkpoint = tmp_path / "x.safetensors"
    not_a_checkpoint.write_bytes(b"\x00" * 32)
    with pytest.raises(UserError, match="not a safetensors checkpoint"):
        tile_predict(scene.raster, not_a_checkpoint, tmp_path / "o.tif", None, None, 2, 0.3)
    with pytest.raises(UserError, match="no such checkpoint"):
        tile_predict(scene.raster, tmp_path / "none.safetensors", tmp_path / "o.tif", None, None, 2, 0.3)
    assert not (tmp_path / "o.tif").exists()
