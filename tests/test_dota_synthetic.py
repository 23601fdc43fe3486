"""The synthetic DOTA scene generator: valid raw layout, reproducible, classes that look different."""

import numpy as np
import pytest
import shapely
from PIL import Image

from domainmona.detection.dota.labels import read_dota_labels
from domainmona.detection.synthetic import GSD, IMAGE_SOURCE, SYNTHETIC_CLASSES, generate_dota_scenes
from domainmona.errors import UserError


def test_scenes_are_valid_reproducible_and_cover_every_class(tmp_path):
    paths = generate_dota_scenes(tmp_path / "a", n_images=3, image_size=(400, 320), objects_per_image=(8, 12), seed=5)
    generate_dota_scenes(tmp_path / "b", n_images=2, image_size=(400, 320), objects_per_image=(8, 12), seed=5)
    assert [p.name for p in paths] == ["scene0000.png", "scene0001.png", "scene0002.png"]
    for name in ("scene0000", "scene0001"):  # image i depends on (seed, i) only
        assert (tmp_path / "a" / "images" / f"{name}.png").read_bytes() == \
            (tmp_path / "b" / "images" / f"{name}.png").read_bytes()
        assert (tmp_path / "a" / "labelTxt" / f"{name}.txt").read_text() == \
            (tmp_path / "b" / "labelTxt" / f"{name}.txt").read_text()
    frame = shapely.box(0, 0, 400, 320)
    near_border = 0
    for path in paths:
        assert Image.open(path).size == (400, 320)
        labels = read_dota_labels(tmp_path / "a" / "labelTxt" / f"{path.stem}.txt", SYNTHETIC_CLASSES)
        assert (labels.imagesource, labels.gsd) == (IMAGE_SOURCE, GSD)
        assert 8 <= len(labels.objects) <= 12 and {o.cls for o in labels.objects} == set(SYNTHETIC_CLASSES)
        polygons = [shapely.Polygon(o.poly) for o in labels.objects]
        assert all(frame.contains(p) for p in polygons)
        assert all(a.distance(b) >= 4 for i, a in enumerate(polygons) for b in polygons[i + 1:])
        near_border += sum(frame.exterior.distance(p) < 8 for p in polygons)
    assert near_border >= 2


def test_classes_differ_in_colour_and_size(tmp_path):
    generate_dota_scenes(tmp_path / "s", n_images=2, image_size=512, seed=0)
    colours, areas = {c: [] for c in SYNTHETIC_CLASSES}, {c: [] for c in SYNTHETIC_CLASSES}
    for index in range(2):
        pixels = np.asarray(Image.open(tmp_path / "s" / "images" / f"scene{index:04d}.png"), dtype=float)
        yy, xx = np.mgrid[:512, :512]
        points = shapely.points(xx.ravel() + 0.5, yy.ravel() + 0.5)
        for obj in read_dota_labels(tmp_path / "s" / "labelTxt" / f"scene{index:04d}.txt").objects:
            inside = shapely.contains(shapely.Polygon(obj.poly), points).reshape(512, 512)
            colours[obj.cls].append(pixels[inside].mean(axis=0))
            areas[obj.cls].append(inside.sum())
    means = {c: np.mean(v, axis=0) for c, v in colours.items()}
    for i, a in enumerate(SYNTHETIC_CLASSES):
        for b in SYNTHETIC_CLASSES[i + 1:]:
            assert np.linalg.norm(means[a] - means[b]) > 40, (a, b, means[a], means[b])
    assert np.mean(areas["vehicle"]) < np.mean(areas["container"]) < np.mean(areas["ship"]) < np.mean(areas["court"])


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(UserError, match="synthetic classes"):
        generate_dota_scenes(tmp_path / "x", classes=("plane",))
    with pytest.raises(UserError, match="at least 128"):
        generate_dota_scenes(tmp_path / "x", image_size=64)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="did not write"):
        generate_dota_scenes(tmp_path / "busy", n_images=1)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
