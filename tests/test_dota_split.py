"""The splitter: exact grid, patch names, cut/kept/dropped objects, rates, big-image reads, resume."""

import json

import numpy as np
import pytest
import shapely
from PIL import Image

from domainmona.detection.dota import image_reader
from domainmona.detection.dota.labels import DotaObject, read_dota_labels, write_dota_labels
from domainmona.detection.dota.patch_names import parse_patch_name, patch_name, patch_starts
from domainmona.detection.dota.patch_labels import objects_in_window, scale_objects
from domainmona.detection.dota.split import split_dataset
from domainmona.detection.synthetic import SYNTHETIC_CLASSES, generate_dota_scenes
from domainmona.errors import UserError

CLASSES = ("car", "ship")


def _box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _raw(root, images, labels=None):
    """Write a raw DOTA folder: images maps name -> HxWx3 array, labels name -> objects."""
    (root / "images").mkdir(parents=True)
    for name, pixels in images.items():
        Image.fromarray(pixels).save(root / "images" / f"{name}.png")
    for name, objects in (labels or {}).items():
        write_dota_labels(root / "labelTxt" / f"{name}.txt", objects, imagesource="test", gsd=0.3)
    return root


def _pixels(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _objects(dst, name):
    return {(o.cls, o.difficult, tuple(np.round(o.poly, 2).ravel())) for o in
            read_dota_labels(dst / "annfiles" / f"{name}.txt").objects}


@pytest.mark.parametrize("length, expected", [
    (1848, [0, 824]), (1024, [0]), (500, [0]), (1025, [0, 1]), (3000, [0, 824, 1648, 1976])])
def test_patch_grid_is_exact_including_the_last_window(length, expected):
    assert patch_starts(length, 1024, 200) == expected


def test_patch_names_round_trip_and_tell_size_from_rate():
    assert patch_name("P0001", 1024, 1.0, 824, 0) == "P0001__1024__824___0"
    assert parse_patch_name("P0001__1024__824___0") == ("P0001", 1024, 824, 0)
    name = patch_name("a__b", 1024, 0.5, 10, 20)
    assert name == "a__b__0.5__10___20"
    parsed = parse_patch_name(name + ".png")
    assert parsed == ("a__b", 0.5, 10, 20) and parsed.rate == 0.5
    assert parse_patch_name(patch_name("x", 800, 2, 0, 0)).rate == 2.0
    assert parse_patch_name("x__800__0___0").rate == 1.0
    with pytest.raises(UserError, match="not a patch name"):
        parse_patch_name("P0001_1024_0_0")


def test_objects_inside_cut_and_sliver_across_two_patches(tmp_path):
    pixels = _pixels(1000, 1800)
    objects = [DotaObject(_box(100, 100, 200, 150), "car", 0),  # inside the left patch only
               DotaObject(_box(900, 500, 1100, 540), "ship", 0),  # half in the left patch, inside the right
               DotaObject(_box(995, 300, 1095, 320), "car", 0),  # 5% in the left patch: a sliver there
               DotaObject(_box(960, 700, 1010, 720), "ship", 1)]  # 80% in the left patch: kept, clipped
    src = _raw(tmp_path / "raw", {"img": pixels}, {"img": objects})
    summary = split_dataset(src, tmp_path / "out", size=1000, gap=200, workers=1, classes=CLASSES)
    dst = tmp_path / "out"
    assert sorted(p.name for p in (dst / "images").iterdir()) == ["img__1000__0___0.png", "img__1000__800___0.png"]
    assert _objects(dst, "img__1000__0___0") == {
        ("car", 0, (100, 100, 200, 100, 200, 150, 100, 150)),
        ("ship", 2, (900, 500, 1000, 500, 1000, 540, 900, 540)),
        ("ship", 1, (960, 700, 1000, 700, 1000, 720, 960, 720))}
    assert _objects(dst, "img__1000__800___0") == {
        ("ship", 0, (100, 500, 300, 500, 300, 540, 100, 540)),
        ("car", 0, (195, 300, 295, 300, 295, 320, 195, 320)),
        ("ship", 1, (160, 700, 210, 700, 210, 720, 160, 720))}
    assert (summary.patches, summary.objects.kept, summary.objects.cut, summary.objects.dropped) == (2, 5, 1, 1)
    np.testing.assert_array_equal(np.asarray(Image.open(dst / "images" / "img__1000__800___0.png")),
                                  pixels[:, 800:1800])


def test_rotated_object_clipped_to_a_pentagon_loses_its_shortest_edge_as_in_dota_devkit(tmp_path):
    diamond = np.array([[90, 40], [110, 60], [90, 80], [70, 60]], dtype=float)  # 7/8 of it left of x = 100
    src = _raw(tmp_path / "raw", {"img": _pixels(120, 300)}, {"img": [DotaObject(diamond, "car", 0)]})
    split_dataset(src, tmp_path / "out", size=100, gap=20, workers=1)
    (obj,) = read_dota_labels(tmp_path / "out" / "annfiles" / "img__100__0___0.txt").objects
    assert obj.difficult == 0  # IoF 0.875 >= 0.7: a normal object
    pentagon = shapely.Polygon(diamond).intersection(shapely.box(0, 0, 100, 100))
    assert len(pentagon.exterior.coords) == 6
    # GetPoly4FromPoly5: the two 14.1 px edges tie; the topmost, (90,40)-(100,50), becomes its midpoint
    assert {tuple(p) for p in obj.poly} == {(95, 45), (100, 70), (90, 80), (70, 60)}
    assert obj.poly.max() <= 100  # every vertex inside the patch (the minimum rectangle reached x = 110)


def test_cut_objects_follow_dota_devkit_triangles_and_hexagons_are_dropped():
    diamond = [[90, 75], [105, 90], [90, 105], [75, 90]]  # cut at the corner (100, 100): a hexagon, IoF 0.89
    corner = [[100, 85], [115, 100], [100, 115], [85, 100]]  # a triangle in the patch, IoF 0.25
    rectangle = [[90, 10], [130, 10], [130, 20], [90, 20]]  # a rectangle, IoF 0.25: difficult 2, clipped
    scaled = scale_objects([DotaObject(np.array(q, float), "car", 0) for q in (diamond, corner, rectangle)], 1.0)
    objects, counts = objects_in_window(scaled, 0, 0, 100)
    assert (counts.kept, counts.cut, counts.dropped) == (0, 1, 2)
    (obj,) = objects
    assert obj.difficult == 2 and {tuple(p) for p in obj.poly} == {(90, 10), (100, 10), (100, 20), (90, 20)}
    objects, counts = objects_in_window(scaled, 50, 0, 150)  # a window holding all three: kept unchanged
    assert (counts.kept, counts.cut, counts.dropped) == (3, 0, 0)
    assert objects[2].poly.tolist() == [[40, 10], [80, 10], [80, 20], [40, 20]]


def test_small_images_are_padded_and_rates_rescale_labels(tmp_path):
    pixels = _pixels(200, 300, seed=1)
    src = _raw(tmp_path / "raw", {"small": pixels}, {"small": [DotaObject(_box(10, 20, 110, 60), "car", 0)]})
    split_dataset(src, tmp_path / "out", size=256, gap=56, rates=(1.0, 0.5), workers=1)
    dst = tmp_path / "out"
    full = np.asarray(Image.open(dst / "images" / "small__256__0___0.png"))
    assert full.shape == (256, 256, 3)
    np.testing.assert_array_equal(full[:200, :256], pixels[:, :256])
    assert not full[200:].any()
    # 300 px wide > 256: two windows at rate 1; at rate 0.5 the 150 x 100 image fits one padded patch
    assert (dst / "images" / "small__256__44___0.png").exists()
    half = np.asarray(Image.open(dst / "images" / "small__0.5__0___0.png"))
    assert not half[100:].any() and not half[:, 150:].any()
    assert abs(half[:100, :150].mean() - pixels.mean()) < 2
    assert _objects(dst, "small__0.5__0___0") == {("car", 0, (5, 10, 55, 10, 55, 30, 5, 30))}


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_large_images_read_through_windows_give_the_same_patches(tmp_path, monkeypatch, suffix):
    pixels = _pixels(700, 900, seed=2)
    (tmp_path / "raw" / "images").mkdir(parents=True)
    options = {"tiled": True, "blockxsize": 256, "blockysize": 256} if suffix == ".tif" else {}
    if suffix == ".tif":
        import rasterio
        with rasterio.open(tmp_path / "raw" / "images" / f"big{suffix}", "w", driver="GTiff", width=900, height=700,
                           count=3, dtype="uint8", **options) as out:
            out.write(np.moveaxis(pixels, -1, 0))
    else:
        Image.fromarray(pixels).save(tmp_path / "raw" / "images" / f"big{suffix}")
    split_dataset(tmp_path / "raw", tmp_path / "memory", size=300, gap=50, rates=(1.0, 0.7), workers=1)
    monkeypatch.setattr(image_reader, "LARGE_IMAGE_BYTES", 1000)
    split_dataset(tmp_path / "raw", tmp_path / "windows", size=300, gap=50, rates=(1.0, 0.7), workers=1)
    names = sorted(p.name for p in (tmp_path / "memory" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "windows" / "images").iterdir())
    assert len(names) == 12 + 6  # 4 x 3 windows at rate 1, 3 x 2 at rate 0.7 (630 x 490)
    for name in names:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "memory" / "images" / name)),
                                      np.asarray(Image.open(tmp_path / "windows" / "images" / name)))
    assert not any((tmp_path / "windows" / ".split" / "cache").glob("*"))  # the converted copy is gone


