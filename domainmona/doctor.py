"""`domainmona doctor`: prove the stack is really there, compiled ops included, not just importable."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from dataclasses import dataclass

from domainmona.errors import UserError

# (import name, distribution name) of every package the pipelines need.
STACK = [
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("mmengine", "onedl-mmengine"),
    ("mmcv", "onedl-mmcv"),
    ("mmdet", "onedl-mmdetection"),
    ("mmrotate", "onedl-mmrotate"),
    ("monai", "monai"),
    ("nibabel", "nibabel"),
    ("rasterio", "rasterio"),
    ("shapely", "shapely"),
    ("pyogrio", "pyogrio"),
    ("segmentation_models_pytorch", "segmentation-models-pytorch"),
    ("timm", "timm"),
    ("safetensors", "safetensors"),
]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_imports() -> list[Check]:
    checks = []
    for module, dist in STACK:
        try:
            importlib.import_module(module)
            checks.append(Check(dist, True, md.version(dist)))
        except Exception as exc:  # any import failure is a finding, reported in one line
            checks.append(Check(dist, False, f"cannot import {module}: {type(exc).__name__}: {exc}"))
    return checks


def check_platform() -> list[Check]:
    checks = []
    try:
        import rasterio

        checks.append(Check("GDAL", True, rasterio.__gdal_version__))
    except Exception as exc:
        checks.append(Check("GDAL", False, str(exc)))
    try:
        import torch

        if torch.cuda.is_available():
            detail = f"available: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        else:
            detail = f"not available (torch built for CUDA {torch.version.cuda}); running on CPU"
        checks.append(Check("CUDA", True, detail))
    except Exception as exc:
        checks.append(Check("CUDA", False, str(exc)))
    return checks


def _devices() -> list:
    import torch

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", 0))
    if torch.backends.mps.is_available():
        devices.append(torch.device("mps"))
    return devices


def check_rotated_ops() -> list[Check]:
    """Say which mmcv build is installed, then run the rotated-box ops mmrotate depends on, on tiny tensors
    on every visible device, through the implementation DOMAINMONA_ROTATED_OPS picks there (mmcv's
    compiled kernel or domainmona's torch-native one)."""
    try:
        import torch
        from mmcv.ops import RoIAlignRotated, box_iou_rotated, nms_rotated

        from domainmona.detection.mmcv_ext import build_name
        from domainmona.detection.rotated_ops import implementation, install_rotated_ops

        checks = [Check("mmcv build", True, build_name())]
        install_rotated_ops()  # refuses an unknown DOMAINMONA_ROTATED_OPS value, or mmcv without the build
    except UserError as exc:
        return checks + [Check("DOMAINMONA_ROTATED_OPS", False, str(exc))]
    except Exception as exc:
        return [Check("mmcv.ops", False, f"rotated ops missing: {exc}")]
    for device in _devices():
        where = f"{device.type}: {implementation(device)}"
        boxes = torch.tensor([[10.0, 10.0, 8.0, 4.0, 0.3], [10.5, 10.0, 8.0, 4.0, 0.3], [30.0, 30.0, 6.0, 6.0, 0.0]],
                             device=device)
        scores = torch.tensor([0.9, 0.8, 0.7], device=device)
        try:
            _, keep = nms_rotated(boxes, scores, 0.5)
            ok = keep.tolist() == [0, 2]
            checks.append(Check(f"nms_rotated ({where})", ok, f"kept {keep.tolist()} (expected [0, 2])"))
        except Exception as exc:
            checks.append(Check(f"nms_rotated ({where})", False, str(exc)))
        try:
            iou = box_iou_rotated(boxes[:1], boxes[:1])
            ok = abs(float(iou) - 1.0) < 1e-4
            checks.append(Check(f"box_iou_rotated ({where})", ok, f"self-IoU {float(iou):.4f} (expected 1.0)"))
        except Exception as exc:
            checks.append(Check(f"box_iou_rotated ({where})", False, str(exc)))
        try:
            feats = torch.ones(1, 2, 16, 16, device=device, requires_grad=True)
            rois = torch.tensor([[0.0, 8.0, 8.0, 6.0, 4.0, 0.5]], device=device)
            out = RoIAlignRotated((3, 3), spatial_scale=1.0, sampling_ratio=2)(feats, rois)
            out.sum().backward()
            ok = tuple(out.shape) == (1, 2, 3, 3) and torch.allclose(out, torch.ones_like(out)) and \
                abs(float(feats.grad.sum()) - out.numel()) < 1e-3  # each output is a mean: gradients sum to 1 each
            checks.append(Check(f"RoIAlignRotated ({where})", ok,
                                f"output {tuple(out.shape)} on a constant map, backward"))
        except Exception as exc:
            checks.append(Check(f"RoIAlignRotated ({where})", False, str(exc)))
    return checks


def run_checks() -> list[Check]:
    return check_imports() + check_platform() + check_rotated_ops()
