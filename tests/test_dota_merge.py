"""Merging patch detections to full images with mmcv's rotated NMS, and the Task1 files."""

import zipfile

import numpy as np
import pytest
import torch

from domainmona.detection.dota.evaluate import evaluate_task1, read_task1
from domainmona.detection.dota.labels import DotaObject, obb_to_poly, poly_to_obb, write_dota_labels
from domainmona.detection.dota.merge import Detections, merge_patch_detections, write_task1, zip_task1
from domainmona.errors import UserError

CLASSES = ("car", "ship")


def test_le90_conventions_agree_with_mmrotate():
    from mmrotate.structures.bbox import RotatedBoxes, rbox2qbox

    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(0, 500, (100, 2)), rng.uniform(1, 60, (100, 2)), rng.uniform(-4, 4, 100)])
    theirs = rbox2qbox(torch.from_numpy(boxes)).numpy().reshape(-1, 4, 2)
    mine = obb_to_poly(boxes)
    for corners_mine, corners_theirs in zip(mine, theirs, strict=True):  # same corners, in another order
        assert np.abs(corners_mine[:, None] - corners_theirs[None]).sum(-1).min(1).max() < 1e-9
    regular = RotatedBoxes(torch.from_numpy(boxes)).regularize_boxes(pattern="le90").numpy()
    recovered = poly_to_obb(mine)
    square = np.isclose(boxes[:, 2], boxes[:, 3])
    np.testing.assert_allclose(recovered[~square], regular[~square], atol=1e-7)


def test_overlapping_patches_merge_class_by_class_and_rates_scale_back():
    patch_dets = {
        # the same car seen by two patches 800 px apart: one box survives, the better one
        "img__1000__0___0": ([[950, 500, 40, 20, 0.1]], [0.9], [0]),
        "img__1000__800___0": ([[151, 501, 40, 20, 0.12], [151, 501, 40, 20, 0.12]], [0.6, 0.8], [0, 1]),
        # half-resolution patch: its coordinates double on the full image
        "img__0.5__100___0": ([[300, 100, 30, 10, 0.0]], [0.7], [1]),
        "other__1000__0___0": (np.zeros((0, 5)), [], []),
    }
    merged = merge_patch_detections(patch_dets, iou_thr=0.1)
    assert set(merged) == {"img", "other"} and len(merged["other"]) == 0
    img = merged["img"]
    np.testing.assert_allclose(img.scores, [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(img.labels, [0, 1, 1])
    np.testing.assert_allclose(img.boxes, [[950, 500, 40, 20, 0.1], [951, 501, 40, 20, 0.12],
                                           [800, 200, 60, 20, 0.0]])


def test_suppression_follows_the_iou_threshold():
    # two 20 x 10 boxes shifted by 10 px along x: IoU = 100 / 300 = 1/3
    dets = ([[100, 100, 20, 10, 0], [110, 100, 20, 10, 0]], [0.9, 0.5], [0, 0])
    assert len(merge_patch_detections({"a__100__0___0": dets}, iou_thr=0.3)["a"]) == 1
    assert len(merge_patch_detections({"a__100__0___0": dets}, iou_thr=0.4)["a"]) == 2


def test_polygon_input_equals_box_input():
    boxes = np.array([[50, 60, 30, 10, 0.3], [52, 61, 30, 10, 0.3], [200, 60, 30, 12, -1.0]])
    from_boxes = merge_patch_detections({"a__512__0___0": Detections.of(boxes, [0.5, 0.6, 0.7], [0, 0, 1])})
    from_polys = merge_patch_detections({"a__512__0___0": (obb_to_poly(boxes).reshape(-1, 8), [0.5, 0.6, 0.7],
                                                          [0, 0, 1])})
    np.testing.assert_allclose(from_polys["a"].boxes, from_boxes["a"].boxes, atol=1e-9)
    with pytest.raises(UserError, match="disagree"):
        Detections.of(boxes, [0.5], [0, 0, 1])


def test_task1_files_zip_and_perfect_detections_score_one(tmp_path):
    boxes = np.array([[50, 60, 30, 10, 0.3], [200, 60, 30, 12, -1.0]])
    merged = {"P0001": Detections.of(boxes, [0.9, 0.8], [0, 1]), "P0002": Detections.of(np.zeros((0, 5)), [], [])}
    files = write_task1(tmp_path / "task1", merged, CLASSES)
    assert [f.name for f in files] == ["Task1_car.txt", "Task1_ship.txt"]
    line = (tmp_path / "task1" / "Task1_car.txt").read_text().splitlines()
    assert len(line) == 1 and line[0].startswith("P0001 0.900000 ")
    assert (tmp_path / "task1" / ".domainmona.json").is_file()  # the folder's record, which is not zipped
    zip_path = zip_task1(tmp_path / "task1", tmp_path / "submission.zip")
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["Task1_car.txt", "Task1_ship.txt"]
    read = read_task1(tmp_path / "task1")
    np.testing.assert_allclose(read["ship"].polys[0], obb_to_poly(boxes[1]), atol=0.006)

    for image, index in (("P0001", [0, 1]), ("P0002", [])):
        write_dota_labels(tmp_path / "gt" / f"{image}.txt",
                          [DotaObject(obb_to_poly(boxes[i]), CLASSES[i], 0) for i in index])
    result = evaluate_task1(tmp_path / "task1", tmp_path / "gt", classes=CLASSES)
    assert result.map == pytest.approx(1.0)

    write_task1(tmp_path / "task1", {"P0003": merged["P0001"]}, CLASSES)  # replaces the earlier submission
    assert "P0001" not in (tmp_path / "task1" / "Task1_car.txt").read_text()
    (tmp_path / "task1" / "notes.md").write_text("mine")
    with pytest.raises(UserError, match="notes.md"):
        write_task1(tmp_path / "task1", merged, CLASSES)
    with pytest.raises(UserError, match="outside the 1 classes"):
        write_task1(tmp_path / "other", merged, CLASSES[:1])
