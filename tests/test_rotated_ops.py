"""The torch-native rotated ops equal mmcv's compiled CPU kernels, and the switch picks between them."""

import math

import pytest
import torch
from mmcv.ops import RoIAlignRotated, box_iou_rotated, nms_rotated

from domainmona.detection import rotated_ops
from domainmona.errors import UserError

torch.set_num_threads(1)


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
