"""The torch-native rotated ops equal references that need no compiled code (shapely polygons for IoU, a
brute-force loop for NMS, a naive float64 per-sample loop for RoIAlignRotated) and, where mmcv's compiled
extension is installed, mmcv's own CPU kernels; the switch picks between them."""

import math

import numpy as np
import pytest
import shapely
import torch

from domainmona.detection import mmcv_ext, rotated_ops  # before mmcv.ops: serves mmcv._ext without the build
from domainmona.detection.dota.polygon_iou import quad_pair_iou
from domainmona.errors import UserError
from mmcv.ops import RoIAlignRotated, box_iou_rotated, nms_rotated  # noqa: E402,I001

torch.set_num_threads(1)
needs_compiled = pytest.mark.skipif(
    not mmcv_ext.compiled_ops_installed(),
    reason="compares with mmcv's compiled kernels, which are not installed (DOMAINMONA_MMCV_OPS=compile make setup)")


def random_boxes(n: int, seed: int, field: float = 100) -> torch.Tensor:
    """(n, 5) clockwise boxes across angles in [-pi/2, pi/2], a fifth of them degenerate: copies of another
    box, nested (half size, same centre), touching (shifted by exactly the width), zero width or height."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(n, 5, generator=g)
    boxes[:, :2] *= field
    boxes[:, 2:4] = boxes[:, 2:4] * 40 + 0.5
    boxes[:, 4] = (boxes[:, 4] - 0.5) * math.pi
    boxes[0, 4], boxes[1, 4] = math.pi / 2, -math.pi / 2
    k = n // 20
    src = torch.randint(0, n, (4 * k,), generator=g)
    boxes[:k] = boxes[src[:k]]                                              # identical
    boxes[k:2 * k] = boxes[src[k:2 * k]]
    boxes[k:2 * k, 2:4] /= 2                                                # nested
    boxes[2 * k:3 * k] = boxes[src[2 * k:3 * k]]
    boxes[2 * k:3 * k, 4] = 0
    boxes[2 * k:3 * k, 0] += boxes[2 * k:3 * k, 2]                          # touching a horizontal twin
    boxes[src[2 * k:3 * k], 4] = 0
    boxes[3 * k:4 * k, 2 + torch.randint(0, 2, (k,), generator=g)] = 0      # zero area
    return boxes[torch.randperm(n, generator=g)]


@pytest.fixture
def switch(monkeypatch):
    rotated_ops.install_rotated_ops()

    def set_to(value):
        monkeypatch.setenv(rotated_ops.SWITCH, value)
    return set_to


@needs_compiled
@pytest.mark.parametrize('mode', ['iou', 'iof'])
@pytest.mark.parametrize('clockwise', [True, False])
def test_box_iou_rotated_matches_mmcv(switch, mode, clockwise):
    boxes1, boxes2 = random_boxes(1000, 1), random_boxes(800, 2)
    boxes2[:300] = boxes1[:300]
    switch('mmcv')
    expected = box_iou_rotated(boxes1, boxes2, mode, clockwise=clockwise)
    expected_aligned = box_iou_rotated(boxes1[:800], boxes2, mode, aligned=True, clockwise=clockwise)
    switch('torch')
    got = box_iou_rotated(boxes1, boxes2, mode, clockwise=clockwise)
    got_aligned = box_iou_rotated(boxes1[:800], boxes2, mode, aligned=True, clockwise=clockwise)
    assert got.shape == (1000, 800)
    assert (expected > 0).sum() > 5_000 and (expected_aligned[:300] > 0.99).sum() > 200
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_aligned, expected_aligned, atol=1e-4, rtol=0)


@needs_compiled
@pytest.mark.parametrize('threshold', [0.0, 0.1, 0.5, 0.9])
def test_nms_rotated_keeps_what_mmcv_keeps(switch, threshold):
    boxes = random_boxes(2000, 3, field=250)
    scores = torch.rand(2000, generator=torch.Generator().manual_seed(4))
    scores[::7] = 0.5                                                       # ties: order by index, as mmcv
    switch('mmcv')
    expected_dets, expected = nms_rotated(boxes, scores, threshold)
    switch('torch')
    got_dets, got = nms_rotated(boxes, scores, threshold)
    assert 0 < len(expected) < 2000 or threshold == 0.0
    assert torch.equal(got, expected)
    assert torch.equal(got_dets, expected_dets)


@needs_compiled
def test_batched_nms_rotated_as_the_roi_head_calls_it(switch):
    from mmcv.ops import batched_nms

    g = torch.Generator().manual_seed(5)
    # proposals: 10 jittered boxes per object; batched_nms moves each class ~1e4 px away from the others
    boxes = random_boxes(200, 5, field=1000).repeat_interleave(10, 0) + torch.randn(2000, 5, generator=g)
    labels = torch.randint(0, 15, (2000,), generator=g)
    scores = torch.rand(2000, generator=torch.Generator().manual_seed(6))
    cfg = dict(type='nms_rotated', iou_threshold=0.1)
    switch('mmcv')
    expected = batched_nms(boxes, scores, labels, cfg)
    switch('torch')
    got = batched_nms(boxes, scores, labels, cfg)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


@needs_compiled
def test_horizontal_nms_as_the_rpn_calls_it(switch):
    from mmcv.ops import batched_nms

    g = torch.Generator().manual_seed(7)
    corner = torch.rand(2000, 2, generator=g) * 150
    boxes = torch.cat((corner, corner + torch.rand(2000, 2, generator=g) * 80), 1)
    scores, levels = torch.rand(2000, generator=g), torch.randint(0, 5, (2000,), generator=g)
    switch('mmcv')
    expected = batched_nms(boxes, scores, levels, dict(type='nms', iou_threshold=0.8))
    expected_offset = batched_nms(boxes, scores, levels, dict(type='nms', iou_threshold=0.3, offset=1))
    switch('torch')
    got = batched_nms(boxes, scores, levels, dict(type='nms', iou_threshold=0.8))
    got_offset = batched_nms(boxes, scores, levels, dict(type='nms', iou_threshold=0.3, offset=1))
    assert torch.equal(got[1], expected[1]) and torch.equal(got_offset[1], expected_offset[1])
    assert len(expected_offset[1]) < len(expected[1]) < 2000


def random_rois(n: int, batch: int, size: int, seed: int) -> torch.Tensor:
    """(n, 6) RoIs in image pixels (stride 2 below), some reaching past the map, some smaller than a bin."""
    g = torch.Generator().manual_seed(seed)
    rois = torch.rand(n, 6, generator=g)
    rois[:, 0] = torch.randint(0, batch, (n,), generator=g)
    rois[:, 1:3] = rois[:, 1:3] * (2 * size + 20) - 10
    rois[:, 3:5] = rois[:, 3:5] * 40
    rois[:8, 3:5] = 0.5
    rois[:, 5] = (rois[:, 5] - 0.5) * math.pi
    return rois


@pytest.mark.parametrize('sampling_ratio,aligned,clockwise', [(2, False, True), (0, True, False),
                                                                (0, False, True), (1, True, True)])
@needs_compiled
def test_roi_align_rotated_matches_mmcv(switch, sampling_ratio, aligned, clockwise):
    features = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(8))
    rois = random_rois(400, 2, 32, 9)
    layer = RoIAlignRotated((7, 7), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned,
                            clockwise=clockwise)
    grad_out = torch.randn(400, 16, 7, 7, generator=torch.Generator().manual_seed(10))
    results = {}
    for impl in ('mmcv', 'torch'):
        switch(impl)
        leaf = features.clone().requires_grad_()
        out = layer(leaf, rois)
        out.backward(grad_out)
        results[impl] = out.detach(), leaf.grad
    assert results['mmcv'][0].abs().sum() > 0 and results['mmcv'][1].abs().sum() > 0
    torch.testing.assert_close(results['torch'][0], results['mmcv'][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results['torch'][1], results['mmcv'][1], atol=1e-4, rtol=0)
    direct = rotated_ops.roi_align_rotated(features, rois, (7, 7), 0.5, sampling_ratio, aligned, clockwise)
    torch.testing.assert_close(direct, results['mmcv'][0], atol=1e-5, rtol=0)


def test_roi_align_rotated_gradcheck_in_double():
    features = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 5.0, 4.0, 6.0, 3.0, 0.4], [0, 2.0, 9.0, 3.5, 5.0, -1.2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: rotated_ops.roi_align_rotated(f, rois, (2, 3), 0.5, 0, True, True), (features,))


@needs_compiled
def test_switch_picks_the_kernel(switch):
    """mmcv's CPU IoU kernel reads float32 only, so a float64 call shows which kernel ran."""
    boxes = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3], [6.0, 5.0, 4.0, 2.0, -0.2]], dtype=torch.float64)
    for value in ('auto', 'mmcv'):
        switch(value)
        with pytest.raises(RuntimeError, match='Float'):
            box_iou_rotated(boxes, boxes)
    switch('torch')
    iou = box_iou_rotated(boxes, boxes)
    assert iou.dtype == torch.float64
    torch.testing.assert_close(iou, box_iou_rotated(boxes.float(), boxes.float()).double(), atol=1e-6, rtol=0)
    assert iou[0, 0] == pytest.approx(1.0) and 0.3 < iou[0, 1] < 0.9


