"""Torch-native twins of the compiled mmcv kernels the Oriented R-CNN (le90) path calls, and the switch
that picks between them.

Why by hand: no wheel of onedl-mmcv with compiled ops exists for Python 3.11-3.13 with torch 2.x, so the
default install leaves mmcv's extension out (`domainmona.detection.mmcv_ext` serves these kernels as
`mmcv._ext`); and where it is compiled, its CUDA kernels exist only when nvcc was present at install time,
so most GPU users would stop at "roi_align_rotated_forward_impl: implementation for device cuda:0 not
found". No installed library has these ops in plain torch (torchvision has horizontal NMS only), so they are
written here, vectorised, to run on any device torch runs on (CPU, CUDA, MPS).

Compiled ops on the le90 Oriented R-CNN path (read off the installed mmrotate/mmdet/mmcv):
- `nms` (horizontal): the RPN (`OrientedRPNHead` -> `mmcv.ops.batched_nms` with type 'nms' on the boxes'
  horizontal hulls) -> torchvision's `nms`, which ships kernels for every device in the torch wheel.
- `nms_rotated`: the RoI head's `multiclass_nms` (`batched_nms` with type 'nms_rotated'), DOTAMetric's
  merge, domainmona's tile merge.
- `box_iou_rotated`: `RBboxOverlaps2D` in the RCNN assigner (`rbbox_overlaps`), mAP evaluation.
- `RoIAlignRotated` forward and backward: `RotatedSingleRoIExtractor` (built by name from `mmcv.ops`).
Compiled ops in mmrotate that this path never calls, left to mmcv: `min_area_polygons`,
`points_in_polygons`, `convex_iou`, `convex_giou` (RepPoints, SASM, CFA), `chamfer_distance`,
`diff_iou_rotated_2d` (rotated IoU losses), `rotated_feature_align`, `active_rotated_filter`, `DeformConv2d`
(S2A-Net, ReDet), `RiRoIAlignRotated`, `box_iou_quadri`/`nms_quadri` (quadrilateral boxes).

The seam: every one of those Python functions calls `ext_module.<kernel>` from its own mmcv module at call
time, so `install_rotated_ops` swaps that `ext_module` (in mmcv.ops.nms, .box_iou_rotated,
.roi_align_rotated) for a dispatcher. mmcv's own Python wrappers (angle flip for `clockwise=False`, score
sort, `batched_nms` offsets, autograd Function) stay in force, and every importer of them (`from mmcv.ops
import ...` in mmrotate's bbox_overlaps, mean_ap, dota_metric, mmdet's multiclass_nms, `getattr(mmcv.ops,
'RoIAlignRotated')`, domainmona's merge) reaches the dispatcher without being rebound one by one.

`DOMAINMONA_ROTATED_OPS` = auto (default: mmcv's kernel where it was compiled for the tensor's device,
else torch), mmcv (refused in one line without the compiled build), or torch; read at every call.

Semantics copied from mmcv 2.3.6's kernels (box_iou_rotated_utils.hpp, nms_rotated.cpp,
roi_align_rotated.cpp): vertices of (x, y, w, h, a) with the clockwise angle; IoU of the convex
intersection polygon with centres shifted to their midpoint, 0 when either area < 1e-14 (but in float64
with tolerances, where mmcv's float32 exact tests misjudge near-duplicate boxes); NMS suppresses at
IoU >= threshold in descending-score order (stable on ties) and ignores `labels` as mmcv's CPU and CUDA
kernels do; RoIAlignRotated's bilinear rules (samples beyond [-1, size] are zero, others clamped to the
map), `aligned` half-pixel shift, `sampling_ratio` 0 = ceil(roi / bin) per RoI, `clockwise` negates the
angle, and the mean over the samples.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from domainmona.errors import UserError

SWITCH = 'DOMAINMONA_ROTATED_OPS'
CHOICES = ('auto', 'mmcv', 'torch')
# mmcv modules whose `ext_module` holds the kernels above
PATCHED_MODULES = ('mmcv.ops.nms', 'mmcv.ops.box_iou_rotated', 'mmcv.ops.roi_align_rotated')
PAIR_CHUNK = 8192  # pairs per vectorised IoU step: its temporaries stay in cache


def choice() -> str:
    """The switch's value; an unknown one is the user's to fix."""
    value = os.environ.get(SWITCH, 'auto').strip().lower() or 'auto'
    if value not in CHOICES:
        raise UserError(f"{SWITCH}={os.environ[SWITCH]!r} is not one of {', '.join(CHOICES)}")
    return value


def mmcv_supports(device: torch.device) -> bool:
    """Whether the installed mmcv has compiled kernels for this device type: none without its compiled
    extension (`domainmona.detection.mmcv_ext`); with it, CPU always and CUDA only when built with nvcc."""
    from domainmona.detection.mmcv_ext import compiled_ops_installed

    if not compiled_ops_installed():
        return False
    if device.type == 'cpu':
        return True
    if device.type == 'cuda':
        from mmcv.ops import get_compiling_cuda_version
        return get_compiling_cuda_version() != 'not available'
    return False


def implementation(device: torch.device) -> str:
    """'mmcv' or 'torch': which kernel runs for tensors on `device` under the current switch."""
    value = choice()
    if value == 'auto':
        return 'mmcv' if mmcv_supports(device) else 'torch'
    if value == 'mmcv':
        from domainmona.detection.mmcv_ext import COMPILE_HINT, compiled_ops_installed

        if not compiled_ops_installed():
            raise UserError(f"{SWITCH}=mmcv asks for mmcv's compiled kernels, which are not installed; "
                            f"{COMPILE_HINT}")
    return value


# ---------------------------------------------------------------------------------------------- IoU

# Tolerances of `_intersection_area`, in float64 (where rounding is ~1e-13 of a box's size): how far, as a
# fraction of an edge, a candidate vertex may lie beyond an edge and still count as on it; and the sine of
# the angle below which two edges count as parallel.
_SLACK = 1e-9
_PARALLEL = 1e-8


def _vertices(boxes: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y, each (P, 4), of the corners of (P, 5) clockwise boxes whose centres move by -shift
    (mmcv's get_rotated_vertices)."""
    x, y = boxes[:, 0] - shift[:, 0], boxes[:, 1] - shift[:, 1]
    w, h = boxes[:, 2], boxes[:, 3]
    cos2 = torch.cos(boxes[:, 4]) * 0.5
    sin2 = torch.sin(boxes[:, 4]) * 0.5
    x0, y0 = x - sin2 * h - cos2 * w, y + cos2 * h - sin2 * w
    x1, y1 = x + sin2 * h - cos2 * w, y - cos2 * h - sin2 * w
    return torch.stack((x0, x1, 2 * x - x0, 2 * x - x1), 1), torch.stack((y0, y1, 2 * y - y0, 2 * y - y1), 1)


