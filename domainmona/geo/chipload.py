"""N-band detection chips in mmrotate's pipeline: `LoadGeoChip` reads the uint8 GeoTIFF chips `tile` writes
for other than 1 or 3 bands, `NormaliseBands` normalises them; `detector_image` gives tile-predict the
very array training loaded.

1- and 3-band chips are PNGs, which mmcv reads as BGR (the detector's preprocessor turns them back to RGB
and normalises them); N-band chips stay in band order and are normalised in the pipeline, because
mmengine's preprocessor accepts 1 or 3 channel means only. Importing this module registers both
transforms (train geo-det and tile-predict import it).
"""

from __future__ import annotations

import numpy as np
import rasterio
from mmcv.transforms import BaseTransform
from mmrotate.registry import TRANSFORMS

from domainmona.geo.tiling import detection_chip_suffix


def detector_image(image: np.ndarray) -> np.ndarray:
    """(bands, H, W) uint8, as `tile` stretches a chip → the (H, W, C) array the detector's pipeline loads from
    the chip file: BGR for 1 band (repeated) or 3, band order otherwise."""
    if detection_chip_suffix(len(image)) == "png":
        rgb = np.repeat(image, 3, axis=0) if len(image) == 1 else image
        return np.ascontiguousarray(rgb.transpose(1, 2, 0)[:, :, ::-1])
    return np.ascontiguousarray(image.transpose(1, 2, 0))


@TRANSFORMS.register_module()
class LoadGeoChip(BaseTransform):
    """Load an N-band GeoTIFF chip from ``results['img_path']`` as (H, W, bands) uint8 in band order."""

    def transform(self, results: dict) -> dict:
        with rasterio.open(results["img_path"]) as src:
            image = detector_image(src.read())
        results.update(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        return results


@TRANSFORMS.register_module()
class NormaliseBands(BaseTransform):
    """(x - mean) / std per band, float32 (domainmona.geo.bands.band_normalisation gives mean and std)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def transform(self, results: dict) -> dict:
        results["img"] = (results["img"].astype(np.float32) - self.mean) / self.std
        return results
