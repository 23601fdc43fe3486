"""`domainmona train geo-det`: the detection pipeline's training on chips from `domainmona tile`.

Detection chips already use the split-patch layout (`images/` + `annfiles/`), so the chip folder is
handed to `domainmona.detection.train` as is, with the chips' classes and grid. N-band GeoTIFF chips (other
than 1 or 3 bands) change the config: the Swin takes N input channels (its patch embedding inflated from
the RGB weights and trained, domainmona.geo.bands), and the pipelines load chips with `LoadGeoChip` and
normalise them with `NormaliseBands` (the preprocessor then neither swaps nor normalises). The bands, the training scenes' band counts and dtypes and
the chips' normalisation go in a sidecar beside the checkpoint, for `tile-predict`.
"""

from __future__ import annotations

from pathlib import Path

from domainmona.errors import UserError
from domainmona.geo.models import geo_sidecar
from domainmona.geo.tiling import detection_chip_suffix, read_manifest, scene_record
from domainmona.io import write_json


def train_detection(chips: Path, work_dir: Path, max_iters: int | None = None, backbone: str = "swin-t",
                    adapter: str = "mona", pretrained: Path | None = None, seed: int = 0,
                    resume: bool = False, amp: bool = True, adapter_recompute: bool = True,
                    checkpoint_blocks: bool = False) -> Path:
    """Train (``resume``: continue the run in ``work_dir``) and return the final checkpoint. The numbers, the
    weights files and the work dir are checked by `domainmona.detection.train` before it writes anything."""
    from domainmona.detection.train import MICRO_WEIGHTS, TrainOptions, train

    manifest = read_manifest(chips)
    if manifest["task"] != "detection":
        raise UserError(f"{chips}: chips were made for {manifest['task']}; use 'domainmona train geo-seg' "
                        "or tile again with --task detection")
    if pretrained is None and backbone == "micro" and MICRO_WEIGHTS.is_file():
        pretrained = MICRO_WEIGHTS  # the detection pipeline's shipped micro Swin
    # dataset only picks the Swin-T/B config family; the classes are the chips' own.
    opts = TrainOptions(dataset="dota1.0", data=chips, work_dir=work_dir, backbone=backbone, adapter=adapter,
                        pretrained=pretrained, max_iters=max_iters, resume=resume,
                        classes=tuple(manifest["classes"]), patch_size=manifest["size"],
                        patch_gap=manifest["overlap"], seed=seed, amp=amp,
                        adapter_recompute=adapter_recompute, checkpoint_blocks=checkpoint_blocks,
                        config_overrides=band_overrides(len(manifest["rasters"][0]["bands"]), backbone,
                                                        manifest["size"]))
    final = train(opts)
    uint8 = all(scene["dtype"] == "uint8" for scene in manifest["rasters"])
    write_json(geo_sidecar(final), {**scene_record(manifest), "stats": None if uint8 else manifest["stats"],
                                    "classes": manifest["classes"]})
    return final


def band_overrides(bands: int, backbone: str, size: int) -> dict:
    """mmengine config changes for N-band GeoTIFF chips of ``size`` pixels (none for RGB PNG chips)."""
    if detection_chip_suffix(bands) == "png":
        return {}
    from mmengine.config import Config

    import domainmona.geo.chipload  # noqa: F401  (registers LoadGeoChip for the Runner's pipelines)
    from domainmona.detection.config import config_path, set_image_size
    from domainmona.geo.bands import band_normalisation

    cfg = Config.fromfile(str(config_path("dota1.0", backbone)))
    set_image_size(cfg, size)  # as the training config does: the pipelines below replace its own
    mean, std = band_normalisation(cfg.model.data_preprocessor.mean, cfg.model.data_preprocessor.std, bands)
    overrides = {"model.backbone.in_channels": bands, "model.data_preprocessor.mean": None,
                 "model.data_preprocessor.std": None, "model.data_preprocessor.bgr_to_rgb": False}
    for loader in ("train_dataloader", "test_dataloader"):
        pipeline = cfg[loader].dataset.pipeline
        overrides[f"{loader}.dataset.pipeline"] = [dict(type="LoadGeoChip"),
                                                   dict(type="NormaliseBands", mean=mean, std=std), *pipeline[1:]]
        overrides[f"{loader}.dataset.img_suffix"] = "tif"
    return overrides
