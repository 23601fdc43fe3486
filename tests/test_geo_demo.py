"""`domainmona geo-demo` end to end for both tasks, then its model exported and run by onnxruntime over the
demo's own scene: the same class map (>= 99.99% of pixels) and the same detections (matched one to one) as
the torch runtime. (The demo was not run by any test before, and its detection task had stopped working.)"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.test_export import ARGMAX_AGREEMENT, _cli
from tests.test_export_detector import _gpkg_detections, assert_ious_matched, polygon_ious

pytestmark = pytest.mark.slow


def _demo(out: Path, task: str) -> str:
    code, stdout, err = _cli("geo-demo", "--out", out, "--task", task)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == str(out / "preview.png") and (out / "preview.png").is_file()
    return stdout


def _both_runtimes(checkpoint: Path, scene: Path, tmp_path: Path, suffix: str, *extra) -> dict[str, Path]:
    """tile-predict with torch and with the exported model; the two outputs."""
    model = tmp_path / "model.onnx"
    code, _, err = _cli("export", checkpoint, "--out", model)
    assert code == 0, err
    outputs = {}
    for runtime in ("torch", "onnx"):
        outputs[runtime] = tmp_path / f"{runtime}{suffix}"
        onnx = ["--model", model] if runtime == "onnx" else []
        code, _, err = _cli("tile-predict", scene, "--checkpoint", checkpoint, "--out", outputs[runtime], *extra,
                            "--runtime", runtime, *onnx)
        assert code == 0, err
    return outputs


def test_segmentation_demo_then_its_exported_model_gives_the_same_class_map(tmp_path):
    stdout = _demo(tmp_path / "demo", "segmentation")
    miou = float(re.search(r"mIoU over the scene: ([0-9.]+)", stdout).group(1))
    assert miou >= 0.8, stdout  # the few-shot Mona model segments the scene (0.97 when written)
    outputs = _both_runtimes(tmp_path / "demo" / "work" / "geo-seg.safetensors", tmp_path / "demo" / "scene.tif",
                             tmp_path, ".tif")
    maps = {}
    for runtime, path in outputs.items():
        with rasterio.open(path) as src:
            maps[runtime] = src.read(1)
    agreement = float((maps["torch"] == maps["onnx"]).mean())
    print(f"geo-demo segmentation: mIoU {miou:.3f}, onnx/torch pixel agreement {agreement:.6f}")
    assert agreement >= ARGMAX_AGREEMENT and len(np.unique(maps["torch"])) > 2


def test_detection_demo_then_its_exported_model_gives_the_same_detections(tmp_path):
    stdout = _demo(tmp_path / "demo", "detection")
    score = float(re.search(r"mAP over the scene \(VOC07, IoU 0.5\): ([0-9.]+)", stdout).group(1))
    assert score >= 0.6, stdout  # 0.90 when written
    outputs = _both_runtimes(tmp_path / "demo" / "work" / "final.safetensors", tmp_path / "demo" / "scene.tif",
                             tmp_path, ".gpkg", "--score-thr", "0.3")
    (polys, scores, classes), (polys2, scores2, classes2) = (_gpkg_detections(p) for p in outputs.values())
    assert len(polys) == len(polys2) >= 20  # the scene holds 45 objects
    worst = assert_ious_matched(polygon_ious(polys, polys2), (scores, classes), (scores2, classes2))
    print(f"geo-demo detection: mAP {score:.3f}, {len(polys)} detections, min IoU / max score diff {worst}")
