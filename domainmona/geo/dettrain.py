"""`domainmona train geo-det`: the detection pipeline's training on chips from `domainmona tile`.

Detection chips already use the split-patch layout (`images/` + `annfiles/`), so the chip folder is
handed to `domainmona.detection.train` as is, with the chips' classes and grid. N-band GeoTIFF chips (other
than 1 or 3 bands) change the config: the Swin takes N input channels (its patch embedding inflated from
the RGB weights and trained, domainmona.geo.bands), and the pipelines load chips with `LoadGeoChip` and
normalise them with `NormaliseBands` (the preprocessor then neither swaps nor normalises). The bands, the training scenes' band counts and dtypes and
the chips' normalisation go in a sidecar beside the checkpoint, for `tile-predict`.

With ``scenes`` (`--scenes ... --labels ...`) there are no chips: the training dataset is
`SceneWindowDataset` (domainmona.geo.chipload), windows read from the scenes as `tile` would cut them, and
the pipeline starts after the image loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from domainmona.adapters.backbones import DEFAULT_BACKBONE, check_side
from domainmona.adapters.side import DEFAULT_SIDE
from domainmona.errors import UserError
from domainmona.geo.models import geo_sidecar
from domainmona.geo.scenes import SceneOptions, SceneWindows
from domainmona.geo.tiling import detection_chip_suffix, json_nodata, read_manifest, scene_record
from domainmona.io import write_json


@dataclass
class GeoDetSettings:
    """The settings of `train geo-det`: defaults and checks here, filled by `domainmona.settings.resolve` from
    `--config` and the flags, saved whole in the checkpoint (`DetectorInfo.settings`). The chips' manifest
    (or the scenes) give the rest of the detection run: classes, patch grid, bands."""

    work_dir: Path
    chips: Path | None = None  # chips from `tile`, or None with ``scenes``
    scenes: SceneOptions | None = None  # train on windows read from scenes instead of chips
    max_iters: int | None = None
    backbone: str = DEFAULT_BACKBONE
    adapter: str = "mona"
    adapter_cfg: dict = field(default_factory=dict)  # the adapter method's options (--adapter-opt)
    side: str = DEFAULT_SIDE  # what makes a plain ViT's pyramid (domainmona.adapters.side)
    side_cfg: dict = field(default_factory=dict)  # its preset / options (--side-opt)
    pretrained: Path | None = None
    seed: int = 0
    resume: bool = False
    amp: bool = True
    adapter_recompute: bool = True
    checkpoint_blocks: bool = False

    def __post_init__(self) -> None:
        from domainmona.detection.train import default_weights
        from domainmona.settings import check_adapter_options

        self.pretrained = default_weights(self.backbone, self.pretrained)
        if (self.chips is None) == (self.scenes is None):
            raise UserError("train on --chips (from 'tile') or on --scenes with --labels, exactly one of the two")
        if self.max_iters is not None and self.max_iters < 1:
            raise UserError(f"--max-iters must be at least 1, got {self.max_iters}")
        if not 0 <= self.seed <= 2**32 - 1:
            raise UserError(f"--seed {self.seed}: must be in 0..{2**32 - 1}")
        check_adapter_options(self.adapter, self.adapter_cfg, "--adapter-opt")
        check_side(self.backbone, self.side)


def train_detection(chips: Path | None, work_dir: Path, max_iters: int | None = None, backbone: str = DEFAULT_BACKBONE,
                    adapter: str = "mona", pretrained: Path | None = None, seed: int = 0,
                    resume: bool = False, amp: bool = True, adapter_recompute: bool = True,
                    checkpoint_blocks: bool = False, scenes: SceneOptions | None = None) -> Path:
    """`train_geo_det` with these settings."""
    return train_geo_det(GeoDetSettings(work_dir, chips=chips, scenes=scenes, max_iters=max_iters, backbone=backbone,
                                        adapter=adapter, pretrained=pretrained, seed=seed, resume=resume, amp=amp,
                                        adapter_recompute=adapter_recompute, checkpoint_blocks=checkpoint_blocks))


def train_geo_det(settings: GeoDetSettings) -> Path:
    """Train on the chips or the scenes (``resume``: continue the run in ``work_dir``) and return the final
    checkpoint, which records ``settings``. The numbers, the weights files and the work dir are checked by
    `domainmona.detection.train` before it writes anything."""
    from domainmona.detection.train import TrainOptions, train
    from domainmona.settings import plain

    chips, scenes, seed, backbone = settings.chips, settings.scenes, settings.seed, settings.backbone
    if scenes is not None:
        manifest = SceneWindows.open(scenes, "detection", seed).manifest
    else:
        manifest = read_manifest(chips)
        if manifest["task"] != "detection":
            raise UserError(f"{chips}: chips were made for {manifest['task']}; use 'domainmona train geo-seg' "
                            "or tile again with --task detection")
    uint8 = all(scene["dtype"] == "uint8" for scene in manifest["rasters"])
    trained_on = {**scene_record(manifest), "stats": None if uint8 else manifest["stats"],
                  "normalisation": "uint8 as read" if uint8 else "stretched to uint8 with the chips' statistics"}
    # dataset only picks the Swin-T/B config family; the classes are the chips' own.
    opts = TrainOptions(dataset="dota1.0", data=chips, work_dir=settings.work_dir, backbone=backbone,
                        adapter=settings.adapter, adapter_cfg=dict(settings.adapter_cfg),
                        side=settings.side, side_cfg=dict(settings.side_cfg),
                        pretrained=settings.pretrained, max_iters=settings.max_iters, resume=settings.resume,
                        classes=tuple(manifest["classes"]), patch_size=manifest["size"],
                        patch_gap=manifest["overlap"], seed=seed, amp=settings.amp,
                        adapter_recompute=settings.adapter_recompute, checkpoint_blocks=settings.checkpoint_blocks,
                        config_overrides=band_overrides(len(manifest["rasters"][0]["bands"]), backbone,
                                                        manifest["size"], scenes and scene_dataset(scenes, manifest)),
                        scenes=trained_on)
    final = train(opts, record=plain(settings))
    write_json(geo_sidecar(final), {**trained_on, "classes": manifest["classes"]})
    return final


def scene_dataset(scenes: SceneOptions, manifest: dict) -> dict:
    """The `SceneWindowDataset` fields of a scene-based run (plain values: they go into the config text)."""
    fields = {**vars(scenes), "rasters": [str(r) for r in scenes.rasters], "labels": str(scenes.labels),
              "bands": list(scenes.bands) if scenes.bands else None, "nodata": json_nodata(scenes.nodata)}
    return {"type": "SceneWindowDataset", "scenes": fields, "stats": manifest["stats"], "seed": manifest["seed"],
            "data_root": "", "ann_file": "", "data_prefix": {"img_path": ""}}


# Scene windows are read in the training process: loader workers would share its open rasters and generator.
SCENE_LOADER = {"train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False}


def band_overrides(bands: int, backbone: str, size: int, dataset: dict | None = None) -> dict:
    """mmengine config changes for N-band GeoTIFF chips of ``size`` pixels (none for RGB PNG chips), and for
    training on ``dataset`` (`scene_dataset`) instead of chip files: its pipeline starts after the loader."""
    if detection_chip_suffix(bands) == "png" and dataset is None:
        return {}
    import domainmona.geo.chipload  # noqa: F401  (registers LoadGeoChip and SceneWindowDataset for the Runner)
    from domainmona.detection.config import load_config, set_image_size
    from domainmona.geo.bands import band_normalisation

    cfg = load_config("dota1.0", backbone)
    set_image_size(cfg, size)  # as the training config does: the pipelines below replace its own
    overrides = {}
    loaders = {"train_dataloader": dataset is None, "test_dataloader": True}  # which ones load chip files
    if detection_chip_suffix(bands) == "png":
        loading = {name: [cfg[name].dataset.pipeline[0]] for name in loaders}
    else:
        mean, std = band_normalisation(cfg.model.data_preprocessor.mean, cfg.model.data_preprocessor.std, bands)
        overrides = {"model.backbone.in_channels": bands, "model.data_preprocessor.mean": None,
                     "model.data_preprocessor.std": None, "model.data_preprocessor.bgr_to_rgb": False}
        loading = {name: [dict(type="LoadGeoChip"), dict(type="NormaliseBands", mean=mean, std=std)]
                   for name in loaders}
        overrides.update({f"{name}.dataset.img_suffix": "tif" for name in loaders})
    for name, from_files in loaders.items():
        steps = loading[name] if from_files else loading[name][1:]
        overrides[f"{name}.dataset.pipeline"] = [*steps, *cfg[name].dataset.pipeline[1:]]
    if dataset is not None:
        overrides.update({f"train_dataloader.dataset.{k}": v for k, v in dataset.items()}, **SCENE_LOADER)
    return overrides
