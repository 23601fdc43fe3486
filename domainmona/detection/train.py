"""`domainmona train dota|star`: split if needed, train with mmengine's Runner, save the final checkpoint.

Every input is checked before the work dir is touched: numbers, data layout, the `--pretrained` file and,
with `--resume`, the checkpoint to continue from. Checkpoints that mmengine reads load without code
execution (`install_safe_checkpoint_loader`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from domainmona.adapters.backbones import DEFAULT_BACKBONE, check_side
from domainmona.adapters.side import DEFAULT_SIDE
from domainmona.adapters.backbones.swin import MICRO_WEIGHTS  # noqa: F401  (its old home; scripts import it)
from domainmona.console import err_console
from domainmona.detection.layout import find_layout
from domainmona.errors import UserError
from domainmona.io import atomic_path, claim_dir
from domainmona.options import check_memory, window_bytes
from domainmona.launch import under_torchrun
from domainmona.recipes import patch_grid
from domainmona.settings import check_adapter_options, plain


@dataclass
class TrainOptions:
    """The settings of `train dota|star` (and the run `train geo-det` builds): defaults and checks here, filled
    by `domainmona.settings.resolve` from the recipe, `--config` and the flags, saved whole in the checkpoint
    (`DetectorInfo.settings`)."""

    dataset: str  # a key of domainmona.detection.classes.DATASETS
    data: Path | None  # None: config_overrides set the training dataset (train geo-det --scenes)
    work_dir: Path
    backbone: str = DEFAULT_BACKBONE
    adapter: str = 'mona'
    pretrained: Path | None = None
    shots: int | None = None
    max_iters: int | None = None
    gpus: int = 1
    resume: bool = False
    classes: tuple[str, ...] | None = None  # default: the dataset's classes
    patch_size: int = field(default_factory=lambda: patch_grid()[0])  # the recipe's grid (pipelines/dota.yaml)
    patch_gap: int = field(default_factory=lambda: patch_grid()[1])
    image_size: int | None = None  # network input; default the patch size
    batch_size: int | None = None
    num_workers: int | None = None
    lr: float | None = None
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA (domainmona.devices); no effect on the CPU
    adapter_recompute: bool = True  # adapters keep only their input for backward (domainmona.adapters.memory)
    checkpoint_blocks: bool = False  # mmdet Swin's with_cp on every block, adapters inside
    adapter_cfg: dict = field(default_factory=dict)
    side: str = DEFAULT_SIDE  # what makes a plain ViT's pyramid (domainmona.adapters.side)
    side_cfg: dict = field(default_factory=dict)  # its preset / constructor options
    config_overrides: dict = field(default_factory=dict)  # mmengine dotted keys, applied last
    scenes: dict | None = None  # what the images are (DetectorInfo.scenes); default DOTA/STAR's RGB patches

    def __post_init__(self) -> None:
        """Refuse numbers that would silently train something else (`--max-iters 0` used to mean 12 epochs,
        `--shots 0` the whole set)."""
        for name, low in (('max_iters', 1), ('shots', 1), ('gpus', 1), ('patch_size', 1), ('patch_gap', 0),
                          ('image_size', 1), ('batch_size', 1), ('num_workers', 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if self.patch_gap >= self.patch_size:
            raise UserError(f"the patch gap ({self.patch_gap}) must be smaller than the patch size ({self.patch_size})")
        size = self.image_size or self.patch_size
        check_memory('--patch-size', size, window_bytes(size, bands=3), f"one {size}x{size} RGB float32 network input")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"the learning rate must be a positive finite number, got {self.lr}")
        check_adapter_options(self.adapter, self.adapter_cfg, '--adapter-opt')
        check_side(self.backbone, self.side)
        self.pretrained = default_weights(self.backbone, self.pretrained)

    @property
    def class_names(self) -> tuple[str, ...]:
        from domainmona.detection.classes import DATASETS

        if self.classes:
            return self.classes
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset '{self.dataset}' (choose from {', '.join(DATASETS)})")
        return DATASETS[self.dataset]

    @property
    def weights(self) -> Path | None:
        if self.pretrained is None:
            return None
        if not self.pretrained.is_file():
            raise UserError(f"--pretrained {self.pretrained}: no such file")
        return self.pretrained.resolve()


def default_weights(backbone: str, pretrained: Path | None) -> Path | None:
    """``pretrained``, or the weights domainmona ships for the backbone (the micro Swin's)."""
    from domainmona.adapters.backbones import shipped_weights

    return shipped_weights(backbone) if pretrained is None else pretrained


def resume_checkpoint(work_dir: Path) -> Path | None:
    """The local checkpoint `--resume` continues from: the one WORK_DIR/last_checkpoint names (mmengine
    writes it after each checkpoint; looked up in the work dir when the work dir was moved), loaded once
    here so that an unsafe or broken file is refused before anything is written. None: nothing to resume."""
    from domainmona.detection.checkpoint import load_from_local_weights_only

    pointer = work_dir / 'last_checkpoint'
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding='utf-8', errors='replace').strip()
    if '://' in name:
        raise UserError(f"{pointer} names {name}: --resume only continues from a local file")
    path = Path(name) if Path(name).is_absolute() else work_dir / name
    if not path.is_file():
        path = work_dir / Path(name).name
    if not name or not path.is_file():
        raise UserError(f"{pointer} names {name or 'nothing'}, which is not a file; remove it to start over")
    load_from_local_weights_only(path)
    return path.resolve()


