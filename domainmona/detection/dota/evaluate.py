"""Full-image DOTA Task1 evaluation with DOTA_devkit's semantics, vectorised.

Devkit rules kept: detections of a class are ranked by score; each takes the ground truth it overlaps
most (exact polygon IoU) in its image; IoU > iou_thr on a difficult object (difficult != 0) is neither a
true nor a false positive; on an object already taken it is a false positive; below the threshold it
is a false positive. AP is VOC07 11-point ("voc07", the DOTA server's) or the area under the
precision envelope ("area"). Differences: ties in score keep file order (a stable sort), and classes
with no non-difficult ground truth get no AP and stay out of the mAP (the devkit divides by zero).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from domainmona.boxes.labels import read_dota_labels
from domainmona.detection.dota.merge import TASK1_PREFIX
from domainmona.detection.dota.polygon_iou import quad_pair_iou
from domainmona.errors import UserError

METRICS = ("voc07", "area")


@dataclass
class Task1Detections:
    """One class's detections: image names (N,), scores (N,), polygons (N, 4, 2), source line numbers."""

    images: np.ndarray
    scores: np.ndarray
    polys: np.ndarray
    lines: np.ndarray


@dataclass
class ClassResult:
    ap: float | None
    num_gts: int
    num_dets: int


@dataclass
class EvalResult:
    per_class: dict[str, ClassResult]
    map: float
    metric: str
    iou_thr: float

    def to_dict(self) -> dict:
        return {"mAP": self.map, "metric": self.metric, "iou_thr": self.iou_thr,
                "classes": {name: asdict(result) for name, result in self.per_class.items()}}


def _parse_task1(path: Path) -> Task1Detections:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read detections file {path}: {exc}") from None
    numbered = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    for number, tokens in numbered:
        if len(tokens) != 10:
            raise UserError(f"{path}:{number}: expected 'image score x1 y1 x2 y2 x3 y3 x4 y4', got {len(tokens)} fields")
    table = np.array([tokens for _, tokens in numbered], dtype=object).reshape(-1, 10)
    try:
        values = table[:, 1:].astype(np.float64)
    except ValueError:
        for number, tokens in numbered:
            try:
                [float(t) for t in tokens[1:]]
            except ValueError:
                raise UserError(f"{path}:{number}: score and coordinates must be numbers") from None
        raise
    if not np.isfinite(values).all():
        raise UserError(f"{path}:{numbered[int(np.argmin(np.isfinite(values).all(1)))][0]}: non-finite number")
    return Task1Detections(table[:, 0].astype(str), values[:, 0], values[:, 1:].reshape(-1, 4, 2),
                           np.array([number for number, _ in numbered], dtype=np.int64))


def read_task1(dets_dir: str | os.PathLike) -> dict[str, Task1Detections]:
    """Class name -> detections, from the `Task1_<class>.txt` files of a submission folder."""
    files = sorted(Path(dets_dir).glob(f"{TASK1_PREFIX}*.txt"))
    if not files:
        raise UserError(f"no {TASK1_PREFIX}<class>.txt files in {dets_dir}")
    return {file.stem[len(TASK1_PREFIX):]: _parse_task1(file) for file in files}