def test_parallel_split_matches_serial_and_resumes_after_an_interruption(tmp_path):
    generate_dota_scenes(tmp_path / "raw", n_images=3, image_size=(400, 300), seed=3)
    serial = split_dataset(tmp_path / "raw", tmp_path / "serial", size=256, gap=56, workers=1,
                           classes=SYNTHETIC_CLASSES)
    parallel = split_dataset(tmp_path / "raw", tmp_path / "parallel", size=256, gap=56, workers=2,
                             classes=SYNTHETIC_CLASSES)
    assert (parallel.patches, parallel.objects) == (serial.patches, serial.objects) == (12, serial.objects)
    for folder in ("images", "annfiles"):
        for file in (tmp_path / "serial" / folder).iterdir():
            assert (tmp_path / "parallel" / folder / file.name).read_bytes() == file.read_bytes()

    # simulate a kill in the middle of scene0001: its marker and one patch are missing
    (tmp_path / "serial" / ".split" / "done" / "scene0001.json").unlink()
    (tmp_path / "serial" / "images" / "scene0001__256__144___0.png").unlink()
    resumed = split_dataset(tmp_path / "raw", tmp_path / "serial", size=256, gap=56, workers=1)
    assert resumed.resumed == 2 and (resumed.patches, resumed.objects) == (serial.patches, serial.objects)
    assert (tmp_path / "serial" / "images" / "scene0001__256__144___0.png").exists()
    assert json.loads((tmp_path / "serial" / ".split" / "done" / "scene0001.json").read_text())["patches"] == 4
    with pytest.raises(UserError, match="other settings"):
        split_dataset(tmp_path / "raw", tmp_path / "serial", size=256, gap=100, workers=1)


