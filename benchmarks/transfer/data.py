"""Target task data: semantic masks of the generated DOTA-style scenes (domainmona.detection.synthetic).

The target classes (vehicle, ship, court, container on a brown terrain) never appear in the micro backbones'
source pretraining (tank, plane, pool, roof on a green terrain, classified, not segmented), so adapting
to them is a transfer to a different task and domain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from domainmona.detection.dota.labels import read_dota_labels
from domainmona.detection.synthetic import SYNTHETIC_CLASSES, generate_dota_scenes

SCENE_SIDE = 256  # generated size; objects up to ~100 px need room
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)  # both micro backbones' pretraining normalisation
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def scene_tensors(folder: Path, n: int, seed: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` scenes drawn at SCENE_SIDE, resized to `side`: normalised images (n,3,s,s), masks (n,s,s) with
    0 = background and i + 1 = SYNTHETIC_CLASSES[i]."""
    paths = generate_dota_scenes(folder, n_images=n, image_size=SCENE_SIDE, objects_per_image=(4, 8), seed=seed)
    scale = side / SCENE_SIDE
    images, masks = [], []
    for path in paths:
        images.append(np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)))
        mask = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(mask)
        for obj in read_dota_labels(path.parent.parent / "labelTxt" / f"{path.stem}.txt").objects:
            draw.polygon([tuple(p) for p in obj.poly * scale], fill=SYNTHETIC_CLASSES.index(obj.cls) + 1)
        masks.append(np.asarray(mask))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return (pixels - MEAN) / STD, torch.from_numpy(np.stack(masks)).long()


def augment(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random quarter turn and flip for each image and its mask (objects have any orientation)."""
    turns = int(torch.randint(4, (1,), generator=gen))
    images, masks = images.rot90(turns, (-2, -1)), masks.rot90(turns, (-2, -1))
    if torch.rand(1, generator=gen) < 0.5:
        images, masks = images.flip(-1), masks.flip(-1)
    return images, masks


def class_iou(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """IoU of each object class (background excluded) over all pixels of the set; NaN for absent classes."""
    ious = []
    for c in range(1, n_classes):
        inter = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        ious.append(inter / union if union else float("nan"))
    return torch.tensor(ious)