def task1_inputs(dets_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[Path]:
    """Every file `evaluate_task1` reads, so that an output can be checked not to be one of them."""
    return [*Path(dets_dir).glob(f"{TASK1_PREFIX}*.txt"), *Path(gt_dir).glob("*.txt")]


def average_precision(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    if metric == "voc07":
        # np.arange, not linspace: the devkit's thresholds (0.30000000000000004, ...) decide ties at 0.3, 0.6, 0.7
        return float(sum(precision[recall >= t].max(initial=0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11)
    recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


_MAX_PAIRS = 2_000_000  # same-image pairs held at once: bounds memory on images with thousands of objects


def _candidate_pairs(det_image: np.ndarray, gt_start: np.ndarray, gt_count: np.ndarray):
    """Every (detection, ground truth) pair of the same image; ground truths are grouped by image."""
    counts = gt_count[det_image]
    det_index = np.repeat(np.arange(len(det_image)), counts)
    first_pair = np.repeat(np.cumsum(counts) - counts, counts)
    gt_index = np.repeat(gt_start[det_image], counts) + np.arange(counts.sum()) - first_pair
    return det_index, gt_index


def _best_matches(det_image, det_polys, gt_polys, gt_start, gt_count):
    """Per detection, the highest IoU with a ground truth of its image (-1 if none) and which one (first
    in file order on ties), over chunks of detections."""
    best_iou = np.full(len(det_image), -1.0)
    best_gt = np.full(len(det_image), -1)
    lo_g, hi_g = gt_polys.min(axis=1), gt_polys.max(axis=1)
    pairs_before = np.concatenate([[0], np.cumsum(gt_count[det_image])])
    begin = 0
    while begin < len(det_image):
        end = max(begin + 1, int(np.searchsorted(pairs_before, pairs_before[begin] + _MAX_PAIRS, "right")) - 1)
        det_index, gt_index = _candidate_pairs(det_image[begin:end], gt_start, gt_count)
        polys = det_polys[begin:end]
        lo_d, hi_d = polys.min(axis=1)[det_index], polys.max(axis=1)[det_index]
        overlap = np.all(np.minimum(hi_d, hi_g[gt_index]) > np.maximum(lo_d, lo_g[gt_index]), axis=1)
        det_index, gt_index = det_index[overlap], gt_index[overlap]  # disjoint boxes have polygon IoU 0
        ious = quad_pair_iou(polys[det_index], gt_polys[gt_index])
        order = np.lexsort((gt_index, -ious, det_index))
        matched, first = np.unique(det_index[order], return_index=True)
        best_iou[begin + matched] = ious[order][first]
        best_gt[begin + matched] = gt_index[order][first]
        begin = end
    return best_iou, best_gt


def _true_false_positives(det_image, det_polys, gt_polys, gt_difficult, gt_start, gt_count, iou_thr):
    """tp, fp (N,) for detections already ranked by score, by the devkit's greedy rule."""
    best_iou, best_gt = _best_matches(det_image, det_polys, gt_polys, gt_start, gt_count)
    hit = best_iou > iou_thr
    ignored = np.zeros(len(det_image), dtype=bool)
    ignored[hit] = gt_difficult[best_gt[hit]]
    claims = np.flatnonzero(hit & ~ignored)
    _, first_claim = np.unique(best_gt[claims], return_index=True)
    tp = np.zeros(len(det_image))
    tp[claims[first_claim]] = 1
    fp = (~ignored).astype(np.float64) - tp
    return tp, fp


@dataclass
class _GroundTruth:
    """All objects of all images, grouped by image; images are sorted names."""

    images: np.ndarray
    image_of: np.ndarray
    classes: np.ndarray
    polys: np.ndarray
    difficult: np.ndarray


def _read_ground_truth(gt_dir: Path, classes: Sequence[str] | None) -> _GroundTruth:
    files = sorted(gt_dir.glob("*.txt"), key=lambda file: file.stem)
    if not files:
        raise UserError(f"no label files (*.txt) in {gt_dir}")
    objects = [(index, obj) for index, file in enumerate(files) for obj in read_dota_labels(file, classes).objects]
    return _GroundTruth(np.array([file.stem for file in files]), np.array([i for i, _ in objects], dtype=np.int64),
                        np.array([obj.cls for _, obj in objects], dtype=str),
                        np.array([obj.poly for _, obj in objects], dtype=np.float64).reshape(-1, 4, 2),
                        np.array([obj.difficult != 0 for _, obj in objects], dtype=bool))


def _image_indices(dets: Task1Detections, truth: _GroundTruth, where: Path) -> np.ndarray:
    index = np.minimum(np.searchsorted(truth.images, dets.images), len(truth.images) - 1)
    unknown = np.flatnonzero(truth.images[index] != dets.images)
    if len(unknown):
        raise UserError(f"{where}:{dets.lines[unknown[0]]}: image '{dets.images[unknown[0]]}' has no label file"
                        " in the ground-truth folder")
    return index


def _class_result(dets: Task1Detections, truth: _GroundTruth, name: str, where: Path, metric: str,
                  iou_thr: float) -> ClassResult:
    mine = truth.classes == name
    gt_count = np.bincount(truth.image_of[mine], minlength=len(truth.images))
    gt_start = np.cumsum(gt_count) - gt_count
    gt_difficult = truth.difficult[mine]
    rank = np.argsort(-dets.scores, kind="stable")
    det_image = _image_indices(dets, truth, where)[rank]
    tp, fp = _true_false_positives(det_image, dets.polys[rank], truth.polys[mine], gt_difficult, gt_start,
                                   gt_count, iou_thr)
    positives = int((~gt_difficult).sum())
    if not positives:
        return ClassResult(None, 0, len(dets.scores))
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    ap = average_precision(tp / positives, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), metric)
    return ClassResult(ap, positives, len(dets.scores))


def evaluate_task1(dets_dir: str | os.PathLike, gt_dir: str | os.PathLike, classes: Sequence[str] | None = None,
                   metric: str = "voc07", iou_thr: float = 0.5) -> EvalResult:
    """Per-class AP and mAP of a Task1 submission against full-image DOTA labels (`gt_dir/*.txt`).

    `classes` defaults to every class seen in the labels or the submission. `num_gts` counts the
    non-difficult objects.
    """
    if metric not in METRICS:
        raise UserError(f"metric must be one of {', '.join(METRICS)}, got '{metric}'")
    truth = _read_ground_truth(Path(gt_dir), classes)
    detections = read_task1(dets_dir)
    if classes is None:
        classes = sorted(set(truth.classes.tolist()) | set(detections))
    no_detections = Task1Detections(np.zeros(0, str), np.zeros(0), np.zeros((0, 4, 2)), np.zeros(0, np.int64))
    for name in detections:
        if name not in classes:
            raise UserError(f"{Path(dets_dir) / (TASK1_PREFIX + name + '.txt')}: class '{name}' is not evaluated")
    per_class = {}
    for name in classes:
        where = Path(dets_dir) / f"{TASK1_PREFIX}{name}.txt"
        per_class[name] = _class_result(detections.get(name, no_detections), truth, name, where, metric, iou_thr)

    scored = [result.ap for result in per_class.values() if result.ap is not None]
    if not scored:
        raise UserError(f"no class has a non-difficult ground-truth object in {gt_dir}")
    return EvalResult(per_class, float(np.mean(scored)), metric, iou_thr)
