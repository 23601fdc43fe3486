"""MONAI transform chains for CT: one shared preprocessing, training augmentation on top, and its inverse.

`preprocess` is the config's `preprocess:` mapping; the same mapping is stored in every checkpoint so that
`predict` preprocesses exactly as training did.

NaN and ±inf voxels (masked exports, failed reconstructions) are set to the HU floor, the window's low end
`hu_min`, right after loading — in training, validation and prediction alike — and a warning on stderr
gives their number: they are taken as outside the body. Left alone, one NaN spreads through resampling and
attention until every voxel of the volume predicts background.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai import transforms as mt
from rich.markup import escape

from domainmona.console import err_console

IMAGE, LABEL, PRED = "image", "label", "pred"


class NonFiniteToFloor(mt.MapTransform):
    """Replace NaN and ±inf voxels by ``floor`` and say how many there were."""

    def __init__(self, keys: tuple[str, ...], floor: float) -> None:
        super().__init__(keys)
        self.floor = float(floor)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            count = int((~torch.isfinite(image)).sum())
            if count:
                d[key] = image.nan_to_num(nan=self.floor, posinf=self.floor, neginf=self.floor)
                source = escape(str(getattr(image, "meta", {}).get("filename_or_obj", key)))
                err_console.print(f"[yellow]warning:[/] {source}: {count} NaN/inf voxel(s) set to the HU floor "
                                  f"{self.floor:g} (outside the body)", highlight=False, soft_wrap=True)
        return d


def preprocessing(preprocess: dict[str, Any], keys: tuple[str, ...] = (IMAGE, LABEL)) -> list:
    """Load → NaN/inf to the HU floor → channel first → RAS → resample → HU window to 0..1 → crop to the
    body. All but the NaN step are invertible, which is enough: predictions go back onto the input's grid."""
    interpolation = tuple("bilinear" if k == IMAGE else "nearest" for k in keys)
    return [
        mt.LoadImaged(keys, reader="NibabelReader", image_only=True),
        NonFiniteToFloor((IMAGE,), preprocess["hu_min"]),
        mt.EnsureChannelFirstd(keys),
        mt.Orientationd(keys, axcodes=preprocess["orientation"], labels=None),  # axes from the image space (RAS)
        mt.Spacingd(keys, pixdim=preprocess["spacing"], mode=interpolation),
        mt.ScaleIntensityRanged(IMAGE, a_min=preprocess["hu_min"], a_max=preprocess["hu_max"],
                                b_min=0.0, b_max=1.0, clip=True),
        # allow_smaller=True: MONAI 1.5 changed the default, and a body touching the FOV edge is normal CT.
        mt.CropForegroundd(keys, source_key=IMAGE, margin=preprocess["crop_margin"], allow_smaller=True),
    ]


def training(preprocess: dict[str, Any], augment: dict[str, Any], roi: int) -> mt.Compose:
    """Preprocessing, then pos/neg-balanced roi³ patches and light spatial/intensity augmentation."""
    keys = (IMAGE, LABEL)
    return mt.Compose([
        *preprocessing(preprocess, keys),
        mt.SpatialPadd(keys, spatial_size=(roi,) * 3),  # small volumes still give full roi³ patches
        mt.RandCropByPosNegLabeld(keys, label_key=LABEL, spatial_size=(roi,) * 3, pos=augment["pos"],
                                  neg=augment["neg"], num_samples=augment["samples_per_volume"],
                                  image_key=IMAGE, image_threshold=0),
        *(mt.RandFlipd(keys, prob=augment["flip_prob"], spatial_axis=axis) for axis in range(3)),
        mt.RandRotate90d(keys, prob=augment["rotate90_prob"], max_k=3),
        mt.RandScaleIntensityd(IMAGE, factors=augment["intensity_scale"], prob=augment["intensity_prob"]),
        mt.RandShiftIntensityd(IMAGE, offsets=augment["intensity_shift"], prob=augment["intensity_prob"]),
    ])


def validation(preprocess: dict[str, Any]) -> mt.Compose:
    return mt.Compose(preprocessing(preprocess, (IMAGE, LABEL)))


def inference(preprocess: dict[str, Any]) -> mt.Compose:
    return mt.Compose(preprocessing(preprocess, (IMAGE,)))


def inverse_to_original(inference_chain: mt.Compose) -> mt.Invertd:
    """Map a label map from preprocessed space back to the input's grid (nearest neighbour: labels stay labels)."""
    return mt.Invertd(PRED, transform=inference_chain, orig_keys=IMAGE, nearest_interp=True, to_tensor=True)