def _corners_inside(px, py, rx, ry, slack: float) -> torch.Tensor:
    """(P, 4) whether each corner (px, py) lies in the rectangle with corners (rx, ry), edges included, its
    projections on the two sides allowed `slack` (a fraction of each side) beyond them."""
    abx, aby = (rx[:, 1] - rx[:, 0])[:, None], (ry[:, 1] - ry[:, 0])[:, None]
    dax, day = (rx[:, 0] - rx[:, 3])[:, None], (ry[:, 0] - ry[:, 3])[:, None]
    apx, apy = px - rx[:, :1], py - ry[:, :1]
    ap_ab, ap_ad = apx * abx + apy * aby, -(apx * dax + apy * day)
    ab_ab, ad_ad = abx * abx + aby * aby, dax * dax + day * day
    return ((ap_ab >= -slack * ab_ab) & (ap_ad >= -slack * ad_ad)
            & (ap_ab <= (1 + slack) * ab_ab) & (ap_ad <= (1 + slack) * ad_ad))


def _intersection_area(x1, y1, x2, y2) -> torch.Tensor:
    """Area of the intersection of two convex quadrilaterals (corners x1, y1 and x2, y2, each (P, 4)) per
    row: the edge crossings and the corners inside the other box (mmcv's 24 candidate points, same
    tolerances but `_SLACK`), ordered by angle around their mean and summed with the shoelace formula. The
    intersection is convex, so this is the area of mmcv's Graham hull of the same points.

    Why the slack: a vertex of the intersection that lies on (or within rounding of) an edge of both boxes,
    as where near-duplicate boxes' edges (nearly) coincide, is a corner inside the other box and an edge
    crossing at t = 0 or 1 at once; exact tests can reject every candidate for it (mmcv's kernel does: a box
    and the same rectangle written with w, h swapped and the angle + pi/2 can give IoU 0), and the hull then
    loses a whole corner (IoU 0.333 for a lost half). Accepting points up to `slack` of an edge beyond it keeps
    them; a point let in that way lies within slack * edge of the true polygon, so the area moves by at most
    about slack * perimeter * size."""
    slack = _SLACK
    ex1, ey1 = x1.roll(-1, 1) - x1, y1.roll(-1, 1) - y1            # edge i of box 1
    ex2, ey2 = x2.roll(-1, 1) - x2, y2.roll(-1, 1) - y2
    e1x, e1y, e2x, e2y = ex1[:, :, None], ey1[:, :, None], ex2[:, None], ey2[:, None]
    det = e2x * e1y - e1x * e2y                                     # (P, 4, 4): edge i of 1, edge j of 2
    dx, dy = x2[:, None] - x1[:, :, None], y2[:, None] - y1[:, :, None]
    # parallel relative to the edges' lengths (mmcv: |det| <= 1e-14): for (nearly) collinear edges det and
    # the numerators are rounding noise, t lands anywhere and the "crossing" can sit an edge's length outside
    # the other box. Skipping edges within `_PARALLEL` rad of parallel loses at most a vertex of angle
    # pi - _PARALLEL, a sliver of area below _PARALLEL * size^2 / 2; their shared vertices are corners,
    # which the inside tests keep.
    lengths = (e1x * e1x + e1y * e1y) * (e2x * e2x + e2y * e2y)
    parallel = det * det <= _PARALLEL ** 2 * lengths
    det = det.masked_fill(parallel, 1.0)
    t1 = (e2x * dy - dx * e2y) / det
    t2 = (e1x * dy - dx * e1y) / det
    crossing = ~parallel & (t1 >= -slack) & (t1 <= 1 + slack) & (t2 >= -slack) & (t2 <= 1 + slack)
    px = torch.cat(((x1[:, :, None] + e1x * t1).flatten(1), x1, x2), 1)   # (P, 24)
    py = torch.cat(((y1[:, :, None] + e1y * t1).flatten(1), y1, y2), 1)
    valid = torch.cat((crossing.flatten(1), _corners_inside(x1, y1, x2, y2, slack),
                       _corners_inside(x2, y2, x1, y1, slack)), 1)
    count = valid.sum(1)
    weight = valid.to(px.dtype)
    total = count.clamp(min=1).to(px.dtype)
    px = (px - (px * weight).sum(1, keepdim=True) / total[:, None]) * weight
    py = (py - (py * weight).sum(1, keepdim=True) / total[:, None]) * weight
    key = torch.atan2(py, px).masked_fill(~valid, 10.0)
    order = key.argsort(1)
    px, py, valid = px.gather(1, order), py.gather(1, order), valid.gather(1, order)
    # the unused tail repeats the first point, so the shoelace sum closes the polygon and adds nothing more
    px = torch.where(valid, px, px[:, :1])
    py = torch.where(valid, py, py[:, :1])
    area = (px * py.roll(-1, 1) - px.roll(-1, 1) * py).sum(1).abs() / 2
    return area.masked_fill(count <= 2, 0.0)


