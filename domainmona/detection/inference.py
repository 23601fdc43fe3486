"""`domainmona test dota|star`: full scenes -> patches -> fused-Mona inference -> merged Task1 files -> mAP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from domainmona.detection.layout import find_test_scenes
from domainmona.io import atomic_path


@dataclass
class TestResult:
    task1_dir: Path
    zip_path: Path
    map: float | None  # full-image mAP, when the scenes have labels
    merged: dict  # image name -> merged Detections (le90 boxes in image pixels)
    scenes: Path  # the folder holding the scenes' images/


def run_test(checkpoint: Path, data: Path, out: Path, iou_thr: float = 0.1, dataset: str = 'dota') -> TestResult:
    """Test a final checkpoint (see domainmona.detection.checkpoint; `dataset` only matters for official
    `.pth` checkpoints) on the full scenes of `data`."""
    from mmengine.config import Config

    from domainmona.adapters import fuse
    from domainmona.detection.checkpoint import load_detector
    from domainmona.detection.dota.merge import merge_patch_detections, write_task1, zip_task1
    from domainmona.detection.dota.split import split_dataset
    from domainmona.detection.predict import predict_patches

    model, info = load_detector(checkpoint, dataset)
    fuse(model)
    scenes, labels = find_test_scenes(data)
    cfg = Config.fromstring(info.config_text, file_format='.py')
    patches = out / 'patches'
    split_dataset(scenes, patches, size=info.patch_size, gap=info.patch_gap, rates=(1.0,), classes=info.classes)
    patch_dets = dict(predict_patches(model, cfg, patches / 'images'))
    merged = merge_patch_detections(patch_dets, iou_thr)
    task1_dir = out / 'task1'
    write_task1(task1_dir, merged, info.classes)
    zip_path = zip_task1(task1_dir, out / 'task1.zip')
    mean_ap = None
    if labels is not None:
        from domainmona.detection.dota.evaluate import evaluate_task1

        result = evaluate_task1(task1_dir, labels, classes=info.classes)
        mean_ap = float(result.map)
        with atomic_path(out / 'metrics.json') as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=2))
    return TestResult(task1_dir, zip_path, mean_ap, merged, scenes)
