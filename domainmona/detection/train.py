"""`domainmona train dota|star`: split if needed, train with mmengine's Runner, save the final checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from domainmona.console import err_console
from domainmona.detection.layout import find_layout
from domainmona.errors import UserError
from domainmona.io import atomic_path
from domainmona.launch import under_torchrun

ASSETS_DIR = Path(__file__).resolve().parents[1] / 'assets'
MICRO_WEIGHTS = ASSETS_DIR / 'micro_swin.safetensors'


@dataclass
class TrainOptions:
    dataset: str  # a key of domainmona.detection.classes.DATASETS
    data: Path
    work_dir: Path
    backbone: str = 'swin-t'
    adapter: str = 'mona'
    pretrained: Path | None = None
    shots: int | None = None
    max_iters: int | None = None
    gpus: int = 1
    resume: bool = False
    classes: tuple[str, ...] | None = None  # default: the dataset's classes
    patch_size: int = 1024
    patch_gap: int = 200
    image_size: int | None = None  # network input; default the patch size
    batch_size: int | None = None
    num_workers: int | None = None
    lr: float | None = None
    seed: int = 0
    adapter_cfg: dict = field(default_factory=dict)
    config_overrides: dict = field(default_factory=dict)  # mmengine dotted keys, applied last

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


def training_subsets(opts: TrainOptions) -> list[tuple[Path, Path]]:
    """(images, annfiles) folders to train on, splitting raw scenes into `work_dir/split/` once."""
    from domainmona.detection.dota.split import split_dataset

    layout = find_layout(opts.data)
    if layout.kind == 'split':
        return [(d / 'images', d / 'annfiles') for d in layout.dirs]
    subsets = []
    for raw in layout.dirs:
        dst = opts.work_dir / 'split' / raw.name  # split_dataset skips images an earlier run finished
        split_dataset(raw, dst, size=opts.patch_size, gap=opts.patch_gap, rates=(1.0,), classes=opts.class_names)
        subsets.append((dst / 'images', dst / 'annfiles'))
    return subsets


def build_train_config(opts: TrainOptions, subsets: list[tuple[Path, Path]]):
    from domainmona.detection import config as C

    cfg = C.build_config(opts.dataset, opts.backbone, opts.adapter, opts.class_names, None,
                         opts.image_size or opts.patch_size, **opts.adapter_cfg)
    weights = opts.weights
    if weights is None and opts.adapter != 'full':
        err_console.print(f"[yellow]warning:[/] no --pretrained weights: '{opts.adapter}' adapts a frozen "
                          "randomly initialised backbone")
        weights = random_backbone(cfg, opts.work_dir / 'random_backbone.safetensors', opts.seed)
    cfg.model.backbone.weights = str(weights) if weights else None
    C.set_train_data(cfg, subsets, opts.batch_size, opts.num_workers)
    if opts.max_iters:
        C.set_max_iters(cfg, opts.max_iters)
    if opts.lr:
        cfg.optim_wrapper.optimizer.lr = opts.lr
    cfg.work_dir = str(opts.work_dir)
    cfg.resume = opts.resume
    cfg.randomness = dict(seed=opts.seed, deterministic=False)
    if under_torchrun():
        cfg.launcher = 'pytorch'
        cfg.env_cfg.dist_cfg = dict(backend='nccl' if _cuda() else 'gloo')
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


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_runner(opts: TrainOptions):
    """Split, subset, configure and train; returns mmengine's Runner after training."""
    from mmengine.runner import Runner

    from domainmona.detection.fewshot import select_shots

    subsets = training_subsets(opts)
    if opts.shots:
        subsets, counts = select_shots(subsets, opts.shots, opts.work_dir / f'shots{opts.shots}', opts.seed)
        err_console.print(f"{opts.shots}-shot subset: " + ', '.join(f'{c} {n}' for c, n in sorted(counts.items())))
    runner = Runner.from_cfg(build_train_config(opts, subsets))
    runner.train()
    return runner


def train(opts: TrainOptions) -> Path:
    """Train and return the final checkpoint (see domainmona.detection.checkpoint)."""
    from domainmona.detection.checkpoint import DetectorInfo, save_detector

    runner = train_runner(opts)
    final = opts.work_dir / 'final.safetensors'
    if runner.rank == 0:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        info = DetectorInfo(runner.cfg.pretty_text, opts.class_names, opts.patch_size, opts.patch_gap)
        save_detector(model, info, final)
    return final
