"""`domainmona train geo-det`: the detection pipeline's training on chips from `domainmona tile`.

Detection chips already use the split-patch layout (`images/` + `annfiles/`), so the chip folder is
handed to `domainmona.detection.train` as is, with the chips' classes and grid. The bands and the
normalisation of the chips go in a sidecar beside the checkpoint, for `tile-predict`.
"""

from __future__ import annotations

import json
from pathlib import Path

from domainmona.errors import UserError
from domainmona.geo.models import geo_sidecar
from domainmona.geo.tiling import read_manifest
from domainmona.io import atomic_path


def train_detection(chips: Path, work_dir: Path, max_iters: int | None = None, backbone: str = "swin-t",
                    adapter: str = "mona", pretrained: Path | None = None, seed: int = 0) -> Path:
    from domainmona.detection.train import MICRO_WEIGHTS, TrainOptions, train

    manifest = read_manifest(chips)
    if manifest["task"] != "detection":
        raise UserError(f"{chips}: chips were made for {manifest['task']}; use 'domainmona train geo-seg' "
                        "or tile again with --task detection")
    if pretrained is None and backbone == "micro" and MICRO_WEIGHTS.is_file():
        pretrained = MICRO_WEIGHTS  # the detection pipeline's shipped micro Swin
    # dataset only picks the Swin-T/B config family; the classes are the chips' own.
    opts = TrainOptions(dataset="dota1.0", data=chips, work_dir=work_dir, backbone=backbone, adapter=adapter,
                        pretrained=pretrained, max_iters=max_iters, classes=tuple(manifest["classes"]),
                        patch_size=manifest["size"], patch_gap=manifest["overlap"], seed=seed)
    final = train(opts)
    uint8 = all(scene["dtype"] == "uint8" for scene in manifest["rasters"])
    sidecar = {"bands": manifest["rasters"][0]["bands"], "stats": None if uint8 else manifest["stats"],
               "classes": manifest["classes"]}
    with atomic_path(geo_sidecar(final)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=1))
    return final
