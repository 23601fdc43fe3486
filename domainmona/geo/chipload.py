"""N-band detection chips in mmrotate's pipeline: `LoadGeoChip` reads the uint8 GeoTIFF chips `tile` writes
for other than 1 or 3 bands, `NormaliseBands` normalises them; `detector_image` gives tile-predict the
very array training loaded; `SceneWindowDataset` gives `train geo-det --scenes` its windows.

1- and 3-band chips are PNGs, which mmcv reads as BGR (the detector's preprocessor turns them back to RGB
and normalises them); N-band chips stay in band order and are normalised in the pipeline, because
mmengine's preprocessor accepts 1 or 3 channel means only. Importing this module registers both
transforms and the dataset (train geo-det and tile-predict import it).
"""

from __future__ import annotations

import numpy as np
import rasterio
from mmcv.transforms import BaseTransform
from mmrotate.datasets import DOTADataset
from mmrotate.registry import DATASETS, TRANSFORMS

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


@DATASETS.register_module()
class SceneWindowDataset(DOTADataset):
    """Windows of scenes (domainmona.geo.scenes) as mmrotate's DOTA dataset, with no chip files: each item's
    image and DOTA objects are read when the pipeline asks for it (the pipeline then starts after the loader).

    The grid sampler's items are the grid's windows (`tile`'s chips); the random sampler has as many items as
    the grid has labelled windows, each a fresh random window from one generator seeded with ``seed``.
    ``scenes`` holds SceneOptions' fields (nodata NaN as "nan", config text has no NaN); ``stats`` are those
    `train geo-det` computed, so the statistics pass is not repeated.
    """

    def __init__(self, scenes: dict, stats: list[dict], seed: int, **kwargs) -> None:
        import torch

        from domainmona.geo.scenes import SceneOptions, SceneWindows

        options = {**scenes, "nodata": None if scenes["nodata"] is None else float(scenes["nodata"])}
        self.windows = SceneWindows.open(SceneOptions(**options), "detection", seed, stats).__enter__()
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict]:
        count = len(self.windows.grid) if self.windows.grid else len(self.windows.plan.plans)
        return [{"img_id": f"window{i}", "file_name": f"window{i}", "img_path": f"window{i}"} for i in range(count)]

    def filter_data(self) -> list[dict]:
        return self.data_list  # random windows may hold no object, grid windows always do

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        grid = self.windows.grid
        window = grid[idx] if grid else self.windows.random_window(self.generator)
        image, objects = self.windows.detection_sample(window)
        classes = {c: i for i, c in enumerate(self.metainfo["classes"])}
        image = detector_image(image)
        info.update(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2],
                    instances=[{"bbox": [float(v) for v in np.ravel(o.poly)], "bbox_label": classes[o.cls],
                                "ignore_flag": int(o.difficult > self.diff_thr)} for o in objects])
        return info
