"""MONAI's UNETR-style CNN decoders (SwinUNETR's and UNETR's): one adapter on the output map of each residual or
basic conv block (`UnetResBlock`, `UnetBasicBlock`), the blocks inside every decoder stage (`UnetrBasicBlock`,
`UnetrUpBlock`, `UnetrPrUpBlock`); LoRA on their 3D convolutions, Conv-Adapter beside the last one.

The family has no root class: a whole SwinUNETR or UNETR must still find its encoder as its one backbone, so
each decoder stage is passed to `inject` on its own (segment-ct's `--decoder adapt`); the transposed convolutions
between the blocks stay frozen. SegResNet's up path adapts with its own family (`monai-segresnet`), its blocks
being the encoder's class, in the same way.
"""

from __future__ import annotations

from domainmona.adapters.families.cnn import CNNBlockForward, spatial_convs
from domainmona.adapters.families.spec import Family, register_family


FAMILY = register_family(Family(
    name="monai-unetr-decoder",
    blocks=tuple(("monai.networks.blocks.dynunet_block", c) for c in ("UnetResBlock", "UnetBasicBlock")),
    roots=(),
    forward=CNNBlockForward,
    dim=lambda block: spatial_convs(block)[-1].out_channels,
    spatial_dims=lambda block: len(spatial_convs(block)[-1].kernel_size),
    transformer=False,
    convs=spatial_convs,
))
