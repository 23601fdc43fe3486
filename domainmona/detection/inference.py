"""`domainmona test dota|star`: full scenes -> patches -> merged/fused-adapter inference -> merged Task1 files -> mAP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from domainmona.detection.layout import find_test_scenes, refuse_overlap
from domainmona.errors import UserError
from domainmona.io import check_parent, check_replaceable, claim_dir, claim_file, write_json


@dataclass
class TestResult:
    task1_dir: Path
    zip_path: Path
    map: float | None  # full-image mAP, when the scenes have labels
    merged: dict  # image name -> merged Detections (le90 boxes in image pixels)
    scenes: Path  # the folder holding the scenes' images/


def run_test(checkpoint: Path, data: Path, out: Path, iou_thr: float = 0.1, dataset: str = 'dota',
             runtime: str = 'torch', onnx_model: Path | None = None) -> TestResult:
    """Test a final checkpoint (see domainmona.detection.checkpoint; `dataset` only matters for official
    `.pth` checkpoints) on the full scenes of `data`; with `runtime` 'onnx', `onnx_model` (its export) runs
    the network and everything else stays the same.

    `out` receives `patches/`, `task1/`, `task1.zip` and `metrics.json`; all of it is checked before the
    model runs: no input inside it, nothing there that domainmona did not write.
    """
    from domainmona.adapters import prepare_for_inference
    from domainmona.detection.checkpoint import load_detector
    from domainmona.detection.dota.merge import (TASK1_WRITER, is_task1_zip, merge_patch_detections, write_task1,
                                                 zip_task1)
    from domainmona.detection.dota.split import read_split_inputs, split_dataset
    from domainmona.detection.predict import onnx_detector, predict_patches
    from domainmona.export import onnx_files

    if not 0.0 <= iou_thr <= 1.0:  # NaN fails too
        raise UserError(f"--iou-thr must be between 0 and 1, got {iou_thr}")
    scenes, labels = find_test_scenes(data)
    patches, task1_dir, zip_path, metrics = out / 'patches', out / 'task1', out / 'task1.zip', out / 'metrics.json'
    refuse_overlap([patches, task1_dir, zip_path, metrics],
                   [scenes / 'images', *([labels] if labels else []), checkpoint, *onnx_files(onnx_model)])
    check_parent(out, '--out')
    if out.exists():  # a rerun: what it replaces must be its own
        claim_dir(out, 'test')
        check_replaceable(task1_dir, TASK1_WRITER)
        claim_file(zip_path, is_ours=is_task1_zip, what='--out')
        claim_file(metrics, what='--out')
    model, info = onnx_detector(runtime, onnx_model, checkpoint)
    if model is None:
        model, info = load_detector(checkpoint, dataset)
        prepare_for_inference(model)  # mergeable updates folded, Mona fused: the plain detector's cost
    read_split_inputs(scenes, info.classes, patches)  # bad labels or images: refused before anything is written
    cfg = info.config(checkpoint)
    claim_dir(out, 'test')
    split_dataset(scenes, patches, size=info.patch_size, gap=info.patch_gap, rates=(1.0,), classes=info.classes)
    patch_dets = dict(predict_patches(model, cfg, patches / 'images'))
    merged = merge_patch_detections(patch_dets, iou_thr)
    write_task1(task1_dir, merged, info.classes)
    zip_task1(task1_dir, zip_path)
    mean_ap = None
    if labels is not None:
        from domainmona.detection.dota.evaluate import evaluate_task1

        result = evaluate_task1(task1_dir, labels, classes=info.classes)
        mean_ap = float(result.map)
        write_json(metrics, result.to_dict())
    return TestResult(task1_dir, zip_path, mean_ap, merged, scenes)

