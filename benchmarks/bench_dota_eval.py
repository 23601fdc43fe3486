"""Vectorised Task1 evaluator vs a straightforward shapely evaluator on the same generated submission.

The reference below is written the way DOTA_devkit's `dota_evaluation_task1.py` works (one detection at a
time, axis-aligned pre-filter, then polygon IoU), with shapely polygons for the IoU. Both evaluators
must give identical per-class APs; the result table goes to benchmarks/results/dota_eval.md.

    .venv/bin/python benchmarks/bench_dota_eval.py [--images 80] [--objects 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from domainmona.detection.classes import DOTA_V1_0
from domainmona.detection.dota.evaluate import evaluate_task1
from domainmona.detection.dota.labels import DotaObject, obb_to_poly, poly_to_obb, write_dota_labels

from report import machine, write_markdown

RESULTS = Path(__file__).parent / "results" / "dota_eval.md"


def generate(root: Path, images: int, objects: int, seed: int) -> tuple[int, int]:
    """Ground truth: general quads (jittered rotated rectangles, some concave), 10% difficult.
    Detections: most objects found with a noisy rotated box and a score that tracks the noise,
    duplicates, and false positives."""
    rng = np.random.default_rng(seed)
    task1 = defaultdict(list)
    gt_total = 0
    for index in range(images):
        name = f"P{index:04d}"
        count = int(rng.integers(objects // 2, objects * 3 // 2))
        classes = rng.integers(0, len(DOTA_V1_0), count)
        boxes = np.column_stack([rng.uniform(0, 4000, (count, 2)), rng.uniform(10, 120, count),
                                 rng.uniform(6, 40, count), rng.uniform(-np.pi / 2, np.pi / 2, count)])
        quads = obb_to_poly(boxes) + rng.normal(0, 1.0, (count, 4, 2))
        dart = rng.uniform(size=count) < 0.05  # corner 0 pushed past the diagonal 1-3: a concave arrowhead
        centre = quads[dart].mean(axis=1)
        quads[dart, 0] = centre + 0.3 * (quads[dart, 2] - centre)
        difficult = (rng.uniform(size=count) < 0.1).astype(int)
        write_dota_labels(root / "gt" / f"{name}.txt",
                          [DotaObject(q, DOTA_V1_0[c], d) for q, c, d in zip(quads, classes, difficult, strict=True)],
                          imagesource="GoogleEarth", gsd=0.3)
        gt_total += count
        found = rng.uniform(size=count) < 0.85
        noise = rng.normal(0, 1, (count, 5)) * [2, 2, 4, 1.5, 0.04]
        detected = poly_to_obb(quads) + noise
        scores = np.clip(1 - np.abs(noise).sum(1) / 20 + rng.normal(0, 0.1, count), 0.01, 1)
        duplicate = rng.uniform(size=count) < 0.1
        rows = [(c, s, b) for c, s, b, f in zip(classes, scores, detected, found, strict=True) if f]
        rows += [(c, s * 0.7, b + [3, 3, 0, 0, 0.05]) for c, s, b, d in zip(classes, scores, detected, duplicate,
                                                                             strict=True) if d]
        false = int(count * 0.3)
        rows += [(int(rng.integers(0, len(DOTA_V1_0))), float(rng.uniform(0, 0.6)),
                  np.array([*rng.uniform(0, 4000, 2), rng.uniform(10, 120), rng.uniform(6, 40), rng.uniform(-1.5, 1.5)]))
                 for _ in range(false)]
        for cls, score, box in rows:
            task1[DOTA_V1_0[cls]].append(f"{name} {score:.6f} " + " ".join(f"{v:.2f}" for v in obb_to_poly(box).ravel()))
    (root / "dets").mkdir(parents=True)
    for cls in DOTA_V1_0:
        (root / "dets" / f"Task1_{cls}.txt").write_text("".join(f"{line}\n" for line in task1[cls]))
    return gt_total, sum(len(v) for v in task1.values())


def reference_evaluate(dets_dir: Path, gt_dir: Path, metric: str, iou_thr: float = 0.5) -> dict[str, float]:
    """The devkit's algorithm, one detection at a time, IoU from shapely polygons."""
    truth = defaultdict(lambda: defaultdict(list))
    for file in sorted(gt_dir.glob("*.txt")):
        for line in file.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 9 and ":" not in line:
                truth[parts[8]][file.stem].append((np.array(parts[:8], float).reshape(4, 2), parts[9] != "0"))
    aps = {}
    for cls in DOTA_V1_0:
        records = {image: {"polys": [p for p, _ in objs], "difficult": np.array([d for _, d in objs]),
                           "taken": np.zeros(len(objs), bool)} for image, objs in truth[cls].items()}
        positives = sum(int((~r["difficult"]).sum()) for r in records.values())
        lines = [line.split() for line in (dets_dir / f"Task1_{cls}.txt").read_text().splitlines() if line.strip()]
        scores = np.array([float(parts[1]) for parts in lines])
        order = np.argsort(-scores, kind="stable")
        tp, fp = np.zeros(len(lines)), np.zeros(len(lines))
        for rank, index in enumerate(order):
            image, poly = lines[index][0], np.array(lines[index][2:], float).reshape(4, 2)
            record = records.get(image)
            best, best_j = -1.0, -1
            if record is not None:
                det_polygon = Polygon(poly)
                for j, gt_poly in enumerate(record["polys"]):
                    if (min(poly[:, 0].max(), gt_poly[:, 0].max()) <= max(poly[:, 0].min(), gt_poly[:, 0].min()) or
                            min(poly[:, 1].max(), gt_poly[:, 1].max()) <= max(poly[:, 1].min(), gt_poly[:, 1].min())):
                        continue
                    gt_polygon = Polygon(gt_poly)
                    inter = det_polygon.intersection(gt_polygon).area
                    iou = inter / (det_polygon.area + gt_polygon.area - inter)
                    if iou > best:
                        best, best_j = iou, j
            if best > iou_thr:
                if not record["difficult"][best_j]:
                    if record["taken"][best_j]:
                        fp[rank] = 1
                    else:
                        tp[rank], record["taken"][best_j] = 1, True
            else:
                fp[rank] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall, precision = tp / positives, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if metric == "voc07":
            aps[cls] = float(sum(precision[recall >= t].max(initial=0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11)
        else:
            mrec = np.concatenate([[0.0], recall, [1.0]])
            mpre = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
            steps = np.flatnonzero(mrec[1:] != mrec[:-1])
            aps[cls] = float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    return aps


def _timed(function, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--objects", type=int, default=200, help="mean ground-truth objects per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gts, dets = generate(root, args.images, args.objects, args.seed)
        for metric in ("voc07", "area"):
            ours_s, ours = _timed(lambda: evaluate_task1(root / "dets", root / "gt", DOTA_V1_0, metric=metric), 3)
            ref_s, ref = _timed(lambda: reference_evaluate(root / "dets", root / "gt", metric), 1)
            diff = max(abs(ours.per_class[c].ap - ref[c]) for c in DOTA_V1_0)
            rows.append((metric, ours.map, float(np.mean(list(ref.values()))), diff, ours_s, ref_s))
            print(f"{metric}: mAP {ours.map:.6f} (reference {np.mean(list(ref.values())):.6f}, max AP diff {diff:.1e}); "
                  f"{ours_s:.2f} s vs {ref_s:.2f} s = {ref_s / ours_s:.1f}x")
    lines = ["# DOTA Task1 evaluation: vectorised vs straightforward shapely evaluator", "",
             f"Generated by `benchmarks/bench_dota_eval.py --images {args.images} --objects {args.objects} "
             f"--seed {args.seed}`: {gts} ground-truth quads (15 DOTA v1.0 classes, 10% difficult, 5% concave), "
             f"{dets} detections. Both evaluators read the same files; timings include parsing "
             f"(ours: best of 3; reference: 1 run). Machine: {machine()}, "
             "shared CPU, single process.", "",
             "| metric | mAP (ours) | mAP (reference) | max per-class AP difference | ours (s) | reference (s) | speed-up |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {a:.6f} | {b:.6f} | {d:.1e} | {o:.2f} | {r:.2f} | {r / o:.1f}x |" for m, a, b, d, o, r in rows]
    write_markdown(RESULTS, lines)


if __name__ == "__main__":
    main()
