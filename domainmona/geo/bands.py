"""One rule for Swin models on other than 3 bands, shared by `train geo-seg` and `train geo-det`.

The first three bands (in `--bands` order) are taken as R, G, B. The patch embedding's RGB-pretrained
filters are inflated to N bands: write each RGB filter as W_c = m + d_c, with m the mean of the three (its
response to brightness) and d_c the colour part (d_R + d_G + d_B = 0). The brightness part is shared
equally by all N bands and the colour part stays on R, G, B:

    W'_c = d_c + 3m/N   for c in R, G, B;      W'_e = 3m/N   for every other band e.

Exact property: an N-band image whose other bands equal the mean of its R, G, B bands gives the same patch
embedding as the RGB image (so does a grey image, all bands equal): the activation scale the pretrained
layers expect is kept. With fewer than 3 bands there is no RGB and every band gets 3m/N (one band: the sum
of the RGB filters, the usual greyscale rule). The inflated embedding is a starting point and trains (a
model on other than 3 bands always trains its patch embedding).

Detection normalises uint8 chips per band with the RGB means and stds of the pretrained recipe; other bands
get the mean of those three, as they get the mean filter.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

PATCH_WEIGHT = re.compile(r"(^|\.)patch_embed\.(proj|projection)\.weight$")  # timm/Microsoft, OpenMMLab


def inflate_rgb_filters(rgb: torch.Tensor, bands: int) -> torch.Tensor:
    """(out, 3, k, k) RGB filters → (out, bands, k, k) by the module's rule."""
    if rgb.shape[1] != 3:
        raise ValueError(f"RGB filters have 3 input channels, got {rgb.shape[1]}")
    mean = rgb.mean(dim=1, keepdim=True)
    shared = mean * (3.0 / bands)
    if bands < 3:
        return shared.repeat(1, bands, 1, 1)
    return torch.cat([rgb - mean + shared, shared.repeat(1, bands - 3, 1, 1)], dim=1)


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