def prepare(opts: TrainOptions) -> Path | None:
    """Check every input, then claim the work dir; returns the checkpoint to resume from, if any."""
    from domainmona.adapters.backbones import check_adapter
    from domainmona.adapters.weights import read_state_dict
    from domainmona.detection.dota.labels import read_dota_labels
    from domainmona.detection.dota.split import read_split_inputs

    # a bad label line (NaN coordinates, unknown class) or image is refused before anything is written
    layout = find_layout(opts.data) if opts.data is not None else None
    for folder in layout.dirs if layout else ():
        if layout.kind == 'raw':
            read_split_inputs(folder, opts.class_names, split_folder(opts, folder))
        else:  # mmrotate would read NaN coordinates as they are
            for annfile in (folder / 'annfiles').glob('*.txt'):
                read_dota_labels(annfile, opts.class_names)
    if opts.weights is not None:
        read_state_dict(opts.weights)  # an unsafe or unreadable file is refused before the work dir is written
    # a method (or side network) the backbone does not define
    check_adapter(opts.backbone, opts.adapter, opts.side, opts.side_cfg, **opts.adapter_cfg)
    resume_from = resume_checkpoint(opts.work_dir) if opts.resume else None
    claim_dir(opts.work_dir, f'train {opts.dataset}')
    if opts.resume and resume_from is None:
        err_console.print(f"no checkpoint in {opts.work_dir} yet: training from the start")
    return resume_from


def split_folder(opts: TrainOptions, raw: Path) -> Path:
    return opts.work_dir / 'split' / raw.name


def training_subsets(opts: TrainOptions) -> list[tuple[Path, Path]]:
    """(images, annfiles) folders to train on, splitting raw scenes into `work_dir/split/` once."""
    from domainmona.detection.dota.split import split_dataset

    if opts.data is None:
        return []
    layout = find_layout(opts.data)
    if layout.kind == 'split':
        return [(d / 'images', d / 'annfiles') for d in layout.dirs]
    subsets = []
    for raw in layout.dirs:
        dst = split_folder(opts, raw)  # split_dataset skips images an earlier run finished
        split_dataset(raw, dst, size=opts.patch_size, gap=opts.patch_gap, rates=(1.0,), classes=opts.class_names)
        subsets.append((dst / 'images', dst / 'annfiles'))
    return subsets


