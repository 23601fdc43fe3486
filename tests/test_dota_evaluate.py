"""The Task1 evaluator on hand-computable cases, and its exact polygon IoU."""

import numpy as np
import pytest
import shapely

from domainmona.detection.dota import evaluate
from domainmona.detection.dota.evaluate import average_precision, evaluate_task1
from domainmona.detection.dota.polygon_iou import is_convex, quad_pair_iou
from domainmona.errors import UserError


def _quad(x0, y0, x1, y1):
    return f"{x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1}"


def _write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / name).write_text("".join(f"{line}\n" for line in lines))
    return folder


@pytest.fixture
def hand_case(tmp_path):
    """2 positives and 1 difficult car; 4 ranked detections: TP, FP (nothing there), ignored (difficult), TP."""
    gt = _write(tmp_path / "gt", {"img1.txt": ["imagesource:GoogleEarth", "gsd:0.5", f"{_quad(0, 0, 10, 10)} car 0",
                                               f"{_quad(20, 0, 30, 10)} car 0", f"{_quad(40, 40, 50, 50)} car 1"],
                                  "img2.txt": [f"{_quad(0, 0, 10, 10)} plane 0"]})
    dets = _write(tmp_path / "dets", {"Task1_car.txt": [f"img1 0.9 {_quad(0, 0, 10, 10)}",
                                                        f"img1 0.8 {_quad(100, 100, 110, 110)}",
                                                        f"img1 0.75 {_quad(40, 40, 50, 50)}",
                                                        f"img1 0.7 {_quad(21, 0, 30, 10)}"]})
    return dets, gt


def test_hand_case_voc07_and_area(hand_case):
    dets, gt = hand_case
    # ranked: TP (rec .5, prec 1), FP (.5, .5), ignored, TP (1, 2/3)
    voc07 = evaluate_task1(dets, gt, metric="voc07")
    assert voc07.per_class["car"].ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    area = evaluate_task1(dets, gt, metric="area")
    assert area.per_class["car"].ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert (area.per_class["car"].num_gts, area.per_class["car"].num_dets) == (2, 4)
    # plane has a ground truth and no Task1 file: AP 0, and it counts in the mAP
    assert area.per_class["plane"].ap == 0 and area.map == pytest.approx((0.5 + 1 / 3) / 2)


def test_duplicates_are_false_positives_and_iou_must_exceed_the_threshold(tmp_path):
    gt = _write(tmp_path / "gt", {"a.txt": [f"{_quad(0, 0, 10, 10)} ship 0", f"{_quad(50, 0, 60, 10)} ship 0"]})
    dets = _write(tmp_path / "dets", {"Task1_ship.txt": [
        f"a 0.9 {_quad(0, 0, 10, 10)}",  # TP
        f"a 0.8 {_quad(0, 0, 10, 9)}",  # same object again: FP
        f"a 0.7 {_quad(50, 0, 60, 5)}",  # IoU exactly 0.5 is not a match (devkit: IoU > 0.5): FP
        f"a 0.6 {_quad(50, 0, 60, 6)}"]})  # IoU 0.6: TP
    # precision 1, 1/2, 1/3, 1/2 at recall .5, .5, .5, 1
    result = evaluate_task1(dets, gt, metric="area")
    assert result.per_class["ship"].ap == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    stricter = evaluate_task1(dets, gt, metric="area", iou_thr=0.65)
    assert stricter.per_class["ship"].ap == pytest.approx(0.5)


def test_classes_without_positives_are_left_out_of_the_map(tmp_path):
    gt = _write(tmp_path / "gt", {"a.txt": [f"{_quad(0, 0, 10, 10)} ship 0", f"{_quad(20, 20, 30, 30)} plane 2"]})
    dets = _write(tmp_path / "dets", {"Task1_ship.txt": [f"a 0.5 {_quad(0, 0, 10, 10)}"],
                                      "Task1_plane.txt": [f"a 0.5 {_quad(20, 20, 30, 30)}"]})
    result = evaluate_task1(dets, gt, classes=("ship", "plane", "harbor"))
    assert result.per_class["plane"].ap is None and result.per_class["harbor"].ap is None
    assert result.map == 1.0
    assert result.to_dict()["classes"]["ship"] == {"ap": 1.0, "num_gts": 1, "num_dets": 1}


