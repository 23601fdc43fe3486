"""Patch detections -> full-image detections (rotated NMS) -> DOTA Task1 submission files and zip.

`Detections` lives in `domainmona.boxes` (numpy only); it is re-exported here for the imports that name
this module.
"""

from __future__ import annotations

import os
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from domainmona.boxes.detections import Detections
from domainmona.boxes.geometry import obb_to_poly
from domainmona.errors import UserError
from domainmona.io import atomic_dir, atomic_path
from domainmona.tiling import parse_patch_name

TASK1_PREFIX = "Task1_"
TASK1_WRITER = "task1"  # the command name in a submission folder's record (`domainmona.io.atomic_dir`)


def _as_detections(dets: "Detections | tuple") -> Detections:
    return dets if isinstance(dets, Detections) else Detections.of(*dets)


def _class_wise_nms(dets: Detections, iou_thr: float) -> Detections:
    """mmcv's compiled nms_rotated (exact rotated-rectangle IoU); its CPU kernel ignores `labels`, so
    classes are suppressed one at a time."""
    import torch
    from mmcv.ops import nms_rotated

    keep = []
    for label in np.unique(dets.labels):
        index = np.flatnonzero(dets.labels == label)
        _, kept = nms_rotated(torch.from_numpy(dets.boxes[index]), torch.from_numpy(dets.scores[index]), iou_thr)
        keep.append(index[kept.numpy()])
    order = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    order = order[np.argsort(-dets.scores[order], kind="stable")]
    return Detections(dets.boxes[order], dets.scores[order], dets.labels[order])


def merge_patch_detections(patch_dets: Mapping[str, "Detections | tuple"], iou_thr: float = 0.1
                           ) -> dict[str, Detections]:
    """Map each patch's detections (keyed by patch name, in patch pixels) to its full image, divided by
    the patch's rate, and suppress duplicates from overlapping patches class by class.

    Values are `Detections` or `(boxes, scores, labels)` tuples. Returns image name -> detections sorted
    by score; every image with at least one patch appears, possibly with no detections.
    """
    per_image: dict[str, list[Detections]] = defaultdict(list)
    for name, dets in patch_dets.items():
        patch = parse_patch_name(name)
        dets = _as_detections(dets)
        boxes = dets.boxes.copy()
        boxes[:, :2] = (boxes[:, :2] + (patch.x, patch.y)) / patch.rate
        boxes[:, 2:4] /= patch.rate
        per_image[patch.image].append(Detections(boxes, dets.scores, dets.labels))
    return {image: _class_wise_nms(Detections(np.concatenate([d.boxes for d in parts]).reshape(-1, 5),
                                              np.concatenate([d.scores for d in parts]),
                                              np.concatenate([d.labels for d in parts])), iou_thr)
            for image, parts in per_image.items()}


def write_task1(out_dir: str | os.PathLike, merged: Mapping[str, Detections], classes: Sequence[str]) -> list[Path]:
    """Write `Task1_<class>.txt` for every class (lines `image score x1 y1 ... x4 y4`), all at once; an
    existing `out_dir` is replaced only if it is an earlier submission holding nothing else (`atomic_dir`)."""
    out_dir = Path(out_dir)
    lines: dict[int, list[str]] = {index: [] for index in range(len(classes))}
    for image in sorted(merged):
        dets = _as_detections(merged[image])
        if len(dets) and (dets.labels.min() < 0 or dets.labels.max() >= len(classes)):
            raise UserError(f"image {image}: class index {dets.labels.max()} outside the {len(classes)} classes")
        polys = obb_to_poly(dets.boxes).reshape(-1, 8)
        for label, score, poly in zip(dets.labels, dets.scores, polys, strict=True):
            lines[int(label)].append(f"{image} {score:.6f} " + " ".join(f"{c:.2f}" for c in poly))
    with atomic_dir(out_dir, TASK1_WRITER) as tmp:
        for index, name in enumerate(classes):
            (tmp / f"{TASK1_PREFIX}{name}.txt").write_text("".join(f"{line}\n" for line in lines[index]),
                                                          encoding="utf-8")
    return [out_dir / f"{TASK1_PREFIX}{name}.txt" for name in classes]


def zip_task1(out_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip the Task1 files of `out_dir` flat, as the DOTA evaluation server expects (only those: not the
    folder's `.domainmona.json` record)."""
    files = sorted(Path(out_dir).glob(f"{TASK1_PREFIX}*.txt"))
    if not files:
        raise UserError(f"no {TASK1_PREFIX}*.txt files in {out_dir}")
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.name)
    return Path(zip_path)


def is_task1_zip(path: Path) -> bool:
    """A zip of Task1 files only, as `zip_task1` writes: one a rerun may replace."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return bool(names) and all(name.startswith(TASK1_PREFIX) and "/" not in name for name in names)
