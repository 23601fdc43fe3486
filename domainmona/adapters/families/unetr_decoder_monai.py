"""MONAI's UNETR-style CNN decoders (SwinUNETR's and UNETR's): one adapter on the output map of each residual or
basic conv block (`UnetResBlock`, `UnetBasicBlock`), the blocks inside every decoder stage (`UnetrBasicBlock`,
`UnetrUpBlock`, `UnetrPrUpBlock`); LoRA on their 3D convolutions, Conv-Adapter beside the last one.

The family has no root class: a whole SwinUNETR or UNETR must still find its encoder as its one backbone, so
each decoder stage is passed to `inject` on its own (segment-ct's `--decoder adapt`); the transposed convolutions
between the blocks stay frozen. SegResNet's up path adapts with its own family (`monai-segresnet`), its blocks
being the encoder's class.
"""

from __future__ import annotations

from torch import nn

from domainmona.adapters.families.cnn import CNNBlockForward
from domainmona.adapters.families.spec import Family, register_family


def spatial_convs(block: nn.Module) -> list[nn.Module]:
    """The block's convolutions with a kernel above 1 (conv1, conv2; not a residual 1x1 projection), in order."""
    return [m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed
            and max(m.kernel_size) > 1]


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