@needs_compiled
def test_auto_uses_torch_where_mmcv_has_no_kernel(switch):
    from mmcv.ops import get_compiling_cuda_version

    switch('auto')
    assert rotated_ops.implementation(torch.device('cpu')) == 'mmcv'
    assert rotated_ops.implementation(torch.device('mps')) == 'torch'
    cuda = 'torch' if get_compiling_cuda_version() == 'not available' else 'mmcv'
    assert rotated_ops.implementation(torch.device('cuda')) == cuda
    switch('torch')
    assert rotated_ops.implementation(torch.device('cpu')) == 'torch'


def test_bad_switch_value_is_a_user_error(switch):
    switch('cuda')
    with pytest.raises(UserError, match="DOMAINMONA_ROTATED_OPS='cuda' is not one of auto, mmcv, torch"):
        rotated_ops.install_rotated_ops()


# ------------------------------------------------------- references that need no compiled code

def polygons(boxes: torch.Tensor) -> np.ndarray:
    """shapely polygons of (N, 5) boxes in float64, corners as mmcv's kernel places them
    (box_iou_rotated_utils.hpp, get_rotated_vertices): (x + cos·dx - sin·dy, y + sin·dx + cos·dy)."""
    b = boxes.double().numpy()
    cos, sin = np.cos(b[:, 4])[:, None], np.sin(b[:, 4])[:, None]
    dx = np.array([0.5, -0.5, -0.5, 0.5])[None] * b[:, 2:3]
    dy = np.array([0.5, 0.5, -0.5, -0.5])[None] * b[:, 3:4]
    x = b[:, :1] + cos * dx - sin * dy
    y = b[:, 1:2] + sin * dx + cos * dy
    return shapely.polygons(np.stack((x, y), -1))


