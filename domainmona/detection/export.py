"""The two ONNX graphs of an exported Oriented R-CNN (le90) and the settings its glue needs.

Why two graphs: between the RPN and the RoI head sit proposal selection (top-k per level, horizontal NMS)
and the level-by-scale choice of rotated RoIAlign, whose shapes depend on the data; a graph exported at
one proposal count would silently drop or pad proposals. So the graphs stop where the shapes become
data-dependent and `domainmona.onnx_detector` runs the stages between and after them in numpy:

- ``network`` (MODEL.onnx): normalised, padded image (1, C, S, S) -> FPN levels P2-P5 for RoIAlign, and
  for each of the 5 RPN levels the objectness (sigmoid) and the proposal boxes decoded from that level's
  anchors (mmrotate's MidpointOffsetCoder, clamped to the S x S image), all anchors of the level.
- ``roi_head`` (MODEL.roi_head.onnx): pooled RoI features (R, C, 7, 7) and their RoIs (R, 5) -> class
  probabilities (R, classes + 1, softmax, background last) and the decoded le90 boxes (R, 5); R dynamic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from domainmona.errors import UserError

FEATURES = ('p2', 'p3', 'p4', 'p5')  # the RoI extractor's inputs, strides 4..32


class NetworkGraph(nn.Module):
    """Backbone, FPN and RPN head, with the anchors of an S x S input as constants."""

    def __init__(self, model, size: int):
        super().__init__()
        self.model, self.size = model, size
        head = model.rpn_head
        sizes = [(-(-size // int(s[1])), -(-size // int(s[0]))) for s in head.prior_generator.strides]
        priors = head.prior_generator.grid_priors(sizes, device='cpu')
        for level, p in enumerate(priors):
            self.register_buffer(f'anchors{level}', getattr(p, 'tensor', p).float().clone())
        self.levels = len(priors)

    def forward(self, image):
        head = self.model.rpn_head
        feats = self.model.extract_feat(image)
        scores, deltas = head(feats)
        outputs = list(feats[:len(FEATURES)])
        for level in range(self.levels):
            score = scores[level][0].permute(1, 2, 0).reshape(-1).sigmoid()
            delta = deltas[level][0].permute(1, 2, 0).reshape(-1, head.bbox_coder.encode_size)
            outputs += [score, delta, getattr(self, f'anchors{level}')]
        return tuple(outputs)


class RoIHeadGraph(nn.Module):
    """The bbox head on pooled RoI features: softmax probabilities and decoded rotated boxes."""

    def __init__(self, model, size: int):
        super().__init__()
        self.head, self.size = model.roi_head.bbox_head, size

    def forward(self, roi_feats, rois):
        cls_score, bbox_pred = self.head(roi_feats)
        boxes = self.head.bbox_coder.decode(rois, bbox_pred, max_shape=(self.size, self.size))
        return torch.softmax(cls_score, dim=-1), getattr(boxes, 'tensor', boxes)


def network_size(cfg, info) -> int:
    """The square input the test pipeline resizes patches to (the exported graphs' fixed S)."""
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] == 'mmdet.Resize':
            scale = step['scale']
            scale = (scale, scale) if isinstance(scale, int) else tuple(scale)
            if scale[0] != scale[1]:
                raise UserError(f"a detector resized to {scale} is not square; only square inputs export")
            return int(scale[0])
    return info.patch_size