def _pair_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, mode_flag: int) -> torch.Tensor:
    """IoU (mode 0) or IoF (mode 1) of row-aligned clockwise boxes, as mmcv's single_box_iou_rotated.

    Always in float64, returned in the boxes' dtype and device. In float32 (mmcv computes in the boxes'
    dtype) the crossing of two nearly parallel edges, det ~ |e|^2 * their angle, keeps few correct digits:
    a crossing far outside both boxes can land inside them as a false vertex (IoU 0.9 read as 0.3), and
    no tolerance separates that from a true one. MPS has no float64, so its pairs go through the CPU.
    On CPU float64 costs 1.4-1.7x float32 here."""
    out = []
    work = torch.device('cpu') if boxes1.device.type == 'mps' else boxes1.device
    for start in range(0, boxes1.shape[0], PAIR_CHUNK):
        b1 = boxes1[start:start + PAIR_CHUNK].to(work, torch.float64)
        b2 = boxes2[start:start + PAIR_CHUNK].to(work, torch.float64)
        shift = (b1[:, :2] + b2[:, :2]) / 2
        inter = _intersection_area(*_vertices(b1, shift), *_vertices(b2, shift))
        area1, area2 = b1[:, 2] * b1[:, 3], b2[:, 2] * b2[:, 3]
        base = area1 + area2 - inter if mode_flag == 0 else area1
        iou = inter / base.masked_fill(base == 0, 1.0)
        out.append(iou.masked_fill((area1 < 1e-14) | (area2 < 1e-14), 0.0))
    return torch.cat(out).to(boxes1.device, boxes1.dtype) if out else boxes1.new_zeros(0)