def test_chunked_matching_gives_the_same_numbers(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    gt_lines, det_lines = {}, []
    for image in range(5):
        boxes = rng.uniform(0, 200, (30, 2))
        gt_lines[f"i{image}.txt"] = [f"{_quad(x, y, x + 12, y + 8)} car {int(rng.integers(0, 2))}" for x, y in boxes]
        det_lines += [f"i{image} {rng.uniform():.4f} {_quad(x + dx, y + dy, x + 12, y + 8)}"
                      for (x, y), (dx, dy) in zip(boxes, rng.uniform(-3, 3, (30, 2)), strict=True)]
    gt = _write(tmp_path / "gt", gt_lines)
    dets = _write(tmp_path / "dets", {"Task1_car.txt": det_lines})
    whole = evaluate_task1(dets, gt, metric="area")
    monkeypatch.setattr(evaluate, "_MAX_PAIRS", 7)
    assert evaluate_task1(dets, gt, metric="area").per_class == whole.per_class
    assert 0.2 < whole.map < 1


def test_eleven_point_and_area_ap_on_a_textbook_curve():
    recall, precision = np.array([0.2, 0.4, 0.4, 0.8]), np.array([1.0, 1.0, 0.5, 0.8])
    assert average_precision(recall, precision, "voc07") == pytest.approx((5 * 1 + 4 * 0.8) / 11)
    assert average_precision(recall, precision, "area") == pytest.approx(0.4 * 1 + 0.4 * 0.8)
    assert average_precision(np.zeros(0), np.zeros(0), "voc07") == 0


def test_quad_iou_matches_shapely_for_convex_concave_and_bowtie_quads():
    rng = np.random.default_rng(1)
    rectangles = np.array([[0, 0], [30, 0], [30, 12], [0, 12]], float) + rng.uniform(0, 4000, (2000, 1, 2))
    a = np.concatenate([rectangles + rng.normal(0, 1, (2000, 4, 2)),  # mostly convex
                        rng.uniform(0, 30, (2000, 4, 2)) + rectangles[:, :1]])  # concave and bow-ties too
    b = np.concatenate([rectangles, rectangles]) + rng.normal(0, 4, (4000, 4, 2))
    first, second = shapely.make_valid(shapely.polygons(a)), shapely.make_valid(shapely.polygons(b))
    inter = shapely.area(shapely.intersection(first, second))
    expected = inter / (shapely.area(first) + shapely.area(second) - inter)
    convex = is_convex(a) & is_convex(b)
    assert convex.sum() > 1000 and (~is_convex(a)).sum() > 500 and (~shapely.is_valid(shapely.polygons(a))).sum() > 200
    assert (expected > 0.3).sum() > 1000
    np.testing.assert_allclose(quad_pair_iou(a, b), expected, atol=1e-9)
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    np.testing.assert_allclose(quad_pair_iou(square[None], square[None, ::-1] + [5, 0]), [1 / 3])


def test_bad_submissions_name_file_and_line(tmp_path, hand_case):
    dets, gt = hand_case
    (dets / "Task1_car.txt").write_text(f"img1 0.9 {_quad(0, 0, 10, 10)}\nimg9 0.8 {_quad(0, 0, 1, 1)}\n")
    with pytest.raises(UserError, match=r"Task1_car.txt:2: image 'img9' has no label file"):
        evaluate_task1(dets, gt)
    (dets / "Task1_car.txt").write_text(f"img1 0.9 {_quad(0, 0, 10, 10)}\n\nimg1 high {_quad(0, 0, 1, 1)}\n")
    with pytest.raises(UserError, match=r"Task1_car.txt:3: score and coordinates must be numbers"):
        evaluate_task1(dets, gt)
    (dets / "Task1_car.txt").write_text("img1 0.9 1 2 3\n")
    with pytest.raises(UserError, match=r"Task1_car.txt:1: expected"):
        evaluate_task1(dets, gt)
    (dets / "Task1_car.txt").unlink()
    with pytest.raises(UserError, match="no Task1_"):
        evaluate_task1(dets, gt)
    with pytest.raises(UserError, match="metric"):
        evaluate_task1(dets, gt, metric="coco")