def detector_settings(model, cfg, info, size: int) -> dict[str, Any]:
    """What the numpy glue reads from the metadata: normalisation, the RPN and RCNN test settings, RoIAlign."""
    pre, test = cfg.model.data_preprocessor, cfg.model.test_cfg
    extractor = cfg.model.roi_head.bbox_roi_extractor
    layer = extractor.roi_layer
    rpn, rcnn = test.rpn, test.rcnn
    if rpn.nms.type != 'nms' or rcnn.nms.type != 'nms_rotated':
        raise UserError(f"a detector with {rpn.nms.type}/{rcnn.nms.type} NMS; only nms/nms_rotated export")
    if cfg.model.rpn_head.bbox_coder.get('angle_version') != 'le90':
        raise UserError("a detector whose RPN is not le90; only le90 Oriented R-CNN exports")
    if any(cfg.model.rpn_head.bbox_coder.get('target_means', [0])):
        raise UserError("a detector whose RPN coder has non-zero target means; only zero means export")
    if model.roi_head.bbox_head.reg_class_agnostic is not True:
        raise UserError("a detector whose RoI head regresses per class; only class-agnostic heads export")
    return {
        'mean': list(pre.mean), 'std': list(pre.std), 'bgr_to_rgb': bool(pre.get('bgr_to_rgb', False)),
        'rpn': {'nms_pre': int(rpn.nms_pre), 'stds': list(cfg.model.rpn_head.bbox_coder.target_stds), 'iou_threshold': float(rpn.nms.iou_threshold),
                'max_per_img': int(rpn.max_per_img), 'min_bbox_size': float(rpn.get('min_bbox_size', 0))},
        'rcnn': {'score_thr': float(rcnn.score_thr), 'iou_threshold': float(rcnn.nms.iou_threshold),
                 'max_per_img': int(rcnn.max_per_img)},
        'roi_align': {'output_size': int(layer.out_size), 'sampling_ratio': int(layer.get('sample_num', 0)),
                      'aligned': bool(layer.get('aligned', True)), 'clockwise': bool(layer.get('clockwise', False)),
                      'strides': list(extractor.featmap_strides),
                      'finest_scale': int(extractor.get('finest_scale', 56))},
    }


def detector_metadata(model, cfg, info, size: int, roi_head_file: str) -> dict[str, str]:
    """The metadata_props of the network graph: everything a consumer needs besides the two files."""
    settings = detector_settings(model, cfg, info, size)
    channels = len(settings['mean'])
    return {
        'kind': 'detector', 'classes': json.dumps(list(info.classes)),
        'graphs': json.dumps({'network': 'this file', 'roi_head': roi_head_file,
                              'glue': 'domainmona.onnx_detector (numpy): RPN top-k per level and horizontal '
                                      'NMS, RoI level choice and rotated RoIAlign, per-class rotated NMS'}),
        'angle_convention': 'le90: (cx, cy, w, h, angle) in input pixels, angle in radians in [-pi/2, pi/2), '
                            'clockwise in image coordinates (y down)',
        'normalisation': json.dumps({'rule': "pixels as mmdet's pipeline packs them (C, S, S); channels "
                                             "reversed if bgr_to_rgb, then (x - mean) / std",
                                     'mean': settings['mean'], 'std': settings['std'],
                                     'bgr_to_rgb': settings['bgr_to_rgb']}),
        'bands': json.dumps(info.scenes.get('bands')),
        'tile_size': str(info.patch_size), 'tile_overlap': str(info.patch_gap),
        'input_size': str(size), 'input_multiple': '32',
        'input_shape': json.dumps([1, channels, size, size]),
        'score_threshold': str(settings['rcnn']['score_thr']), 'nms_iou': str(settings['rcnn']['iou_threshold']),
        'max_per_image': str(settings['rcnn']['max_per_img']),
        'detector': json.dumps(settings),
        'network': f"Oriented R-CNN ({cfg.model.backbone.get('type')}, "
                   f"{(cfg.model.backbone.get('adapter') or {}).get('type')})",
    }


def load_for_export(checkpoint: Path):
    """(model on the CPU with adapters merged and Mona fused, its DetectorInfo, its Config)."""
    from domainmona.adapters import prepare_for_inference
    from domainmona.detection.checkpoint import _load_detector

    model, info = _load_detector(Path(checkpoint), 'dota')
    model = model.cpu().eval()
    prepare_for_inference(model)
    return model, info, info.config(Path(checkpoint))


def export_graphs(model, size: int, channels: int, export) -> tuple[Any, Any]:
    """The two ONNX programs, through ``export(module, args, input_names, output_names, dynamic_shapes)``."""
    network = NetworkGraph(model, size).eval()
    outputs = [*FEATURES]
    for level in range(network.levels):
        outputs += [f'rpn_scores{level}', f'rpn_deltas{level}', f'anchors{level}']
    first = export(network, (torch.zeros(1, channels, size, size),), ['image'], outputs, None)
    head = RoIHeadGraph(model, size).eval()
    pooled = model.roi_head.bbox_roi_extractor.roi_layers[0].output_size
    channels_roi = model.roi_head.bbox_roi_extractor.out_channels
    rois = torch.tensor([[32.0, 32.0, 16.0, 8.0, 0.3]]).repeat(3, 1)
    count = torch.export.Dim('rois', min=1, max=100000)
    second = export(head, (torch.zeros(3, channels_roi, *pooled), rois), ['roi_feats', 'rois'],
                    ['probabilities', 'boxes'], ({0: count}, {0: count}))
    return first, second