def _may_overlap(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, M) False where the boxes' circumscribed circles are apart (their IoU is then exactly 0)."""
    radius1 = torch.hypot(boxes1[:, 2], boxes1[:, 3]) / 2
    radius2 = torch.hypot(boxes2[:, 2], boxes2[:, 3]) / 2
    # not the matrix-product form of cdist: it cancels badly at batched_nms's class offsets (~1e4 px)
    distance = torch.cdist(boxes1[:, :2].float(), boxes2[:, :2].float(),
                           compute_mode='donot_use_mm_for_euclid_dist')
    return distance <= (radius1[:, None] + radius2[None]).float() * (1 + 1e-5) + 1e-3


def box_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor, mode_flag: int = 0,
                    aligned: bool = False) -> torch.Tensor:
    """mmcv's `box_iou_rotated` kernel on clockwise (x, y, w, h, a) boxes: (N,) if aligned else (N, M)."""
    if aligned:
        return _pair_iou(boxes1, boxes2, mode_flag)
    ious = boxes1.new_zeros(boxes1.shape[0], boxes2.shape[0])
    rows, cols = _may_overlap(boxes1, boxes2).nonzero(as_tuple=True)
    ious[rows, cols] = _pair_iou(boxes1[rows], boxes2[cols], mode_flag)
    return ious


def _suppressed_by(kept: torch.Tensor, later: torch.Tensor, boxes: torch.Tensor,
                   iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) where box kept[i] suppresses box later[j]."""
    if iou_threshold > 0:
        rows, cols = _may_overlap(boxes[kept], boxes[later]).nonzero(as_tuple=True)
    else:  # IoU 0 >= threshold: every later box goes, overlapping or not
        rows, cols = torch.cartesian_prod(torch.arange(len(kept)), torch.arange(len(later))).to(kept.device).T
    over = _pair_iou(boxes[kept[rows]], boxes[later[cols]], 0) >= iou_threshold
    return rows[over], cols[over]


def nms_rotated(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                block: int = 128) -> torch.Tensor:
    """Indices kept by mmcv's `nms_rotated` kernel: in descending score order (torch's sort on that
    device, as mmcv's, so ties fall the same way), a kept box suppresses every later one whose IoU with it
    is >= iou_threshold. Like mmcv's CPU loop, IoUs are computed only for boxes still alive: the next
    `block` alive boxes are settled among themselves, then their kept ones strike the later boxes."""
    if dets.shape[0] == 0:
        return dets.new_zeros(0, dtype=torch.long)
    order = scores.sort(dim=0, descending=True)[1]
    boxes = dets[order, :5]
    n = boxes.shape[0]
    alive = np.ones(n, dtype=bool)
    start = 0
    while start < n:
        candidates = np.flatnonzero(alive[start:])[:block] + start
        if len(candidates) == 0:
            break
        on_device = torch.from_numpy(candidates).to(boxes.device)
        rows, cols = _suppressed_by(on_device, on_device, boxes, iou_threshold)
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        later_in_block = cols > rows
        rows, cols = rows[later_in_block], cols[later_in_block]
        for i in range(len(candidates)):  # greedy within the block, in score order
            if alive[candidates[i]]:
                alive[candidates[cols[rows == i]]] = False
        start = candidates[-1] + 1
        kept = candidates[alive[candidates]]
        later = np.flatnonzero(alive[start:]) + start
        if len(later):
            _, cols = _suppressed_by(torch.from_numpy(kept).to(boxes.device),
                                     torch.from_numpy(later).to(boxes.device), boxes, iou_threshold)
            alive[later[cols.cpu().numpy()]] = False
    return order[torch.from_numpy(np.flatnonzero(alive)).to(order.device)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """mmcv's horizontal `nms` kernel (suppress at IoU > threshold; `offset` 1 counts pixels inclusively),
    through torchvision's kernel: widening x2, y2 by `offset` gives the same IoU."""
    from torchvision.ops import nms as torchvision_nms

    if offset:
        boxes = torch.cat((boxes[:, :2], boxes[:, 2:4] + offset), 1)
    return torchvision_nms(boxes, scores, float(iou_threshold))


