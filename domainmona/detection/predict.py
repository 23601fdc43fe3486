"""Run a built detector over a folder of patches and yield their le90 rotated detections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from domainmona.boxes.detections import Detections
from domainmona.console import progress


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
    and in eval mode."""
    import torch

    loader = patch_loader(cfg, image_dir, batch_size, num_workers)
    with progress() as bar, torch.no_grad():
        task = bar.add_task('predicting patches', total=len(loader.dataset))
        for batch in loader:
            for sample in model.test_step(batch):
                pred = sample.pred_instances
                boxes = pred.bboxes.tensor if hasattr(pred.bboxes, 'tensor') else pred.bboxes
                yield sample.img_id, Detections.of(boxes.cpu().numpy(), pred.scores.cpu().numpy(),
                                                   pred.labels.cpu().numpy())
                bar.advance(task)
