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
    (boxes, scores, labels), (boxes2, scores2, labels2) = expected, got
    assert len(boxes) == len(boxes2) and len(boxes) > 0
    return assert_ious_matched(polygon_ious(obb_polygons(boxes), obb_polygons(boxes2)), (scores, labels),
                               (scores2, labels2))


def obb_polygons(boxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) float64 corners of le90 boxes."""
    from domainmona.boxes.geometry import obb_to_poly

    return np.asarray(obb_to_poly(np.asarray(boxes, np.float64)), np.float64).reshape(-1, 4, 2)


def polygon_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of (N, 4, 2) and (M, 4, 2) quadrilaterals, in float64 by shapely: rotated_ops'
    float32 IoU can score 1/3 for boxes equal to 1e-5 px (near-coincident edges)."""
    import shapely

    first, second = shapely.polygons(a), shapely.polygons(b)
    inter = shapely.area(shapely.intersection(first[:, None], second[None]))
    union = shapely.area(first)[:, None] + shapely.area(second)[None] - inter
    return inter / np.maximum(union, 1e-12)


def assert_ious_matched(ious: np.ndarray, expected, got) -> tuple[float, float]:
    """One-to-one matching of two detection sets, given their IoUs and each side's (scores, labels): parity is
    IoU >= 0.99, score within 1e-4, same label; returns (lowest IoU, largest score difference)."""
    (scores, labels), (scores2, labels2) = expected, got
    assert ious.shape == (len(scores), len(scores2)) and len(scores) > 0, ious.shape
    ious = ious.copy()
    ious[np.asarray(labels)[:, None] != np.asarray(labels2)[None]] = -1
    free = np.ones(len(scores2), bool)
    worst_iou, worst_score = 1.0, 0.0
    for i in np.argsort(-ious.max(1), kind="stable"):
        j = int(np.argmax(np.where(free, ious[i], -2)))
        free[j] = False
        worst_iou, worst_score = min(worst_iou, float(ious[i, j])), max(worst_score, abs(float(scores[i] - scores2[j])))
    assert worst_iou >= IOU and worst_score <= SCORE, (worst_iou, worst_score)
    return worst_iou, worst_score


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mona", "lora", "ssf", "vpt-deep", "conv-adapter"])
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


# --- --runtime onnx in tile-predict and test dota ------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """method -> (checkpoint, its export) for mona and lora micro detectors."""
    root = tmp_path_factory.mktemp("det-runtime")
    pairs = {}
    for method in ("mona", "lora"):
        checkpoint, out = detector_checkpoint(root, method), root / f"{method}.onnx"
        assert _cli("export", checkpoint, "--out", out)[0] == 0
        pairs[method] = (checkpoint, out)
    return pairs


def _gpkg_detections(path: Path):
    """(polygons (N, 4, 2), scores, classes) of a tile-predict GeoPackage, in float64 map coordinates."""
    import pyogrio
    import shapely

    _, _, wkb, (classes, scores) = pyogrio.raw.read(path, columns=["class", "score"])
    polygons = np.stack([shapely.get_coordinates(g)[:4] for g in shapely.from_wkb(wkb)])
    return polygons, np.asarray(scores, np.float64), np.asarray(classes)