# ------------------------------------------------------------------------------------ RoIAlignRotated

def _sampling_plan(rois: torch.Tensor, height: int, width: int, pooled: tuple[int, int], spatial_scale: float,
                   sampling_ratio: int, aligned: bool, clockwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, weights), each (R * PH * PW, samples * 4): which pixels of the (B * H * W, C) feature table
    every output bin averages, with mmcv's bilinear weights divided by the sample count."""
    rois = rois.detach()
    pooled_h, pooled_w = pooled
    dtype = rois.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype).item()
    offset = 0.5 if aligned else 0.0
    batch = rois[:, 0].to(torch.long)
    centre_w = rois[:, 1] * scale - offset
    centre_h = rois[:, 2] * scale - offset
    roi_w, roi_h = rois[:, 3] * scale, rois[:, 4] * scale
    theta = -rois[:, 5] if clockwise else rois[:, 5]
    if aligned:
        if bool(((roi_w < 0) | (roi_h < 0)).any()):
            raise ValueError('ROIs in ROIAlignRotated do not have non-negative size!')
    else:  # mmcv keeps this for backward compatibility
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
    if sampling_ratio > 0:
        grid_h = torch.full_like(batch, sampling_ratio)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / pooled_h).to(torch.long)
        grid_w = torch.ceil(roi_w / pooled_w).to(torch.long)
    most_h = max(int(grid_h.max()), 1) if len(rois) else 1
    most_w = max(int(grid_w.max()), 1) if len(rois) else 1
    count = (grid_h * grid_w).clamp(min=1).to(dtype)

    def axis(n_bins, most, start, bin_size, grid):
        """(R, bins, samples) sample offsets along one RoI axis; NaN beyond this RoI's grid."""
        bins = torch.arange(n_bins, device=rois.device, dtype=dtype)[None, :, None]
        steps = torch.arange(most, device=rois.device, dtype=dtype)[None, None] + 0.5
        grid_f = grid.to(dtype)[:, None, None]
        pos = start[:, None, None] + bins * bin_size[:, None, None] + steps * bin_size[:, None, None] / grid_f
        return pos, (steps < grid_f).expand_as(pos)

    yy, inside_h = axis(pooled_h, most_h, -roi_h / 2, bin_h, grid_h)     # (R, PH, SH)
    xx, inside_w = axis(pooled_w, most_w, -roi_w / 2, bin_w, grid_w)     # (R, PW, SW)
    yy, xx = yy[:, :, None, :, None], xx[:, None, :, None, :]           # (R, PH, PW, SH, SW)
    c, s = cos[:, None, None, None, None], sin[:, None, None, None, None]
    y = yy * c - xx * s + centre_h[:, None, None, None, None]
    x = yy * s + xx * c + centre_w[:, None, None, None, None]
    used = inside_h[:, :, None, :, None] & inside_w[:, None, :, None, :]
    used = used & ~((y < -1.0) | (y > height) | (x < -1.0) | (x > width))
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_low, x_low = y.to(torch.long), x.to(torch.long)
    top_h, top_w = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = y_low.clamp(max=height - 1), x_low.clamp(max=width - 1)
    y = torch.where(top_h, y_low.to(dtype), y)
    x = torch.where(top_w, x_low.to(dtype), x)
    y_high = torch.where(top_h, y_low, y_low + 1)
    x_high = torch.where(top_w, x_low, x_low + 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1. - ly, 1. - lx
    weights = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), -1)
    weights = torch.where(used[..., None], weights, torch.zeros_like(weights))
    weights = weights / count[:, None, None, None, None, None]
    base = (batch * (height * width))[:, None, None, None, None, None]
    rows = base + torch.stack((y_low * width + x_low, y_low * width + x_high,
                               y_high * width + x_low, y_high * width + x_high), -1)
    rows = torch.where(used[..., None], rows, torch.zeros_like(rows))
    n_bins = len(rois) * pooled_h * pooled_w
    return rows.reshape(n_bins, -1), weights.reshape(n_bins, -1)


