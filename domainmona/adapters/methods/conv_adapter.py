"""Conv-Adapter (Chen et al. 2022): alpha * PW(act(GConv_k(a))) beside a layer. Transformer form beside (S)W-MSA,
fed LN1 x (k = `kernel`, GELU); CNN form beside a ResNet bottleneck's 3x3 conv (ReLU), a ConvNeXt block's 7x7
depthwise conv (GELU) or the last convolution a family names (`Family.convs`, ReLU; 2D or 3D), with that conv's
kernel, stride and dilation."""

from dataclasses import dataclass

from torch import nn

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.convpass import BesideConv, ConvAdapterBesideAttention
from domainmona.adapters.modules.convpass import ConvAdapter as ConvAdapterModule
from domainmona.errors import UserError


@dataclass(frozen=True)
class ConvAdapterConfig:
    kernel: int = 7  # transformer form; the CNN form takes the kernel of the conv it sits beside
    reduction: int = 8  # gamma: w -> w / gamma channels


@register_method(order=200)
class ConvAdapter(Method):
    name = "conv-adapter"
    summary = "grouped conv adapter beside attention / a CNN block's spatial conv"
    Config = ConvAdapterConfig
    recomputes = True

    def attach(self, site, config) -> None:
        if config.kernel < 1 or config.kernel % 2 == 0 or config.reduction < 1:
            raise UserError(f"method '{self.name}': need an odd kernel and reduction >= 1")
        if site.family.transformer:
            self._check_width(site, site.dim, config)
            self.fill_slots(site, "attn-parallel", lambda: ConvAdapterBesideAttention(
                site.block.norm1,
                ConvAdapterModule(site.dim, config.kernel, config.reduction, nn.GELU(), spatial_dims=site.spatial_dims)))
            return
        conv, activation = self._spatial_conv(site)
        self._check_width(site, conv.in_channels, config)
        adapter = ConvAdapterModule(conv.in_channels, conv.kernel_size[0], config.reduction, activation,
                                    stride=conv.stride[0], dilation=conv.dilation[0],
                                    spatial_dims=len(conv.kernel_size))
        BesideConv.convert(conv, adapter)

    def _spatial_conv(self, site) -> tuple[nn.Module, nn.Module]:
        """The last of the convolutions the family names (ReLU), else a bottleneck's 3x3 conv2 (ReLU) or a
        ConvNeXt block's depthwise conv_dw (GELU)."""
        block = site.block
        convs = site.family.convs(block)
        if convs:
            return convs[-1], nn.ReLU()
        if isinstance(getattr(block, "conv3", None), nn.Conv2d):
            return block.conv2, nn.ReLU()
        if isinstance(getattr(block, "conv_dw", None), nn.Conv2d):
            return block.conv_dw, nn.GELU()
        raise UserError(f"method '{self.name}' is defined for ResNet bottlenecks and ConvNeXt blocks, not "
                        f"{type(block).__name__.removeprefix('Adapted')} '{site.name}'")

    def _check_width(self, site, width: int, config) -> None:
        if width % config.reduction:
            raise UserError(f"method '{self.name}': reduction={config.reduction} must divide the width {width} of "
                            f"'{site.name}'")
