"""`domainmona export` of rotated-box detectors: two graphs + numpy glue (domainmona.onnx_detector) whose
detections after NMS match torch's one to one (IoU >= 0.99, score within 1e-4, same label), also in a
process where torch and mmcv cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_export import _cli, _refused

IOU, SCORE = 0.99, 1e-4


def detector_checkpoint(root: Path, method: str) -> Path:
    """A micro Oriented R-CNN with ``method``'s adapters, every trainable tensor perturbed so that merging and
    fusing have something to fold, saved as `train` saves it."""
    from domainmona.adapters.backbones.swin import MICRO_WEIGHTS
    from domainmona.detection import config as C
    from domainmona.detection.checkpoint import DetectorInfo, _build, save_detector
    from domainmona.detection.synthetic import SYNTHETIC_CLASSES

    path = root / f"{method}.safetensors"
    if not path.exists():
        cfg = C.build_config("synthetic", "micro", method, SYNTHETIC_CLASSES, weights=str(MICRO_WEIGHTS),
                             image_size=256)
        torch.manual_seed(0)
        model = _build(cfg)
        for p in model.parameters():
            if p.requires_grad:
                p.data.add_(torch.randn_like(p) * 0.02)
        save_detector(model, DetectorInfo(cfg.pretty_text, SYNTHETIC_CLASSES, 256, 64), path)
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from domainmona.detection.synthetic import generate_dota_scenes

    root = tmp_path_factory.mktemp("scenes")
    generate_dota_scenes(root, 2, 256, seed=3, objects_per_image=(6, 10))
    return root / "images"


def torch_and_onnx(checkpoint: Path, model_path: Path, images: Path):
    """Per image: (torch's detections, the exported detector's, the packed input)."""
    from domainmona.detection.export import load_for_export
    from domainmona.detection.predict import patch_loader
    from domainmona.onnx_detector import OnnxDetector

    model, _, cfg = load_for_export(checkpoint)
    detector = OnnxDetector(model_path)
    results = []
    with torch.no_grad():
        for batch in patch_loader(cfg, images):
            pred = model.test_step(batch)[0].pred_instances
            boxes = getattr(pred.bboxes, "tensor", pred.bboxes).numpy()
            image = batch["inputs"][0].numpy()
            ours = detector.detect(image, batch["data_samples"][0].scale_factor[0])
            results.append(((boxes, pred.scores.numpy(), pred.labels.numpy()), ours, image))
    return results


def assert_matched(expected, got) -> tuple[float, float]:
    """Every detection matched to one of the other side's with the same label (best IoU first: equal scores
    may sort either way); returns (lowest IoU, largest score difference)."""
    from domainmona.detection.rotated_ops import box_iou_rotated

    (boxes, scores, labels), (boxes2, scores2, labels2) = expected, got
    assert len(boxes) == len(boxes2) and len(boxes) > 0
    # in double: in float32 two boxes equal to 1e-5 px can score 1/3 (near-coincident edges)
    ious = box_iou_rotated(torch.from_numpy(boxes).double(), torch.from_numpy(np.ascontiguousarray(boxes2)).double())
    ious = ious.numpy()
    ious[labels[:, None] != labels2[None]] = -1
    free = np.ones(len(boxes2), bool)
    worst_iou, worst_score = 1.0, 0.0
    for i in np.argsort(-ious.max(1), kind="stable"):
        j = int(np.argmax(np.where(free, ious[i], -2)))
        free[j] = False
        worst_iou, worst_score = min(worst_iou, float(ious[i, j])), max(worst_score, abs(float(scores[i] - scores2[j])))
    assert worst_iou >= IOU and worst_score <= SCORE, (worst_iou, worst_score)
    return worst_iou, worst_score


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mona", "lora"])
def test_exported_detector_matches_torch(tmp_path_factory, scenes, method):
    root = tmp_path_factory.mktemp(f"det-{method}")
    checkpoint = detector_checkpoint(root, method)
    out = root / "model.onnx"
    code, stdout, err = _cli("export", checkpoint, "--out", out)
    assert code == 0, err
    assert (root / "model.roi_head.onnx").is_file() and "model.roi_head.onnx" in stdout
    from domainmona.export import onnx_metadata, sha256

    meta = onnx_metadata(out)
    assert meta["kind"] == "detector" and json.loads(meta["graphs"])["roi_head"] == "model.roi_head.onnx"
    assert meta["source_sha256"] == sha256(checkpoint) and meta["angle_convention"].startswith("le90")
    assert onnx_metadata(root / "model.roi_head.onnx")["source_sha256"] == meta["source_sha256"]
    for expected, got, _ in torch_and_onnx(checkpoint, out, scenes):
        print(method, "detections", len(got[0]), "min IoU, max score diff", assert_matched(expected, got))


@pytest.mark.slow
def test_exported_detector_runs_without_torch_or_mmcv(tmp_path_factory, scenes, tmp_path):
    root = tmp_path_factory.mktemp("det-alone")
    checkpoint = detector_checkpoint(root, "mona")
    out = root / "model.onnx"
    assert _cli("export", checkpoint, "--out", out)[0] == 0
    cases = torch_and_onnx(checkpoint, out, scenes)
    for i, (_, _, image) in enumerate(cases):
        np.save(tmp_path / f"image{i}.npy", image)
    script = (
        "import sys, numpy as np\n"
        "for name in ('torch', 'mmcv', 'mmdet', 'mmrotate', 'mmengine', 'cv2'): sys.modules[name] = None\n"
        "import importlib.util, pathlib\n"
        f"spec = importlib.util.spec_from_file_location('onnx_detector', {str(Path('domainmona/onnx_detector.py').resolve())!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"detector = module.OnnxDetector({str(out)!r})\n"
        f"for i in range({len(cases)}):\n"
        f"    boxes, scores, labels = detector.detect(np.load({str(tmp_path)!r} + f'/image{{i}}.npy'))\n"
        f"    np.savez({str(tmp_path)!r} + f'/dets{{i}}.npz', boxes=boxes, scores=scores, labels=labels)\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    for i, (expected, _, _) in enumerate(cases):
        got = np.load(tmp_path / f"dets{i}.npz")
        assert_matched(expected, (got["boxes"], got["scores"], got["labels"]))


@pytest.mark.slow
def test_a_foreign_roi_head_file_is_refused_and_nothing_written(tmp_path):
    checkpoint = detector_checkpoint(tmp_path, "mona")
    taken = tmp_path / "model.roi_head.onnx"
    taken.write_bytes(b"a user's file")
    _refused(["export", checkpoint, "--out", tmp_path / "model.onnx"], "was not written by domainmona")
    assert taken.read_bytes() == b"a user's file" and not (tmp_path / "model.onnx").exists()
    _refused(["export", checkpoint, "--out", tmp_path / "other.onnx", "--size", "64"], "--size is for geo-seg")