def roi_align_rotated(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                      spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True,
                      clockwise: bool = False) -> torch.Tensor:
    """mmcv's RoIAlignRotated forward, (R, C, PH, PW), differentiable in `features` by autograd (the
    gradient of a weighted gather is mmcv's scatter-add backward)."""
    batch, channels, height, width = features.shape
    rows, weights = _sampling_plan(rois, height, width, output_size, spatial_scale, sampling_ratio,
                                   aligned, clockwise)
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    if rows.shape[0] == 0:
        return features.new_zeros(0, channels, *output_size)
    # embedding_bag: a weighted gather-and-sum per bin without materialising (bins, samples, C)
    pooled = F.embedding_bag(rows, table, per_sample_weights=weights.to(table.dtype), mode='sum')
    return pooled.reshape(len(rois), *output_size, channels).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------- dispatching

class TorchKernels:
    """The torch-native kernels behind mmcv's `ext_module` calling convention (the arguments mmcv's Python
    wrappers in mmcv/ops/*.py pass, positional or by name): served by `DispatchingKernels` and, where mmcv
    was installed without its extension, by `domainmona.detection.mmcv_ext` as `mmcv._ext` itself."""

    OPS = ('nms', 'nms_rotated', 'box_iou_rotated', 'roi_align_rotated_forward', 'roi_align_rotated_backward')

    @staticmethod
    def nms(boxes, scores, iou_threshold, offset):
        return nms(boxes, scores, iou_threshold, offset)

    @staticmethod
    def nms_rotated(dets, scores, order, dets_sorted, labels, iou_threshold, multi_label):
        return nms_rotated(dets, scores, iou_threshold)

    @staticmethod
    def box_iou_rotated(boxes1, boxes2, ious, mode_flag, aligned):
        ious.copy_(box_iou_rotated(boxes1, boxes2, mode_flag, aligned).reshape(ious.shape))

    @staticmethod
    def roi_align_rotated_forward(features, rois, output, pooled_height, pooled_width, spatial_scale,
                                  sampling_ratio, aligned, clockwise):
        output.copy_(roi_align_rotated(features, rois, (pooled_height, pooled_width), spatial_scale,
                                       sampling_ratio, aligned, clockwise))

    @staticmethod
    def roi_align_rotated_backward(grad_output, rois, grad_input, pooled_height, pooled_width,
                                   spatial_scale, sampling_ratio, aligned, clockwise):
        with torch.enable_grad():
            features = grad_input.new_zeros(grad_input.shape, requires_grad=True)
            pooled = roi_align_rotated(features, rois, (pooled_height, pooled_width), spatial_scale,
                                       sampling_ratio, aligned, clockwise)
            grad_input.copy_(torch.autograd.grad(pooled, features, grad_output)[0])


class DispatchingKernels:
    """Stands in for an mmcv module's `ext_module`: each call of a `TorchKernels.OPS` kernel goes to mmcv's
    or to the torch one by the device of its first tensor (see `implementation`); every other kernel
    straight to mmcv."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __getattr__(self, name):
        if name not in TorchKernels.OPS:
            return getattr(self.compiled, name)

        def kernel(first, *args, **kwargs):
            chosen = self.compiled if implementation(first.device) == 'mmcv' else TorchKernels
            return getattr(chosen, name)(first, *args, **kwargs)
        return kernel


def install_rotated_ops() -> None:
    """Route mmcv's rotated kernels through `DispatchingKernels` (idempotent); checks the switch now so
    a bad value (or `mmcv` without the compiled build) stops a command before any work."""
    implementation(torch.device('cpu'))
    for name in PATCHED_MODULES:
        module = importlib.import_module(name)
        if not isinstance(module.ext_module, DispatchingKernels):
            module.ext_module = DispatchingKernels(module.ext_module)
