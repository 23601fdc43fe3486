"""The shipped Oriented R-CNN configs build for every dataset x backbone x adapter method."""

import itertools

import pytest

from domainmona.adapters import METHOD_NAMES
from domainmona.adapters.backbones import backbone_names, get_backbone
from domainmona.detection import config as C
from domainmona.detection.classes import DATASETS
from domainmona.errors import UserError

BACKBONES = backbone_names(dims=2)
# every method on one backbone per kind of config (mmdet Swin, micro, MonaBackbone), every backbone with Mona
COMBOS = sorted({*itertools.product(DATASETS, ('swin-t', 'micro', 'resnet50'), METHOD_NAMES),
                 *itertools.product(DATASETS, BACKBONES, ('mona',))})


@pytest.mark.parametrize("dataset,backbone,method", COMBOS)
def test_every_config_builds(dataset, backbone, method):
    cfg = C.build_config(dataset, backbone, method, DATASETS[dataset])
    spec = get_backbone(backbone)
    assert cfg.default_scope == 'mmrotate'
    assert cfg.model.backbone.type == ('MonaSwinTransformer' if spec.family == 'mmdet-swin' else 'MonaBackbone')
    assert cfg.model.neck.in_channels == list(spec.channels)
    rgb = [round(255 * m, 3) for m in spec.mean] if len(spec.mean) == 3 else [123.675, 116.28, 103.53]
    assert cfg.model.data_preprocessor.mean == rgb  # an N-band backbone's scenes are normalised by geo.dettrain
    assert cfg.model.backbone.adapter == dict(type=method)
    assert cfg.model.roi_head.bbox_head.num_classes == len(DATASETS[dataset])
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.metainfo['classes'] == DATASETS[dataset]
    assert cfg.model.rpn_head.bbox_coder.angle_version == 'le90'


@pytest.mark.parametrize("side, channels", [("hst", [64, 128, 192, 256]), ("vit-comer", [768] * 4)])
def test_a_side_network_sizes_the_fpn_and_is_recorded_in_the_backbone(side, channels):
    cfg = C.build_config('dota1.0', 'vit-b-16', 'fixed', DATASETS['dota1.0'], side=side, side_cfg={})
    assert cfg.model.neck.in_channels == channels
    assert (cfg.model.backbone.side, cfg.model.backbone.side_cfg) == (side, {})


@pytest.mark.parametrize("dataset,backbone", [(d, b) for d in DATASETS for b in BACKBONES])
def test_the_config_a_checkpoint_stores_reads_back_as_data(dataset, backbone, tmp_path):
    """`test` reads a checkpoint's config without executing it: every training config round-trips."""
    from domainmona.detection.checkpoint import parse_config

    cfg = C.build_config(dataset, backbone, 'mona', DATASETS[dataset], image_size=512)
    C.set_train_data(cfg, [(tmp_path / 'images', tmp_path / 'annfiles')], 2, 0)
    C.set_max_iters(cfg, 100)
    assert parse_config(cfg.pretty_text, tmp_path / 'final.safetensors').to_dict() == cfg.to_dict()


@pytest.mark.parametrize("dataset,expected", [('dota1.0', 15), ('dota1.5', 16), ('dota2.0', 18), ('star', 48)])
@pytest.mark.parametrize("backbone,dims", [('swin-t', (96, [2, 2, 6, 2])), ('swin-b', (128, [2, 2, 18, 2]))])
def test_shipped_files_follow_star_mmrotate(dataset, expected, backbone, dims):
    """The config files alone (no domainmona overrides) carry the classes count and the paper's schedule."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(C.config_path(dataset, backbone)))
    assert cfg.model.roi_head.bbox_head.num_classes == expected
    assert (cfg.model.backbone.embed_dims, list(cfg.model.backbone.depths)) == dims
    assert cfg.model.neck.in_channels == [dims[0] * 2 ** i for i in range(4)]
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay) == (1e-4, 0.05)
    assert cfg.optim_wrapper.clip_grad.max_norm == 35
    assert cfg.train_cfg.max_epochs == 12
    assert all(step.scale == (1024, 1024) for step in cfg.train_dataloader.dataset.pipeline
               if step.type == 'mmdet.Resize')
    assert cfg.model.backbone.adapter.type == 'mona'


def test_star_config_lists_the_star_classes_in_order():
    from mmengine.config import Config

    cfg = Config.fromfile(str(C.config_path('star', 'swin-t')))
    assert tuple(cfg.train_dataloader.dataset.metainfo['classes']) == DATASETS['star']


def test_short_schedule_keeps_the_shape_of_the_12_epoch_one():
    cfg = C.build_config('dota1.0', 'micro', 'mona', DATASETS['dota1.0'])
    C.set_max_iters(cfg, 120)
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=120, val_interval=121)
    warmup, steps = cfg.param_scheduler
    assert warmup['end'] == 12 and steps['milestones'] == [80, 110] and not steps['by_epoch']
    assert cfg.default_hooks.checkpoint.interval == 30 and not cfg.default_hooks.checkpoint.by_epoch
    # endless sampler: a finite loader makes mmengine sleep 2 s each time a few-shot set runs out
    assert cfg.train_dataloader.sampler == dict(type='InfiniteSampler', shuffle=True)


def test_unknown_choices_are_one_line_errors():
    with pytest.raises(UserError, match="unknown adapter method 'prompt'"):
        C.build_config('dota1.0', 'swin-t', 'prompt', DATASETS['dota1.0'])
    with pytest.raises(UserError, match="unknown backbone 'swin-xl'"):
        C.config_path('dota1.0', 'swin-xl')
    with pytest.raises(UserError, match="no swin-t config for dataset 'dior'"):
        C.config_path('dior', 'swin-t')


@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "vpt-shallow"])  # plain ViTs only
def test_swin_t_detector_builds_with_every_method(method):
    """Real mmrotate model, no weights and no forward: the method decides what trains in the backbone,
    while the neck and heads always train."""
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401

    register_all_modules()
    cfg = C.build_config('dota1.0', 'swin-t', method, DATASETS['dota1.0'])
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in backbone.parameters())
    base = sum(p.numel() for n, p in backbone.named_parameters() if n not in backbone._adapter_names)
    assert 27e6 < base < 29e6  # Swin-T
    assert all(p.requires_grad for m in (model.neck, model.rpn_head, model.roi_head) for p in m.parameters())
    if method == 'full':
        assert trainable == total
    elif method == 'fixed':
        assert trainable == 0
    else:
        assert 0 < trainable < 0.3 * base  # partial-1 (the last stage) is the largest
    if method == 'mona':
        assert 0.03 < trainable / base < 0.08  # the paper reports ~5% for Swin-T



def test_a_method_undefined_for_swin_is_refused_in_one_line():
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401

    register_all_modules()
    cfg = C.build_config('dota1.0', 'swin-t', 'vpt-shallow', DATASETS['dota1.0'])
    with pytest.raises(UserError, match="'vpt-shallow' is defined for plain ViTs only") as error:
        MODELS.build(cfg.model)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("backbone", ['micro', 'swin-t', 'swin-b'])
def test_the_shipped_swin_configs_hold_the_registered_shape(backbone):
    """The config files are mmrotate-style references; the registry is the one home of the shape and a run
    takes it from there (`set_backbone`), so the two must agree."""
    from mmengine.config import Config

    shape = get_backbone(backbone).options['mmdet']
    cfg = Config.fromfile(str(C.config_path('dota1.0', backbone)))
    assert {k: tuple(cfg.model.backbone[k]) if k != 'embed_dims' else cfg.model.backbone[k] for k in shape} == shape