def shapely_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, mode: str = 'iou') -> np.ndarray:
    """(N, M) IoU (or intersection over the first area) of exact polygons; 0 where either area is
    below mmcv's 1e-14, as the kernel defines it."""
    p1, p2 = polygons(boxes1)[:, None], polygons(boxes2)[None]
    inter = shapely.area(shapely.intersection(p1, p2))
    area1 = (boxes1[:, 2] * boxes1[:, 3]).double().numpy()[:, None]
    area2 = (boxes2[:, 2] * boxes2[:, 3]).double().numpy()[None]
    denominator = area1 + 0 * area2 if mode == 'iof' else area1 + area2 - inter
    empty = (area1 < 1e-14) | (area2 < 1e-14)
    return np.where(empty, 0.0, inter / np.where(empty, 1.0, denominator))


@pytest.mark.parametrize('mode', ['iou', 'iof'])
def test_box_iou_rotated_equals_shapely_polygons(mode):
    boxes1, boxes2 = random_boxes(300, 11), random_boxes(250, 12)
    boxes2[:100] = boxes1[:100]
    expected = shapely_iou(boxes1, boxes2, mode)
    got = rotated_ops.box_iou_rotated(boxes1, boxes2, 1 if mode == 'iof' else 0)
    assert (expected > 0).sum() > 1_000 and (np.diag(expected[:100]) > 0.99).sum() > 70
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, rtol=0)
    aligned = rotated_ops.box_iou_rotated(boxes1[:250], boxes2, 1 if mode == 'iof' else 0, aligned=True)
    np.testing.assert_allclose(aligned.numpy(), np.diag(expected[:250]), atol=1e-4, rtol=0)


def brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy NMS, one box at a time in descending score order: a kept box removes every later box whose
    exact polygon IoU with it is >= threshold."""
    iou = shapely_iou(boxes, boxes)
    keep, removed = [], set()
    for i in np.argsort(-scores.numpy(), kind='stable'):
        if i in removed:
            continue
        keep.append(int(i))
        removed.update(np.flatnonzero(iou[i] >= threshold).tolist())
    return keep


@pytest.mark.parametrize('threshold', [0.1, 0.5, 0.9])
def test_nms_rotated_keeps_what_brute_force_keeps(threshold):
    boxes = random_boxes(400, 13, field=150)
    scores = torch.rand(400, generator=torch.Generator().manual_seed(14))  # no ties: one order
    keep = rotated_ops.nms_rotated(boxes, scores, threshold, block=32)  # several blocks
    expected = brute_force_nms(boxes, scores, threshold)
    assert 0 < len(expected) < 400
    assert keep.tolist() == expected


def test_horizontal_nms_with_offset_keeps_what_brute_force_keeps():
    g = torch.Generator().manual_seed(15)
    corner = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat((corner, corner + torch.rand(300, 2, generator=g) * 40), 1).double()
    scores = torch.rand(300, generator=g).double()
    for offset in (0, 1):
        b = boxes.numpy()
        w, h = b[:, 2] - b[:, 0] + offset, b[:, 3] - b[:, 1] + offset
        iw = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + offset
        ih = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + offset
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        iou = inter / ((w * h)[:, None] + (w * h)[None] - inter)
        keep, removed = [], set()
        for i in np.argsort(-scores.numpy(), kind='stable'):
            if i not in removed:
                keep.append(int(i))
                removed.update(np.flatnonzero(iou[i] > 0.3).tolist())  # mmcv's nms: IoU > threshold
        assert rotated_ops.nms(boxes, scores, 0.3, offset).tolist() == keep


def naive_roi_align_rotated(features, rois, pooled, spatial_scale, sampling_ratio, aligned, clockwise):
    """mmcv's RoIAlignRotated CPU kernel (roi_align_rotated.cpp) as a float64 loop over every RoI, bin and
    sample: returns the output and, for the backward, each output's (pixel index, weight) list."""
    _, channels, height, width = features.shape
    ph_n, pw_n = pooled
    out = np.zeros((len(rois), channels, ph_n, pw_n))
    taps = {}
    f = features.double().numpy()
    for n, roi in enumerate(rois.double().numpy()):
        batch = int(roi[0])
        offset = 0.5 if aligned else 0.0
        cx, cy = roi[1] * spatial_scale - offset, roi[2] * spatial_scale - offset
        rw, rh = roi[3] * spatial_scale, roi[4] * spatial_scale
        theta = -roi[5] if clockwise else roi[5]
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bin_h, bin_w = rh / ph_n, rw / pw_n
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph_n)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw_n)
        count = max(grid_h * grid_w, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                bin_taps = []
                for iy in range(grid_h):
                    yy = -rh / 2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        xx = -rw / 2 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        y = yy * math.cos(theta) - xx * math.sin(theta) + cy
                        x = yy * math.sin(theta) + xx * math.cos(theta) + cx
                        if y < -1.0 or y > height or x < -1.0 or x > width:
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        y_low, x_low = int(y), int(x)
                        if y_low >= height - 1:
                            y_low = y_high = height - 1
                            y = float(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_low = x_high = width - 1
                            x = float(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = y - y_low, x - x_low
                        for (yi, xi), w in (((y_low, x_low), (1 - ly) * (1 - lx)), ((y_low, x_high), (1 - ly) * lx),
                                            ((y_high, x_low), ly * (1 - lx)), ((y_high, x_high), ly * lx)):
                            bin_taps.append((batch, yi, xi, w / count))
                taps[n, ph, pw] = bin_taps
                for b, yi, xi, w in bin_taps:
                    out[n, :, ph, pw] += w * f[b, :, yi, xi]
    return out, taps


@pytest.mark.parametrize('sampling_ratio,aligned,clockwise', [(2, False, True), (0, True, False),
                                                                (0, False, True), (1, True, True)])
def test_roi_align_rotated_equals_the_naive_float64_loop(sampling_ratio, aligned, clockwise):
    features = torch.randn(2, 3, 12, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    rois = random_rois(30, 2, 12, 17).double()
    rois[:, 3:5] /= 2
    grad_out = torch.randn(30, 3, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    expected, taps = naive_roi_align_rotated(features, rois, (3, 4), 0.5, sampling_ratio, aligned, clockwise)
    expected_grad = np.zeros(features.shape)
    g = grad_out.numpy()
    for (n, ph, pw), bin_taps in taps.items():
        for b, yi, xi, w in bin_taps:
            expected_grad[b, :, yi, xi] += w * g[n, :, ph, pw]
    assert np.abs(expected).sum() > 0 and any(not t for t in taps.values())  # some samples fall outside
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        leaf = features.detach().to(dtype).clone().requires_grad_()
        out = rotated_ops.roi_align_rotated(leaf, rois.to(dtype), (3, 4), 0.5, sampling_ratio, aligned, clockwise)
        out.backward(grad_out.to(dtype))
        np.testing.assert_allclose(out.detach().double().numpy(), expected, atol=tolerance, rtol=0)
        np.testing.assert_allclose(leaf.grad.double().numpy(), expected_grad, atol=10 * tolerance, rtol=0)


@pytest.mark.skipif(mmcv_ext.compiled_ops_installed(), reason="the stand-in serves mmcv._ext only without the build")
def test_without_the_compiled_build_mmcv_ops_run_torch_and_refuse_the_rest_in_one_line(monkeypatch):
    import importlib

    import mmcv.ops

    assert getattr(importlib.import_module('mmcv._ext'), mmcv_ext.MARKER)
    monkeypatch.setenv(rotated_ops.SWITCH, 'auto')
    rotated_ops.install_rotated_ops()
    assert rotated_ops.implementation(torch.device('cpu')) == 'torch'
    assert mmcv.ops.get_compiling_cuda_version() == 'not available'
    boxes = random_boxes(50, 19)
    _, keep = nms_rotated(boxes, torch.rand(50, generator=torch.Generator().manual_seed(20)), 0.5)
    assert 0 < len(keep) <= 50
    with pytest.raises(UserError, match="mmcv op 'sigmoid_focal_loss_forward' needs mmcv's compiled extension.*"
                                        "DOMAINMONA_MMCV_OPS=compile make setup"):
        mmcv.ops.sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    monkeypatch.setenv(rotated_ops.SWITCH, 'mmcv')
    with pytest.raises(UserError, match="DOMAINMONA_ROTATED_OPS=mmcv asks for mmcv's compiled kernels"):
        rotated_ops.install_rotated_ops()


# ------------------------------------------- near-duplicate boxes: (nearly) coincident edges and corners

def exact_pair_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> np.ndarray:
    """IoU of boxes1[i] with boxes2[i] by the DOTA evaluation's float64 Sutherland-Hodgman clip (shapely's
    GEOS returns an empty intersection for some near-identical pairs: IoU 0 for 0.9999996)."""
    def corners(boxes):
        return shapely.get_coordinates(polygons(boxes)).reshape(-1, 5, 2)[:, :4]
    return quad_pair_iou(corners(boxes1), corners(boxes2))


def near_duplicates(angle: float, centre: float, offset: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 5) float32 boxes around (centre, centre) and copies with each parameter moved by up to `offset`
    (px; the angle by offset / 100 rad), one parameter at a time and all at once: corners and edges of a
    pair coincide to within the offset, where exact inside/crossing tests decide by rounding."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[40., 20.], [100., 3.], [8., 8.], [300., 50.]])
    base = torch.cat((torch.full((4, 2), centre) + torch.rand(4, 2, generator=g) * 10, sizes,
                      torch.full((4, 1), angle)), 1).double()
    boxes1, boxes2 = [], []
    scale = torch.tensor([1., 1., 1., 1., 0.01], dtype=torch.float64) * offset
    for moved in [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]]:
        for _ in range(8):
            step = torch.zeros(4, 5, dtype=torch.float64)
            step[:, moved] = (torch.rand(4, len(moved), generator=g, dtype=torch.float64) * 2 - 1) * scale[moved]
            boxes1.append(base)
            boxes2.append(base + step)
    return torch.cat(boxes1).float(), torch.cat(boxes2).float()


@pytest.mark.parametrize('angle', [0.0, math.pi / 2, -math.pi / 2, math.pi / 4, 0.3])
@pytest.mark.parametrize('centre', [50.0, 5000.0])
@pytest.mark.parametrize('offset', [1e-5, 1e-4, 1e-3])
def test_near_identical_boxes_in_float32_give_the_exact_iou(angle, centre, offset):
    # reference: exact polygons (float64) of the very float32 boxes, so only the op's arithmetic counts
    # (rounding 5000 px to float32 moves a corner by up to 2.4e-4 px). Before: 0.333 for some pairs.
    boxes1, boxes2 = near_duplicates(angle, centre, offset, seed=int(centre) + int(1 / offset))
    expected = exact_pair_iou(boxes1, boxes2)
    got32 = rotated_ops.box_iou_rotated(boxes1, boxes2, aligned=True)
    got64 = rotated_ops.box_iou_rotated(boxes1.double(), boxes2.double(), aligned=True)
    assert got32.dtype == torch.float32 and expected.min() > 0.9
    np.testing.assert_allclose(got32.numpy(), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got64.numpy(), expected, atol=1e-6, rtol=0)  # _PARALLEL slivers, rounding
    np.testing.assert_allclose(got32.numpy(), got64.numpy(), atol=1e-7, rtol=0)  # float32 output rounding
    full = rotated_ops.box_iou_rotated(boxes1, boxes2)  # the (N, M) path, through the overlap filter
    np.testing.assert_allclose(torch.diagonal(full).numpy(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_same_rectangle_written_differently_has_iou_one(dtype):
    # w, h swapped with the angle + pi/2, or the angle + pi: the same corners in another order, each on the
    # other box's edges up to rounding (mmcv's kernel and the op before gave IoU 0 for many of these); in
    # float32 the turned angle is itself rounded (~1e-7 rad), hence the exact IoU as the reference
    boxes = random_boxes(2000, 21, field=5000)
    boxes = boxes[(boxes[:, 2] > 1) & (boxes[:, 3] > 1)].to(dtype)
    swapped = torch.stack((boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 2], boxes[:, 4] + math.pi / 2), 1)
    turned = torch.cat((boxes[:, :4], boxes[:, 4:] + math.pi), 1)
    for other in (boxes.clone(), swapped, turned):
        iou = rotated_ops.box_iou_rotated(boxes, other, aligned=True)
        np.testing.assert_allclose(iou.numpy(), exact_pair_iou(boxes, other), atol=1e-7, rtol=0)
        assert iou.min() > 1 - 1e-5


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_collinear_and_nearly_parallel_edges(dtype):
    # a box slid along its length shares two edge lines: their "crossing" is rounding noise and once landed
    # anywhere on the edge (IoU 0.8 off, float64 too); nearly parallel edges 3 px apart, 1e-6 rad off, once
    # crossed inside the boxes in float32
    g = torch.Generator().manual_seed(22)
    n = 3000
    boxes = torch.cat((torch.rand(n, 2, generator=g) * 5000, torch.rand(n, 1, generator=g) * 80 + 20,
                       torch.rand(n, 1, generator=g) * 80 + 1, (torch.rand(n, 1, generator=g) - 0.5) * math.pi), 1)
    boxes[::4, 4], boxes[1::4, 4], boxes[2::4, 4] = 0, math.pi / 2, math.pi / 4
    boxes = boxes.double()
    slid = boxes.clone()
    slid[:, 0] += 10 * torch.cos(boxes[:, 4])
    slid[:, 1] += 10 * torch.sin(boxes[:, 4])
    turned = boxes.clone()
    turned[:, 4] += 1e-6
    turned[:, 0] += 3
    for other in (slid, turned):
        first, second = boxes.to(dtype), other.to(dtype)
        expected = exact_pair_iou(first, second)
        got = rotated_ops.box_iou_rotated(first, second, aligned=True)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


def test_float32_boxes_give_the_float64_iou():
    # the op computes in float64 whatever the input dtype: float32 differs only by rounding its output
    boxes1, boxes2 = random_boxes(600, 23, field=3000), random_boxes(500, 24, field=3000)
    boxes2[:200] = boxes1[:200]
    got32 = rotated_ops.box_iou_rotated(boxes1, boxes2)
    got64 = rotated_ops.box_iou_rotated(boxes1.double(), boxes2.double())
    assert got32.dtype == torch.float32 and (got64 > 0).sum() > 300
    torch.testing.assert_close(got32.double(), got64, atol=1e-7, rtol=0)


@needs_compiled
def test_box_iou_rotated_matches_mmcv_within_1e5_on_generic_boxes(switch):
    # generic boxes (no copies, touching or empty ones, where mmcv's float32 tests decide by rounding)
    g = torch.Generator().manual_seed(25)
    boxes1 = torch.cat((torch.rand(500, 2, generator=g) * 200, torch.rand(500, 2, generator=g) * 40 + 5,
                        (torch.rand(500, 1, generator=g) - 0.5) * math.pi), 1)
    boxes2 = boxes1[torch.randperm(500, generator=g)] + torch.randn(500, 5, generator=g) * 3
    boxes2[:, 2:4] = boxes2[:, 2:4].abs() + 1
    switch('mmcv')
    expected = box_iou_rotated(boxes1, boxes2)
    switch('torch')
    got = box_iou_rotated(boxes1, boxes2)
    assert (expected > 0).sum() > 1_000
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('threshold', [0.5, 0.9, 0.99])
def test_nms_rotated_keeps_one_of_two_near_duplicates(switch, threshold):
    boxes1, boxes2 = [], []
    for angle in (0.0, math.pi / 2, math.pi / 4, 0.3):
        first, second = near_duplicates(angle, 5000.0, 1e-5, seed=26)
        boxes1.append(first)
        boxes2.append(second)
    boxes1, boxes2 = torch.cat(boxes1), torch.cat(boxes2)
    # each pair on its own, far from the others (batched_nms's class offsets do the same)
    spread = torch.arange(len(boxes1), dtype=torch.float32)[:, None] * torch.tensor([[1000., 0, 0, 0, 0]])
    boxes = torch.cat((boxes1 + spread, boxes2 + spread))
    scores = torch.rand(len(boxes), generator=torch.Generator().manual_seed(27))
    keep = rotated_ops.nms_rotated(boxes, scores, threshold)
    pair = torch.arange(len(boxes)) % len(boxes1)
    assert sorted(pair[keep].tolist()) == list(range(len(boxes1)))
    switch('torch')
    _, kept = nms_rotated(boxes, scores, threshold)  # as merge and the RoI head call it
    assert sorted(pair[kept].tolist()) == list(range(len(boxes1)))
