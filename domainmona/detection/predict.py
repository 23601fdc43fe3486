"""Run a detector over a folder of patches and yield their le90 rotated detections: the torch model, or the
ONNX files `domainmona export` wrote (`--runtime onnx`), behind the same mmdet test pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from domainmona.boxes.detections import Detections
from domainmona.console import progress
from domainmona.errors import UserError


def patch_loader(cfg, image_dir: Path, batch_size: int = 1, num_workers: int = 0):
    """mmengine dataloader over `image_dir` with the config's test pipeline (no labels needed)."""
    from mmengine.runner import Runner

    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg.batch_size = batch_size
    loader_cfg.num_workers = num_workers
    loader_cfg.persistent_workers = False
    loader_cfg.dataset.data_root = ''
    loader_cfg.dataset.ann_file = ''
    loader_cfg.dataset.data_prefix = dict(img_path=str(image_dir) + '/')
    return Runner.build_dataloader(loader_cfg)


def predict_patches(model, cfg, image_dir: Path, batch_size: int = 1,
                    num_workers: int = 0) -> Iterator[tuple[str, Detections]]:
    """(patch name, detections in patch pixels) for every patch of `image_dir`; `model` is built, loaded
    and in eval mode, or an OnnxDetector (`run_detector`)."""
    loader = patch_loader(cfg, image_dir, batch_size, num_workers)
    with progress() as bar:
        task = bar.add_task('predicting patches', total=len(loader.dataset))
        for batch in loader:
            for name, detections in run_detector(model, batch):
                yield name, detections
                bar.advance(task)


def run_detector(model, batch) -> list[tuple[str, Detections]]:
    """(img_id, detections) of an mmdet test batch (the pipeline's output, collated). Only the network call
    differs between runtimes, so resizing, scale factors and everything after are the torch runtime's:
    torch's `test_step`, or an exported detector (domainmona.onnx_detector.OnnxDetector) image by image on
    the packed pixels, which it normalises itself."""
    from domainmona.onnx_detector import OnnxDetector

    if isinstance(model, OnnxDetector):
        results = []
        for image, sample in zip(batch['inputs'], batch['data_samples']):
            if tuple(image.shape[1:]) != (model.size, model.size) or len(set(sample.scale_factor)) != 1:
                raise UserError(f"the exported detector takes {model.size}x{model.size} inputs, the test pipeline "
                                f"made {tuple(image.shape[1:])} (scale {sample.scale_factor}); use --runtime torch")
            boxes, scores, labels = model.detect(image.numpy(), sample.scale_factor[0])
            results.append((sample.img_id, Detections.of(boxes, scores, labels)))
        return results
    import torch

    with torch.inference_mode():
        outputs = model.test_step(batch)
    results = []
    for sample in outputs:
        pred = sample.pred_instances
        boxes = pred.bboxes.tensor if hasattr(pred.bboxes, 'tensor') else pred.bboxes
        results.append((sample.img_id, Detections.of(boxes.cpu().numpy(), pred.scores.cpu().numpy(),
                                                     pred.labels.cpu().numpy())))
    return results


def onnx_detector(runtime: str, onnx_model: Path | None, checkpoint: Path):
    """`--runtime onnx --model FILE` for a detector checkpoint: the OnnxDetector (checked against the checkpoint
    and the network input its test pipeline resizes to) and the checkpoint's DetectorInfo; (None, None) for
    torch. The torch model is never built: only the config, for the pipeline."""
    from domainmona.detection.checkpoint import DetectorInfo, register_modules
    from domainmona.detection.export import network_size
    from domainmona.detection.rotated_ops import install_rotated_ops
    from domainmona.export import DETECTOR, runtime_network
    from domainmona.io import read_metadata

    detector = runtime_network(runtime, onnx_model, checkpoint, DETECTOR)
    if detector is None:
        return None, None
    info = DetectorInfo.from_metadata(read_metadata(checkpoint), checkpoint)
    size = network_size(info.config(checkpoint), info)
    if detector.size != size:
        raise UserError(f"--model {onnx_model}: takes {detector.size}-pixel inputs, but {checkpoint}'s test pipeline "
                        f"resizes to {size}; export it again")
    install_rotated_ops()  # as loading the torch detector does, before mmrotate is imported
    register_modules()
    return detector, info
