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

from pathlib import Path

from domainmona.errors import UserError
from domainmona.geo.models import geo_sidecar
from domainmona.geo.scenes import SceneOptions, SceneWindows
from domainmona.geo.tiling import detection_chip_suffix, json_nodata, read_manifest, scene_record
from domainmona.io import write_json


def train_detection(chips: Path | None, work_dir: Path, max_iters: int | None = None, backbone: str = "swin-t",
                    adapter: str = "mona", pretrained: Path | None = None, seed: int = 0,
                    resume: bool = False, amp: bool = True, adapter_recompute: bool = True,
                    checkpoint_blocks: bool = False, scenes: SceneOptions | None = None) -> Path:
    """Train on ``chips`` or on ``scenes`` (``resume``: continue the run in ``work_dir``) and return the final
    checkpoint. The numbers, the weights files and the work dir are checked by `domainmona.detection.train`
    before it writes anything."""
    from domainmona.detection.train import MICRO_WEIGHTS, TrainOptions, train

    if (chips is None) == (scenes is None):
        raise UserError("train on --chips (from 'tile') or on --scenes with --labels, exactly one of the two")
    if scenes is not None:
        manifest = SceneWindows.open(scenes, "detection", seed).manifest
    else:
        manifest = read_manifest(chips)
        if manifest["task"] != "detection":
            raise UserError(f"{chips}: chips were made for {manifest['task']}; use 'domainmona train geo-seg' "
                            "or tile again with --task detection")
    if pretrained is None and backbone == "micro" and MICRO_WEIGHTS.is_file():
        pretrained = MICRO_WEIGHTS  # the detection pipeline's shipped micro Swin
    uint8 = all(scene["dtype"] == "uint8" for scene in manifest["rasters"])
    trained_on = {**scene_record(manifest), "stats": None if uint8 else manifest["stats"],
                  "normalisation": "uint8 as read" if uint8 else "stretched to uint8 with the chips' statistics"}
    # dataset only picks the Swin-T/B config family; the classes are the chips' own.
    opts = TrainOptions(dataset="dota1.0", data=chips, work_dir=work_dir, backbone=backbone, adapter=adapter,
                        pretrained=pretrained, max_iters=max_iters, resume=resume,
                        classes=tuple(manifest["classes"]), patch_size=manifest["size"],
                        patch_gap=manifest["overlap"], seed=seed, amp=amp,
                        adapter_recompute=adapter_recompute, checkpoint_blocks=checkpoint_blocks,
                        config_overrides=band_overrides(len(manifest["rasters"][0]["bands"]), backbone,
                                                        manifest["size"], scenes and scene_dataset(scenes, manifest)),
                        scenes=trained_on)
    final = train(opts)
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
    from mmengine.config import Config

    import domainmona.geo.chipload  # noqa: F401  (registers LoadGeoChip and SceneWindowDataset for the Runner)
    from domainmona.detection.config import config_path, set_image_size
    from domainmona.geo.bands import band_normalisation

    cfg = Config.fromfile(str(config_path("dota1.0", backbone)))
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
