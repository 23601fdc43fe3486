"""Swin models on other than 3 bands in `train geo-seg` and `train geo-det`: the core's rule
(`domainmona.adapters.bands`: RGB filters inflated so that an N-band image whose other bands equal the mean of
its R, G, B bands embeds like the RGB image) applied to the patch embedding, and the detector's per-band
normalisation.

Detection normalises uint8 chips per band with the RGB means and stds of the pretrained recipe; other bands
get the mean of those three, as they get the mean filter.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from domainmona.adapters.bands import inflate_rgb_filters

PATCH_WEIGHT = re.compile(r"(^|\.)patch_embed\.(proj|projection)\.weight$")  # timm/Microsoft, OpenMMLab


def inflate_patch_embedding(conv: nn.Conv2d, weights: str | os.PathLike) -> bool:
    """Load the patch-embedding filters of a pretrained weights file into ``conv`` inflated to its band count;
    False (nothing done) when the model has 3 bands or the file's filters are not RGB ones."""
    from domainmona.adapters.weights import read_state_dict

    if conv.in_channels == 3:
        return False
    found = [t for k, t in read_state_dict(weights).items() if PATCH_WEIGHT.search(k)]
    if len(found) != 1 or found[0].shape[1] != 3 or found[0].shape[0] != conv.out_channels:
        return False
    with torch.no_grad():
        conv.weight.copy_(inflate_rgb_filters(found[0].to(conv.weight), conv.in_channels))
    return True


def band_normalisation(rgb_mean: list[float], rgb_std: list[float], bands: int) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the detector's input from the RGB ones (module docstring)."""
    grey_mean, grey_std = sum(rgb_mean) / 3, sum(rgb_std) / 3
    if bands < 3:
        return [grey_mean] * bands, [grey_std] * bands
    return list(rgb_mean) + [grey_mean] * (bands - 3), list(rgb_std) + [grey_std] * (bands - 3)
