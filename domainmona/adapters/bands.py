"""One rule for backbones on other than 3 bands, whatever the backbone and the pipeline.

The first three bands are taken as R, G, B. The input convolution's RGB-pretrained filters (a ResNet's conv1, a
ConvNeXt or EfficientNet stem, a ViT's or Swin's patch embedding) are inflated to N bands: write each RGB filter
as W_c = m + d_c, with m the mean of the three (its response to brightness) and d_c the colour part
(d_R + d_G + d_B = 0). The brightness part is shared equally by all N bands and the colour part stays on R, G, B:

    W'_c = d_c + 3m/N   for c in R, G, B;      W'_e = 3m/N   for every other band e.

Exact property: an N-band image whose other bands equal the mean of its R, G, B bands gives the same first-layer
output as the RGB image (so does a grey image, all bands equal): the activation scale the pretrained layers expect
is kept. With fewer than 3 bands there is no RGB and every band gets 3m/N (one band: the sum of the RGB filters,
the usual greyscale rule). The inflated filters are a starting point and train (a model on other than 3 bands
always trains its input convolution).

`domainmona.adapters.pretrained.load_pretrained` applies the rule to every backbone as it loads a file.
"""

from __future__ import annotations

import torch
from torch import nn


def inflate_rgb_filters(rgb: torch.Tensor, bands: int) -> torch.Tensor:
    """(out, 3, k, k) RGB filters → (out, bands, k, k) by the module's rule."""
    if rgb.shape[1] != 3:
        raise ValueError(f"RGB filters have 3 input channels, got {rgb.shape[1]}")
    mean = rgb.mean(dim=1, keepdim=True)
    shared = mean * (3.0 / bands)
    if bands < 3:
        return shared.repeat(1, bands, 1, 1)
    return torch.cat([rgb - mean + shared, shared.repeat(1, bands - 3, 1, 1)], dim=1)


def input_filters(module: nn.Module) -> str | None:
    """The name of the weight of the convolution that sees the image bands: the first 2D one in module order
    (backbones register their stem or patch embedding first); None without one."""
    return next((f"{name}.weight" if name else "weight" for name, m in module.named_modules()
                 if isinstance(m, nn.Conv2d)), None)


def inflate_to(rgb: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
    """`rgb` inflated to the band count of `own` (the model's input filters) when the two differ only there and
    `rgb` has 3 bands; None when the rule does not apply."""
    if rgb.ndim != 4 or own.ndim != 4 or rgb.shape[1] != 3 or own.shape[1] == 3:
        return None
    if rgb.shape[0] != own.shape[0] or rgb.shape[2:] != own.shape[2:]:
        return None
    return inflate_rgb_filters(rgb, own.shape[1]).to(own)
