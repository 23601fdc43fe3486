"""The real stack is installed and mmcv's compiled rotated-box ops compute the right numbers."""

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from domainmona.detection import mmcv_ext
from domainmona.doctor import STACK


@pytest.mark.parametrize("module", [m for m, _ in STACK])
def test_stack_imports(module):
    importlib.import_module(module)


def _corners(cx, cy, w, h, a):
    """Corners of a rotated box (angle in radians, counter-clockwise in image coordinates as mmcv uses)."""
    c, s = math.cos(a), math.sin(a)
    local = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in local]


def test_box_iou_rotated_matches_shapely_polygons():
    from mmcv.ops import box_iou_rotated

    rng = np.random.default_rng(0)
    n = 300
    a = np.column_stack([rng.uniform(20, 40, n), rng.uniform(20, 40, n), rng.uniform(2, 30, n),
                         rng.uniform(2, 30, n), rng.uniform(-math.pi / 2, math.pi / 2, n)])
    b = a.copy()
    b[:, :2] += rng.normal(0, 4, (n, 2))
    b[:, 2:4] *= rng.uniform(0.6, 1.4, (n, 2))
    b[:, 4] += rng.normal(0, 0.4, n)
    ious = box_iou_rotated(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32),
                           aligned=True).numpy()
    expected = []
    for box_a, box_b in zip(a, b):
        pa, pb = Polygon(_corners(*box_a)), Polygon(_corners(*box_b))
        expected.append(pa.intersection(pb).area / pa.union(pb).area)
    expected = np.array(expected)
    assert (expected > 0.05).sum() > 200, "the random pairs should mostly overlap to make the test meaningful"
    np.testing.assert_allclose(ious, expected, atol=1e-4)


def test_nms_rotated_keeps_expected_indices():
    from mmcv.ops import nms_rotated

    boxes = torch.tensor([
        [50.0, 50.0, 40.0, 10.0, 0.0],   # 0: best of cluster A
        [51.0, 50.0, 40.0, 10.0, 0.05],  # 1: near-duplicate of 0 -> suppressed
        [50.0, 50.0, 40.0, 10.0, 1.5],   # 2: same centre, rotated ~86 deg -> IoU small, kept
        [150.0, 80.0, 20.0, 20.0, 0.7],  # 3: isolated, kept
        [150.5, 80.0, 20.0, 20.0, 0.7],  # 4: higher score than 3 -> 3 suppressed
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.5, 0.6])
    dets, keep = nms_rotated(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2, 4]
    torch.testing.assert_close(dets[:, 5], torch.tensor([0.9, 0.7, 0.6]))


def test_doctor_exits_zero_after_running_the_ops():
    exe = Path(sys.executable).with_name("domainmona")
    result = subprocess.run([str(exe), "doctor"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    compiled = mmcv_ext.compiled_ops_installed()
    assert ("with compiled ops" if compiled else "without compiled ops") in result.stdout
    for op in ("nms_rotated", "box_iou_rotated", "RoIAlignRotated"):  # default: mmcv's CPU kernel where built
        assert f"{op} (cpu: {'mmcv' if compiled else 'torch'})" in result.stdout
    brief = subprocess.run([str(exe), "doctor", "--brief"], capture_output=True, text=True, timeout=300)
    assert brief.returncode == 0 and brief.stdout.strip().splitlines() == [result.stdout.strip().splitlines()[-1] +
                                                                           f" ({mmcv_ext.build_name()})"]
    forced = subprocess.run([str(exe), "doctor"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DOMAINMONA_ROTATED_OPS": "torch"})
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "RoIAlignRotated (cpu: torch)" in forced.stdout
    bad = subprocess.run([str(exe), "doctor"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DOMAINMONA_ROTATED_OPS": "bogus"})
    assert bad.returncode == 2 and "is not one of auto, mmcv, torch" in bad.stderr
    if not compiled:
        asked = subprocess.run([str(exe), "doctor"], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "DOMAINMONA_ROTATED_OPS": "mmcv"})
        assert asked.returncode == 2 and "DOMAINMONA_MMCV_OPS=compile make setup" in asked.stderr


def test_unknown_command_exits_nonzero_without_traceback():
    exe = Path(sys.executable).with_name("domainmona")
    result = subprocess.run([str(exe), "no-such-command"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_help_lists_every_command_group():
    exe = Path(sys.executable).with_name("domainmona")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    for group in ("train", "test", "eval", "split", "segment-ct", "tile", "tile-predict", "demo", "doctor",
                  "adapters"):
        assert group in out