@pytest.mark.slow
def test_tile_predict_onnx_gives_the_torch_detections(exported, tmp_path):
    from domainmona.geo.synthetic import SceneSpec, write_scene

    checkpoint, model = exported["mona"]
    scene = write_scene(tmp_path / "scene.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=448, height=384, kind="objects", objects=10, seed=4, block=64)).raster
    sets = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.gpkg"
        extra = ["--model", model] if runtime == "onnx" else []
        code, _, err = _cli("tile-predict", scene, "--checkpoint", checkpoint, "--out", out, "--score-thr", "0.05",
                            "--runtime", runtime, *extra)
        assert code == 0, err
        sets[runtime] = _gpkg_detections(out)
    (polys, scores, classes), (polys2, scores2, classes2) = sets["torch"], sets["onnx"]
    assert len(polys) == len(polys2)
    print("tile-predict detections", len(polys), "min IoU, max score diff",
          assert_ious_matched(polygon_ious(polys, polys2), (scores, classes), (scores2, classes2)))


def _task1(folder: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(image, class) -> (polygons (N, 4, 2), scores) of a Task1 folder."""
    found: dict = {}
    for path in sorted(folder.glob("Task1_*.txt")):
        for line in path.read_text().splitlines():
            image, score, *coords = line.split()
            polys, scores = found.setdefault((image, path.stem[len("Task1_"):]), ([], []))
            polys.append(np.asarray(coords, np.float64).reshape(4, 2)), scores.append(float(score))
    return {key: (np.stack(p), np.asarray(s)) for key, (p, s) in found.items()}


@pytest.mark.slow
def test_test_dota_onnx_reproduces_the_torch_task1(exported, tmp_path):
    from domainmona.detection.synthetic import generate_dota_scenes

    checkpoint, model = exported["mona"]
    generate_dota_scenes(tmp_path / "data", 1, 384, seed=5, objects_per_image=(6, 10))
    for runtime in ("torch", "onnx"):
        extra = ["--model", model] if runtime == "onnx" else []
        code, _, err = _cli("test", "dota", "--checkpoint", checkpoint, "--data", tmp_path / "data", "--out",
                            tmp_path / runtime, "--runtime", runtime, *extra)
        assert code == 0, err
    expected, got = _task1(tmp_path / "torch" / "task1"), _task1(tmp_path / "onnx" / "task1")
    assert expected and sorted(expected) == sorted(got)
    for key, (polys, scores) in expected.items():
        polys2, scores2 = got[key]
        assert len(polys) == len(polys2), key
        labels = np.zeros(len(scores), int)
        print("Task1", key, len(polys), "min IoU, max score diff",
              assert_ious_matched(polygon_ious(polys, polys2), (scores, labels), (scores2, labels[:len(scores2)])))


@pytest.mark.slow
def test_onnx_of_another_detector_is_refused_in_one_line(exported, tmp_path):
    from domainmona.detection.synthetic import generate_dota_scenes
    from domainmona.geo.synthetic import SceneSpec, write_scene

    (mona, mona_onnx), (_, lora_onnx) = exported["mona"], exported["lora"]
    scene = write_scene(tmp_path / "scene.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=128, height=128, kind="objects", objects=2, seed=1, block=64)).raster
    pred = tmp_path / "pred.gpkg"
    _refused(["tile-predict", scene, "--checkpoint", mona, "--out", pred, "--runtime", "onnx", "--model", lora_onnx],
             "exported from another checkpoint")
    _refused(["tile-predict", scene, "--checkpoint", mona, "--out", pred, "--runtime", "onnx"],
             "--runtime onnx needs --model")
    _refused(["tile-predict", scene, "--checkpoint", mona, "--out", mona_onnx, "--runtime", "onnx", "--model",
              mona_onnx], "--out")
    generate_dota_scenes(tmp_path / "data", 1, 256, seed=2)
    _refused(["test", "dota", "--checkpoint", mona, "--data", tmp_path / "data", "--out", tmp_path / "out",
              "--runtime", "onnx", "--model", lora_onnx], "exported from another checkpoint")
    _refused(["test", "dota", "--checkpoint", mona, "--data", tmp_path / "data", "--out", tmp_path / "out",
              "--model", mona_onnx], "--model goes with --runtime onnx")
    lonely = tmp_path / "lonely.onnx"  # the network graph copied away from its RoI head file
    lonely.write_bytes(mona_onnx.read_bytes())
    _refused(["test", "dota", "--checkpoint", mona, "--data", tmp_path / "data", "--out", tmp_path / "out",
              "--runtime", "onnx", "--model", lonely], "RoI head")
    assert not pred.exists() and not (tmp_path / "out").exists()


def _crowded_boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping clockwise boxes with near-duplicates (a box and the same rectangle with w, h swapped and
    the angle + pi/2, and 1e-5 px shifts), as an RoI head's output per class."""
    rng = np.random.default_rng(seed)
    boxes = np.column_stack([rng.uniform(0, 120, (n, 2)), rng.uniform(4, 40, (n, 2)),
                             rng.uniform(-np.pi / 2, np.pi / 2, n)]).astype(np.float32)
    twins = boxes[: n // 4].copy()
    twins[:, [2, 3]] = twins[:, [3, 2]]
    twins[:, 4] += np.float32(np.pi / 2)
    nudged = boxes[n // 4: n // 2] + np.float32(1e-5)
    boxes = np.concatenate([boxes, twins, nudged])
    return boxes, rng.permutation(len(boxes)).astype(np.float32) / len(boxes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_rotated_iou_and_nms_equal_the_torch_native_ops(seed):
    """The numpy glue's IoU equals rotated_ops' within 1e-9 (both float64, same candidate points), and its
    NMS keeps exactly the boxes rotated_ops' nms_rotated keeps, at the thresholds the detectors use."""
    from domainmona.detection import rotated_ops
    from domainmona.onnx_detector import pair_ious, rotated_nms

    boxes, scores = _crowded_boxes(300, seed)
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(boxes), (2, 5000))
    ours = pair_ious(boxes[first], boxes[second])
    reference = rotated_ops._pair_iou(torch.from_numpy(boxes[first]).double(), torch.from_numpy(boxes[second]).double(),
                                      0).numpy()
    assert np.abs(ours - reference).max() <= 1e-9 and (ours > 0.1).sum() > 50
    for threshold in (0.1, 0.5, 0.8):
        kept = rotated_nms(boxes, scores, threshold)
        expected = rotated_ops.nms_rotated(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        assert np.array_equal(kept, expected) and len(boxes) > len(kept) > 10, threshold
