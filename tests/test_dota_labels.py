"""DOTA label files and the quadrilateral geometry helpers."""

import numpy as np
import pytest
import shapely

from domainmona.detection.classes import DATASETS, DOTA_V1_0, DOTA_V1_5, DOTA_V2_0, STAR
from domainmona.detection.dota.geometry import signed_areas
from domainmona.detection.dota.labels import (DotaObject, normalise_quads, obb_to_poly, poly_to_obb,
                                              polygon_to_dota_quad, read_dota_labels, write_dota_labels)
from domainmona.errors import UserError


def test_class_lists_have_the_published_sizes_and_no_duplicates():
    assert (len(DOTA_V1_0), len(DOTA_V1_5), len(DOTA_V2_0), len(STAR)) == (15, 16, 18, 48)
    assert DOTA_V1_5[-1] == "container-crane" and DOTA_V2_0[-2:] == ("airport", "helipad")
    for classes in DATASETS.values():
        assert len(set(classes)) == len(classes)


def test_read_parses_headers_nine_field_lines_and_blank_lines(tmp_path):
    path = tmp_path / "P0001.txt"
    path.write_text("imagesource:GoogleEarth\ngsd:0.146343590398\n"
                    "10 20 30 20 30 40 10 40 plane 0\n\n"
                    "1.5 2 3 2 3 4 1.5 4 small-vehicle 1\n"
                    "0 0 5 0 5 5 0 5 ship\n")
    labels = read_dota_labels(path, DOTA_V1_0)
    assert labels.imagesource == "GoogleEarth"
    assert labels.gsd == pytest.approx(0.146343590398)
    assert [(o.cls, o.difficult) for o in labels.objects] == [("plane", 0), ("small-vehicle", 1), ("ship", 0)]
    np.testing.assert_array_equal(labels.objects[1].poly, [[1.5, 2], [3, 2], [3, 4], [1.5, 4]])


def test_gsd_null_and_missing_headers_read_as_none(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("imagesource:\ngsd:null\n")
    labels = read_dota_labels(path)
    assert (labels.imagesource, labels.gsd, labels.objects) == (None, None, [])


@pytest.mark.parametrize("line, message", [
    ("10 20 30 20 30 40 10 plane 0", "first 8 fields must be numbers"),
    ("10 20 30 20 30 40 plane 0", "got 8 fields"),
    ("10 20 30 20 30 40 10 40 plane 0 extra", "got 11 fields"),
    ("10 20 30 20 30 40 10 40 plane 7", "difficult must be 0, 1 or 2"),
    ("10 20 30 20 30 nan 10 40 plane 0", "finite"),
    ("10 20 30 20 30 40 10 40 car 0", "unknown class 'car'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(f"imagesource:GoogleEarth\n10 20 30 20 30 40 10 40 plane 0\n{line}\n")
    with pytest.raises(UserError, match=message) as error:
        read_dota_labels(path, DOTA_V1_0)
    assert f"{path}:3:" in str(error.value)


def test_write_then_read_round_trips(tmp_path):
    objects = [DotaObject(np.array([[0.25, 1], [10, 1], [10, 5.5], [0.25, 5.5]]), "harbor", 1),
               DotaObject(np.array([[100, 100], [120, 110], [110, 130], [90, 120]]), "plane", 0)]
    path = tmp_path / "out" / "x.txt"
    write_dota_labels(path, objects, imagesource="GoogleEarth", gsd=0.5)
    labels = read_dota_labels(path, DOTA_V1_0)
    assert (labels.imagesource, labels.gsd) == ("GoogleEarth", 0.5)
    for read, written in zip(labels.objects, objects, strict=True):
        np.testing.assert_allclose(read.poly, written.poly, atol=0.005)
        assert (read.cls, read.difficult) == (written.cls, written.difficult)
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


def test_obb_poly_round_trip_follows_le90():
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(0, 1000, (200, 2)), rng.uniform(20, 90, 200), rng.uniform(2, 19, 200),
                             rng.uniform(-np.pi / 2, np.pi / 2, 200)])
    recovered = poly_to_obb(obb_to_poly(boxes))
    np.testing.assert_allclose(recovered, boxes, atol=1e-9)
    # the longer side is w whatever the corner order, and the angle wraps into [-pi/2, pi/2)
    upright = poly_to_obb(np.array([[0, 0], [4, 0], [4, 10], [0, 10]]))
    np.testing.assert_allclose(upright, [2, 5, 10, 4, -np.pi / 2])
    np.testing.assert_allclose(obb_to_poly(np.array([5, 2, 10, 4, 0])), [[0, 0], [10, 0], [10, 4], [0, 4]])


def test_poly_to_obb_of_general_quads_is_the_minimum_area_rectangle():
    rng = np.random.default_rng(1)
    quads = rng.uniform(0, 50, (100, 4, 2))
    obbs = poly_to_obb(quads)
    envelopes = shapely.oriented_envelope(shapely.multipoints(quads))
    np.testing.assert_allclose(obbs[:, 2] * obbs[:, 3], shapely.area(envelopes), rtol=1e-9)
    rect = shapely.polygons(obb_to_poly(obbs))
    assert shapely.covers(shapely.buffer(rect, 1e-6), shapely.multipoints(quads)).all()


def test_normalised_order_is_clockwise_on_screen_and_independent_of_the_input_start():
    rng = np.random.default_rng(2)
    quads = obb_to_poly(np.column_stack([rng.uniform(0, 100, (50, 2)), rng.uniform(20, 40, 50),
                                         rng.uniform(5, 19, 50), rng.uniform(-np.pi / 2, np.pi / 2, 50)]))
    reference = normalise_quads(quads)
    for start in range(4):
        for direction in (1, -1):
            order = [(start + direction * k) % 4 for k in range(4)]
            np.testing.assert_allclose(normalise_quads(quads[:, order]), reference)
    assert (signed_areas(reference) > 0).all()  # clockwise with y down
    np.testing.assert_allclose(normalise_quads(np.array([[10, 4], [0, 4], [0, 0], [10, 0]])),
                               [[0, 0], [10, 0], [10, 4], [0, 4]])


def test_polygon_to_dota_quad_for_box_diamond_and_degenerate_shapes():
    np.testing.assert_allclose(polygon_to_dota_quad(shapely.box(0, 0, 10, 4)), [[0, 0], [10, 0], [10, 4], [0, 4]])
    diamond = shapely.Polygon([(0, 5), (5, 10), (10, 5), (5, 0)])
    np.testing.assert_allclose(polygon_to_dota_quad(diamond), [[5, 0], [10, 5], [5, 10], [0, 5]], atol=1e-9)
    np.testing.assert_allclose(polygon_to_dota_quad(diamond.reverse()), polygon_to_dota_quad(diamond))
    with pytest.raises(UserError, match="degenerate"):
        polygon_to_dota_quad(shapely.LineString([(0, 0), (5, 5)]))