def build_train_config(opts: TrainOptions, subsets: list[tuple[Path, Path]], resume_from: Path | None = None):
    from domainmona.detection import config as C
    from domainmona.detection.amp import amp_optim_wrapper
    from domainmona.devices import default_device

    cfg = C.build_config(opts.dataset, opts.backbone, opts.adapter, opts.class_names, None,
                         opts.image_size or opts.patch_size, side=opts.side, side_cfg=opts.side_cfg,
                         **opts.adapter_cfg)
    weights = opts.weights
    if weights is None and opts.adapter != 'full':
        err_console.print(f"[yellow]warning:[/] no --pretrained weights: '{opts.adapter}' adapts a frozen "
                          "randomly initialised backbone")
        weights = random_backbone(cfg, opts.work_dir / 'random_backbone.safetensors', opts.seed)
    cfg.model.backbone.weights = str(weights) if weights else None
    cfg.model.backbone.adapter.recompute_adapters = opts.adapter_recompute
    cfg.model.backbone.with_cp = opts.checkpoint_blocks
    C.set_train_data(cfg, subsets, opts.batch_size, opts.num_workers)
    if opts.max_iters is not None:
        C.set_max_iters(cfg, opts.max_iters)
    if opts.lr is not None:
        cfg.optim_wrapper.optimizer.lr = opts.lr
    cfg.optim_wrapper = amp_optim_wrapper(cfg.optim_wrapper, default_device(), opts.amp)
    cfg.work_dir = str(opts.work_dir)
    # an explicit local file: mmengine then never reads last_checkpoint (or a URL) itself
    cfg.resume = resume_from is not None
    cfg.load_from = str(resume_from) if resume_from is not None else None
    cfg.randomness = dict(seed=opts.seed, deterministic=False)
    if under_torchrun():
        cfg.launcher = 'pytorch'
        cfg.env_cfg.dist_cfg = dict(backend='nccl' if default_device().type == 'cuda' else 'gloo')
    cfg.merge_from_dict(opts.config_overrides)
    return cfg


def random_backbone(cfg, path: Path, seed: int) -> Path:
    """Save a seeded random init of the config's backbone as its weights file (once), so that the frozen
    weights a checkpoint relies on can be found again by `test`."""
    if path.is_file():
        return path
    import torch
    from mmrotate.registry import MODELS
    from safetensors.torch import save_file

    import domainmona.detection.backbone  # noqa: F401

    torch.manual_seed(seed)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    with atomic_path(path) as tmp:
        save_file(backbone.base_state(), str(tmp))
    return path


def train_runner(opts: TrainOptions):
    """Split, subset, configure and train; returns mmengine's Runner after training."""
    from domainmona.detection.amp import keep_box_work_in_float32
    from domainmona.detection.checkpoint import install_safe_checkpoint_loader
    from domainmona.detection.fewshot import select_shots
    from domainmona.detection.rotated_ops import install_rotated_ops
    from domainmona.detection.runner import LoggedRunner, quiet_frameworks
    from domainmona.devices import default_device, describe

    resume_from = prepare(opts)  # first: a refused run imports no framework, whose import logs would be written
    quiet_frameworks()
    subsets = training_subsets(opts)
    if opts.shots is not None:
        subsets, counts = select_shots(subsets, opts.shots, opts.work_dir / f'shots{opts.shots}', opts.seed)
        err_console.print(f"{opts.shots}-shot subset: " + ', '.join(f'{c} {n}' for c, n in sorted(counts.items())))
    install_safe_checkpoint_loader()
    install_rotated_ops()
    cfg = build_train_config(opts, subsets, resume_from)
    runner = LoggedRunner.from_cfg(cfg)
    dtype = cfg.optim_wrapper.get('dtype')
    if dtype is not None:
        keep_box_work_in_float32(runner.model.module if hasattr(runner.model, 'module') else runner.model)
    err_console.print(f"training on {default_device()} in {describe(dtype)}")
    runner.train()
    return runner


def train(opts: TrainOptions, record: dict | None = None) -> Path:
    """Train and return the final checkpoint (see domainmona.detection.checkpoint); it holds ``record``, the
    pipeline's settings as plain data (default: ``opts``'s, what `--print-config` prints)."""
    from domainmona.detection.checkpoint import DetectorInfo, save_detector
    from domainmona.logs import framework_log

    with framework_log(opts.work_dir):
        runner = train_runner(opts)
        final = opts.work_dir / 'final.safetensors'
        if runner.rank == 0:
            model = runner.model.module if hasattr(runner.model, 'module') else runner.model
            info = DetectorInfo(runner.cfg.pretty_text, opts.class_names, opts.patch_size, opts.patch_gap)
            if opts.scenes is not None:
                info.scenes = opts.scenes
            info.settings = plain(opts) if record is None else record
            save_detector(model, info, final)
    return final
