"""MONAI transform chains for CT: one shared preprocessing, training augmentation on top, and its inverse.

`preprocess` is the config's `preprocess:` mapping; the same mapping is stored in every checkpoint so that
`predict` preprocesses exactly as training did.
"""

from __future__ import annotations

from typing import Any

from monai import transforms as mt

IMAGE, LABEL, PRED = "image", "label", "pred"


def preprocessing(preprocess: dict[str, Any], keys: tuple[str, ...] = (IMAGE, LABEL)) -> list:
    """Load → channel first → RAS → resample → HU window to 0..1 → crop to the body (all invertible)."""
    interpolation = tuple("bilinear" if k == IMAGE else "nearest" for k in keys)
    return [
        mt.LoadImaged(keys, reader="NibabelReader", image_only=True),
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
