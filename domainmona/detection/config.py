"""From CLI choices (dataset, backbone, adapter method, data, iterations) to an mmengine Config.

The configs in `configs/` are the source of truth; this module only picks one and fills in what a run
decides: paths, classes, the adapter field, and an iteration-based schedule for short runs.
"""

from __future__ import annotations

from pathlib import Path

from domainmona.adapters.backbones import check_side, feature_channels, get_backbone, sided
from domainmona.adapters.registry import method_names
from domainmona.errors import UserError
from domainmona.recipes import CONFIGS_DIR

# dataset key (as in domainmona.detection.classes.DATASETS) -> config suffix
DATASET_CONFIGS = {'dota1.0': 'dota', 'dota1.5': 'dotav15', 'dota2.0': 'dotav2', 'star': 'star'}
MICRO_CONFIG = 'oriented-rcnn-le90_mona-swin-micro_fpn_synthetic.py'


def config_path(dataset: str, backbone: str) -> Path:
    """The shipped config for a dataset key and backbone: micro has one slim config for any classes; Swin-T
    and Swin-B have their own (as mmrotate's); any other backbone takes the dataset's Swin-T config, whose
    backbone `set_backbone` replaces."""
    get_backbone(backbone)  # an unknown name is refused in one line
    if backbone == 'micro':
        return CONFIGS_DIR / 'oriented_rcnn' / MICRO_CONFIG
    if dataset not in DATASET_CONFIGS:
        raise UserError(f"no {backbone} config for dataset '{dataset}' (choose from {', '.join(DATASET_CONFIGS)})")
    own = CONFIGS_DIR / 'oriented_rcnn' / f'oriented-rcnn-le90_mona-{backbone}_fpn_12e_{DATASET_CONFIGS[dataset]}.py'
    return own if own.is_file() else own.with_name(own.name.replace(f'-{backbone}_', '-swin-t_'))


def load_config(dataset: str, backbone: str, side: str | None = None, side_cfg: dict | None = None):
    """The shipped config for (dataset, backbone) with the registry's backbone (and a plain ViT's side
    network) in it."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(dataset, backbone)))
    set_backbone(cfg, backbone, side, side_cfg)
    return cfg


def build_config(dataset: str, backbone: str, method: str, classes: tuple[str, ...],
                 weights: str | None = None, image_size: int | None = None, side: str | None = None,
                 side_cfg: dict | None = None, **adapter_cfg):
    """The shipped config for (dataset, backbone, side network) with the adapter method, weights file and
    classes set."""
    cfg = load_config(dataset, backbone, side, side_cfg)
    set_adapter(cfg, method, weights, **adapter_cfg)
    set_classes(cfg, classes)
    if image_size:
        set_image_size(cfg, image_size)
    return cfg


def _loaders(cfg) -> list:
    return [cfg[name] for name in ('train_dataloader', 'val_dataloader', 'test_dataloader') if cfg.get(name)]


def set_classes(cfg, classes: tuple[str, ...]) -> None:
    """Point every dataloader at the given class list and size the classifier to match."""
    for loader in _loaders(cfg):
        loader.dataset.type = 'DOTADataset'
        loader.dataset.metainfo = dict(classes=tuple(classes))
    cfg.model.roi_head.bbox_head.num_classes = len(classes)


def set_backbone(cfg, name: str, side: str | None = None, side_cfg: dict | None = None) -> None:
    """The registered backbone `name` as the config's backbone (its shape, for mmdet's Swin; `MonaBackbone`
    otherwise, with a plain ViT's side network), the FPN's inputs sized to its feature maps and the input
    normalised as it was pretrained."""
    spec = get_backbone(name)
    check_side(name, side)
    backbone = cfg.model.backbone
    if spec.family == 'mmdet-swin' and backbone.type == 'MonaSwinTransformer':
        backbone.update(spec.options['mmdet'])
    else:
        cfg.model.backbone = dict(type='MonaBackbone', backbone=name, adapter=backbone.get('adapter'),
                                  weights=backbone.get('weights'), with_cp=backbone.get('with_cp', False),
                                  **sided(side, side_cfg))
    cfg.model.neck.in_channels = list(feature_channels(name, side, side_cfg))
    if len(spec.mean) == 3:  # the preprocessor normalises RGB; N-band scenes get theirs (geo.dettrain)
        preprocessor = cfg.model.data_preprocessor
        preprocessor.mean = [round(255 * m, 3) for m in spec.mean]  # on uint8 pixels
        preprocessor.std = [round(255 * s, 3) for s in spec.std]


def set_adapter(cfg, method: str, weights: str | None = None, **adapter_cfg) -> None:
    if method not in method_names():
        raise UserError(f"unknown adapter method '{method}' (choose from {', '.join(method_names())})")
    cfg.model.backbone.adapter = dict(type=method, **adapter_cfg)
    cfg.model.backbone.weights = weights


def set_image_size(cfg, size: int) -> None:
    """Resize every pipeline to `size` (patches are square)."""
    for loader in _loaders(cfg):
        for step in loader.dataset.pipeline:
            if step.type == 'mmdet.Resize':
                step.scale = (size, size)


def set_train_data(cfg, subsets: list[tuple[Path, Path]], batch_size: int | None = None,
                   num_workers: int | None = None) -> None:
    """Train on (images dir, annfiles dir) pairs, concatenated (none: the dataset stays the config's, for
    overrides to set); validation is left to `domainmona test`."""
    template = cfg.train_dataloader.dataset
    datasets = []
    for images, annfiles in subsets:
        dataset = template.copy()
        dataset.update(data_root='', ann_file=f'{annfiles}/', data_prefix=dict(img_path=f'{images}/'))
        datasets.append(dataset)
    if datasets:
        cfg.train_dataloader.dataset = datasets[0] if len(datasets) == 1 else \
            dict(type='ConcatDataset', datasets=datasets)
    if batch_size is not None:
        cfg.train_dataloader.batch_size = batch_size
    if num_workers is not None:
        cfg.train_dataloader.num_workers = num_workers
        cfg.train_dataloader.persistent_workers = num_workers > 0
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None


def set_max_iters(cfg, max_iters: int, checkpoints: int = 4, warmup: int | None = None) -> None:
    """Replace the 12-epoch schedule by `max_iters` iterations, with the same shape (warm-up, steps at 8/12
    and 11/12) and `checkpoints` evenly spaced checkpoints, so a killed run can resume."""
    warmup = min(500, max(1, max_iters // 10)) if warmup is None else warmup
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters + 1)
    # A fresh shuffle per pass like DefaultSampler, but endless: mmengine's iteration loop sleeps 2 s whenever
    # a finite loader runs out (a deadlock guard), which on a few-shot set of a handful of chips was most of
    # the training time.
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=warmup),
        dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
             milestones=[max_iters * 8 // 12, max_iters * 11 // 12], gamma=0.1),
    ]
    interval = max(1, max_iters // checkpoints)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=interval, max_keep_ckpts=2)
    cfg.default_hooks.logger.interval = min(cfg.default_hooks.logger.interval, interval)
    cfg.log_processor = dict(type='LogProcessor', window_size=min(50, interval), by_epoch=False)
