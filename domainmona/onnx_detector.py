"""Run a rotated-box detector that `domainmona export` wrote, with numpy and onnxruntime only (no torch, mmcv
or cv2): the glue between and after its two ONNX graphs (see domainmona.detection.export for the split).

Why numpy glue: the stages here have data-dependent shapes (top-k, NMS, the RoIAlign level per RoI) or call
OpenCV (mmrotate's MidpointOffsetCoder ends in cv2.minAreaRect), so no fixed graph can hold them exactly.
Each follows mmrotate's le90 Oriented R-CNN test path:

1. ``network`` graph: FPN levels, per-level RPN objectness (sigmoid), deltas and anchors.
2. Per level the ``nms_pre`` best anchors; MidpointOffsetCoder decode to a rectangle, described as
   cv2.minAreaRect does (angle in (0, 90] degrees, w along that angle), then regularised to le90; boxes of side <= min_bbox_size dropped;
   horizontal NMS of their hulls per level (suppress at IoU > threshold), the ``max_per_img`` best kept.
3. Each proposal's FPN level floor(log2(sqrt(w h) / finest_scale + 1e-6)) and mmcv's RoIAlignRotated there.
4. ``roi_head`` graph: class probabilities and decoded le90 boxes; boxes scaled back by the resize factor.
5. Per class, the boxes scoring > score_thr, rotated NMS (suppress at IoU >= threshold), the ``max_per_img``
   best over all classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

FORMAT = "domainmona.onnx/1"
KIND = "detector"


def read_metadata(path: Path) -> dict[str, str]:
    """The custom metadata of an ONNX file, read by onnxruntime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxDetector:
    """The two graphs of an exported detector (``path`` and the RoI head file its metadata names beside it)."""

    def __init__(self, path: Path | str, threads: int | None = None):
        """``threads``: onnxruntime's intra-op threads (its default, one per core, when None)."""
        path = Path(path)
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.network = ort.InferenceSession(str(path), options, providers=providers)
        self.metadata = dict(self.network.get_modelmeta().custom_metadata_map)
        if self.metadata.get("format") != FORMAT or self.metadata.get("kind") != KIND:
            raise ValueError(f"{path}: not a detector that 'domainmona export' wrote")
        self.roi_head_path = path.with_name(json.loads(self.metadata["graphs"])["roi_head"])
        self.roi_head = ort.InferenceSession(str(self.roi_head_path), options, providers=providers)
        self.settings = json.loads(self.metadata["detector"])
        self.classes = json.loads(self.metadata["classes"])
        self.size = int(self.metadata["input_size"])

    def detect(self, image: np.ndarray, scale_factor: float = 1.0):
        """(boxes (N, 5) le90, scores (N,), labels (N,)) of one image packed as mmdet's test pipeline packs it:
        (C, S, S) pixels, before normalisation; boxes divided by ``scale_factor`` (the pipeline's resize)."""
        s = self.settings
        image = np.asarray(image, dtype=np.float32)
        if image.shape != (len(s["mean"]), self.size, self.size):
            raise ValueError(f"the detector takes ({len(s['mean'])}, {self.size}, {self.size}) images, "
                             f"got {image.shape}")
        if s["bgr_to_rgb"]:
            image = image[::-1]
        mean, std = (np.asarray(s[k], np.float32)[:, None, None] for k in ("mean", "std"))
        outputs = self.network.run(None, {"image": np.ascontiguousarray(((image - mean) / std)[None])})
        levels = len(s["roi_align"]["strides"])
        feats, rpn = outputs[:levels], outputs[levels:]
        proposals = self.proposals([rpn[i:i + 3] for i in range(0, len(rpn), 3)])
        if not len(proposals):
            return np.zeros((0, 5), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        pooled = roi_align_levels(feats, proposals, s["roi_align"])
        probabilities, boxes = self.roi_head.run(None, {"roi_feats": pooled, "rois": proposals})
        boxes = boxes.copy()
        boxes[:, :4] /= np.float32(scale_factor)
        return multiclass_nms(boxes, probabilities[:, :-1], **s["rcnn"])

    def proposals(self, levels: list) -> np.ndarray:
        """The RPN's proposals (R, 5) from each level's (scores, deltas, anchors)."""
        rpn = self.settings["rpn"]
        scores, deltas, anchors, ids = [], [], [], []
        for level, (score, delta, anchor) in enumerate(levels):
            order = np.argsort(-score, kind="stable")[:rpn["nms_pre"]] if rpn["nms_pre"] > 0 else slice(None)
            scores.append(score[order]), deltas.append(delta[order]), anchors.append(anchor[order])
            ids.append(np.full(len(scores[-1]), level))
        boxes = midpoint_decode(np.concatenate(anchors), np.concatenate(deltas), rpn["stds"])
        scores, ids = np.concatenate(scores), np.concatenate(ids)
        if rpn["min_bbox_size"] >= 0:
            big = (boxes[:, 2] > rpn["min_bbox_size"]) & (boxes[:, 3] > rpn["min_bbox_size"])
            boxes, scores, ids = boxes[big], scores[big], ids[big]
        keep = batched_hbox_nms(rbox_hull(boxes), scores, ids, rpn["iou_threshold"])[:rpn["max_per_img"]]
        return np.ascontiguousarray(boxes[keep], dtype=np.float32)


def midpoint_decode(anchors: np.ndarray, deltas: np.ndarray, stds) -> np.ndarray:
    """mmrotate's MidpointOffsetCoder.decode (means 0; the rectangle it builds described as cv2.minAreaRect
    describes it), in float32 as torch computes it."""
    d = deltas.astype(np.float32) * np.asarray(stds, np.float32)
    limit = np.float32(abs(np.log(16 / 1000)))
    dw, dh = np.clip(d[:, 2], -limit, limit), np.clip(d[:, 3], -limit, limit)
    px, py = (anchors[:, 0] + anchors[:, 2]) * np.float32(0.5), (anchors[:, 1] + anchors[:, 3]) * np.float32(0.5)
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    gw, gh = pw * np.exp(dw), ph * np.exp(dh)
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    da, db = np.clip(d[:, 4], -0.5, 0.5), np.clip(d[:, 5], -0.5, 0.5)
    half_w, half_h = gw * np.float32(0.5), gh * np.float32(0.5)
    # the quadrilateral's corners relative to the centre, each stretched to the longest half-diagonal
    corners = np.stack([np.stack([da * gw, -half_h], 1), np.stack([half_w, db * gh], 1),
                        np.stack([-da * gw, half_h], 1), np.stack([-half_w, -db * gh], 1)], 1)
    radius = np.sqrt((corners ** 2).sum(-1))
    corners = corners * (radius.max(1, keepdims=True) / radius)[..., None]
    first = corners[:, 1] - corners[:, 0]
    second = corners[:, 2] - corners[:, 1]
    length1, length2 = np.hypot(*first.T.astype(np.float64)), np.hypot(*second.T.astype(np.float64))
    angle = np.mod(np.arctan2(first[:, 1], first[:, 0]).astype(np.float64), np.pi)  # of side 1, in [0, pi)
    swap = (angle == 0) | (angle > np.pi / 2)  # cv2 gives the angle in (0, 90] with w along it
    angle = np.where(swap, np.where(angle == 0, np.pi / 2, angle - np.pi / 2), angle)
    w, h = np.where(swap, length2, length1).astype(np.float32), np.where(swap, length1, length2).astype(np.float32)
    angle = angle.astype(np.float32)
    # RotatedBoxes.regularize_boxes('le90'): w the longer side, angle in [-pi/2, pi/2)
    longer = w > h
    angle = np.where(longer, angle, angle + np.float32(np.pi / 2))
    angle = np.mod(angle + np.float32(np.pi / 2), np.float32(np.pi)) - np.float32(np.pi / 2)
    return np.stack([gx, gy, np.where(longer, w, h), np.where(longer, h, w), angle], 1).astype(np.float32)


def rbox_hull(boxes: np.ndarray) -> np.ndarray:
    """mmrotate's rbox2hbox: (x1, y1, x2, y2) hulls of (cx, cy, w, h, a) boxes."""
    cos, sin = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    dx = np.abs(boxes[:, 2] / 2 * cos) + np.abs(boxes[:, 3] / 2 * sin)
    dy = np.abs(boxes[:, 2] / 2 * sin) + np.abs(boxes[:, 3] / 2 * cos)
    return np.stack([boxes[:, 0] - dx, boxes[:, 1] - dy, boxes[:, 0] + dx, boxes[:, 1] + dy], 1)


def batched_hbox_nms(hulls: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by mmcv's batched_nms with horizontal 'nms' (groups apart, suppress at IoU > threshold),
    best score first."""
    shifted = hulls + (groups * (hulls.max() + 1)).astype(hulls.dtype)[:, None]
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(order), bool)
    for i, box in enumerate(order):
        if not alive[i]:
            continue
        rest = order[i + 1:]
        w = np.clip(np.minimum(shifted[box, 2], shifted[rest, 2]) - np.maximum(shifted[box, 0], shifted[rest, 0]), 0, None)
        h = np.clip(np.minimum(shifted[box, 3], shifted[rest, 3]) - np.maximum(shifted[box, 1], shifted[rest, 1]), 0, None)
        inter = w * h
        alive[i + 1:] &= ~(inter / (area[box] + area[rest] - inter) > threshold)
    return order[alive]


def roi_align_levels(feats: list, rois: np.ndarray, cfg: dict) -> np.ndarray:
    """mmrotate's RotatedSingleRoIExtractor: each RoI pooled from the level its size picks."""
    scale = np.sqrt(rois[:, 2] * rois[:, 3])
    levels = np.clip(np.floor(np.log2(scale / cfg["finest_scale"] + 1e-6)), 0, len(feats) - 1).astype(int)
    size = cfg["output_size"]
    out = np.zeros((len(rois), feats[0].shape[1], size, size), np.float32)
    for level, feat in enumerate(feats):
        picked = np.flatnonzero(levels == level)
        if len(picked):
            out[picked] = roi_align_rotated(feat[0], rois[picked], size, 1.0 / cfg["strides"][level],
                                            cfg["sampling_ratio"], cfg["aligned"], cfg["clockwise"])
    return out


def roi_align_rotated(feat: np.ndarray, rois: np.ndarray, size: int, spatial_scale: float, sampling_ratio: int,
                      aligned: bool, clockwise: bool) -> np.ndarray:
    """mmcv's RoIAlignRotated forward on one (C, H, W) map for (R, 5) boxes: (R, C, size, size)."""
    channels, height, width = feat.shape
    offset = 0.5 if aligned else 0.0
    scale = np.float32(spatial_scale)
    cx, cy = rois[:, 0] * scale - offset, rois[:, 1] * scale - offset
    roi_w, roi_h = rois[:, 2] * scale, rois[:, 3] * scale
    if not aligned:
        roi_w, roi_h = np.maximum(roi_w, 1), np.maximum(roi_h, 1)
    theta = -rois[:, 4] if clockwise else rois[:, 4]
    if sampling_ratio > 0:
        grid_h = grid_w = np.full(len(rois), sampling_ratio)
    else:
        grid_h, grid_w = np.ceil(roi_h / size).astype(int), np.ceil(roi_w / size).astype(int)
    out = np.zeros((len(rois), channels, size, size), np.float32)
    table = feat.reshape(channels, -1)
    for r in range(len(rois)):  # RoIs have their own sample grids when sampling_ratio is 0
        bins = np.arange(size, dtype=np.float32)
        ys = (-roi_h[r] / 2 + bins[:, None] * (roi_h[r] / size)
              + (np.arange(grid_h[r], dtype=np.float32) + 0.5) * (roi_h[r] / size) / grid_h[r])  # (size, gh)
        xs = (-roi_w[r] / 2 + bins[:, None] * (roi_w[r] / size)
              + (np.arange(grid_w[r], dtype=np.float32) + 0.5) * (roi_w[r] / size) / grid_w[r])
        yy, xx = ys[:, None, :, None], xs[None, :, None, :]                                       # (PH, PW, SH, SW)
        cos, sin = np.cos(theta[r]), np.sin(theta[r])
        y = yy * cos - xx * sin + cy[r]
        x = yy * sin + xx * cos + cx[r]
        used = ~((y < -1.0) | (y > height) | (x < -1.0) | (x > width))
        y, x = np.maximum(y, 0), np.maximum(x, 0)
        y_low, x_low = y.astype(int), x.astype(int)
        top_y, top_x = y_low >= height - 1, x_low >= width - 1
        y_low, x_low = np.minimum(y_low, height - 1), np.minimum(x_low, width - 1)
        y = np.where(top_y, y_low, y)
        x = np.where(top_x, x_low, x)
        y_high, x_high = np.where(top_y, y_low, y_low + 1), np.where(top_x, x_low, x_low + 1)
        ly, lx = y - y_low, x - x_low
        hy, hx = 1 - ly, 1 - lx
        total = np.zeros((channels, size, size), np.float32)
        for rows, cols, weight in ((y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
                                   (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)):
            values = table[:, (rows * width + cols).ravel()].reshape(channels, *rows.shape)
            total += (values * np.where(used, weight, 0)).sum((3, 4))
        out[r] = total / max(grid_h[r] * grid_w[r], 1)
    return out


def _corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners of clockwise (cx, cy, w, h, a) boxes, in float64."""
    b = boxes.astype(np.float64)
    cos, sin = np.cos(b[:, 4]), np.sin(b[:, 4])
    along = np.stack([cos * b[:, 2] / 2, sin * b[:, 2] / 2], 1)
    across = np.stack([-sin * b[:, 3] / 2, cos * b[:, 3] / 2], 1)
    centre = b[:, :2]
    return np.stack([centre - along - across, centre + along - across, centre + along + across,
                     centre - along + across], 1)


def _clip_area(subject: np.ndarray, clip: np.ndarray) -> float:
    """Area of convex polygon ``subject`` clipped by convex quadrilateral ``clip`` (Sutherland-Hodgman)."""
    polygon = list(subject)
    if _signed_area(clip) < 0:  # the inside test below wants counter-clockwise (in x-right, y-up terms)
        clip = clip[::-1]
    for i in range(4):
        a, b = clip[i], clip[(i + 1) % 4]
        edge = b - a
        inside = [edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]) >= 0 for p in polygon]
        result = []
        for j, p in enumerate(polygon):
            q = polygon[(j + 1) % len(polygon)]
            if inside[j]:
                result.append(p)
            if inside[j] != inside[(j + 1) % len(polygon)]:
                dp = q - p
                denom = edge[0] * dp[1] - edge[1] * dp[0]
                t = (edge[1] * (p[0] - a[0]) - edge[0] * (p[1] - a[1])) / denom
                result.append(p + t * dp)
        polygon = result
        if len(polygon) < 3:
            return 0.0
    return abs(_signed_area(np.asarray(polygon)))


def _signed_area(pts: np.ndarray) -> float:
    return float(np.dot(pts[:, 0], np.roll(pts[:, 1], -1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], -1))) / 2


def rotated_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by mmcv's nms_rotated (best first; suppress at IoU >= threshold)."""
    order = np.argsort(-scores, kind="stable")
    corners = _corners(boxes)
    radius = np.hypot(boxes[:, 2], boxes[:, 3]).astype(np.float64) / 2
    area = boxes[:, 2].astype(np.float64) * boxes[:, 3]
    alive = np.ones(len(order), bool)
    for i, box in enumerate(order):
        if not alive[i]:
            continue
        for j in range(i + 1, len(order)):
            other = order[j]
            if not alive[j] or np.hypot(*(boxes[box, :2] - boxes[other, :2]).astype(np.float64)) > \
                    radius[box] + radius[other] + 1e-3:
                continue
            if area[box] < 1e-14 or area[other] < 1e-14:
                iou = 0.0
            else:
                inter = _clip_area(corners[other], corners[box])
                iou = inter / (area[box] + area[other] - inter)
            if iou >= threshold:
                alive[j] = False
    return order[alive]


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, score_thr: float, iou_threshold: float,
                   max_per_img: int):
    """mmdet's multiclass_nms with class-agnostic boxes: every (box, class) scoring > score_thr, rotated NMS
    within each class, the best ``max_per_img`` of all."""
    rows, labels = np.nonzero(scores > score_thr)
    kept = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    picked = np.concatenate([k[rotated_nms(boxes[rows[k]], scores[rows[k], labels[k]], iou_threshold)]
                             for k in kept]) if kept else np.zeros(0, int)
    picked_scores = scores[rows[picked], labels[picked]]
    order = np.argsort(-picked_scores, kind="stable")[:max_per_img]
    picked = picked[order]
    return boxes[rows[picked]], scores[rows[picked], labels[picked]], labels[picked].astype(np.int64)