def test_unlabelled_sources_write_images_only(tmp_path):
    src = _raw(tmp_path / "raw", {"test1": _pixels(100, 100)})
    summary = split_dataset(src, tmp_path / "out", size=64, gap=0, workers=1)
    assert not summary.labelled and summary.patches == 4
    assert not (tmp_path / "out" / "annfiles").exists()


def test_bad_sources_raise_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="images/"):
        split_dataset(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        split_dataset(tmp_path / "empty", tmp_path / "out")
    src = _raw(tmp_path / "raw", {"a": _pixels(50, 50), "b": _pixels(50, 50)}, {"a": []})
    with pytest.raises(UserError, match="b.png has no label file"):
        split_dataset(src, tmp_path / "out")
    write_dota_labels(src / "labelTxt" / "b.txt", [])
    write_dota_labels(src / "labelTxt" / "c.txt", [])
    with pytest.raises(UserError, match="c.txt has no image"):
        split_dataset(src, tmp_path / "out")
    (src / "labelTxt" / "c.txt").unlink()
    (src / "labelTxt" / "b.txt").write_text("1 2 3 4 5 6 7 car 0\n")
    with pytest.raises(UserError, match="b.txt:1:"):
        split_dataset(src, tmp_path / "out", workers=1)
    with pytest.raises(UserError, match="gap"):
        split_dataset(src, tmp_path / "out", size=100, gap=100)
