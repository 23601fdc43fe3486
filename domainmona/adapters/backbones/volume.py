"""3D networks of the CT pipeline (MONAI), built whole with their default sizes (for `adapters report|probe`);
`segment-ct --model` offers these names and builds them from its settings (domainmona.medical.model).

`options`: `monai_class`, the network's class; `encoder`, the submodule adapters go into; `stems`, the other
modules the frozen encoder owns; `encoder_label`, what reports call that encoder."""

from __future__ import annotations

from domainmona.adapters.backbones import Backbone, register_backbone

VOLUME_MEAN = (0.0,)  # CT intensities are scaled to 0-1 by the pipeline's transforms
VOLUME_STD = (1.0,)


@register_backbone
def swinunetr() -> Backbone:
    def build(in_chans: int = 1, out_channels: int = 14, feature_size: int = 48):
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(in_channels=in_chans, out_channels=out_channels, feature_size=feature_size)

    return Backbone(name="swinunetr", build=build, family="monai-swin", channels=(48, 96, 192, 384, 768),
                    strides=(2, 4, 8, 16, 32), layouts=("monai-ssl", "monai-bundle"), dims=3,
                    mean=VOLUME_MEAN, std=VOLUME_STD, summary="MONAI SwinUNETR, 62 M",
                    options={"monai_class": "SwinUNETR", "encoder": "swinViT", "stems": (),
                             "encoder_label": "Swin encoder"})


@register_backbone
def unetr() -> Backbone:
    def build(in_chans: int = 1, out_channels: int = 14, img_size: int = 96):
        from monai.networks.nets import UNETR

        return UNETR(in_channels=in_chans, out_channels=out_channels, img_size=img_size)

    return Backbone(name="unetr", build=build, family="monai-vit", channels=(768,), strides=(16,),
                    layouts=("monai-bundle", "plain"), dims=3, mean=VOLUME_MEAN, std=VOLUME_STD,
                    summary="MONAI UNETR (3D ViT-B/16), 92 M",
                    options={"monai_class": "UNETR", "encoder": "vit", "stems": (),
                             "encoder_label": "ViT encoder"})


@register_backbone
def segresnet() -> Backbone:
    def build(in_chans: int = 1, out_channels: int = 14):
        from monai.networks.nets import SegResNet

        return SegResNet(spatial_dims=3, in_channels=in_chans, out_channels=out_channels)

    return Backbone(name="segresnet", build=build, family="monai-segresnet", channels=(8, 16, 32, 64),
                    strides=(1, 2, 4, 8), layouts=("monai-bundle", "plain"), dims=3, mean=VOLUME_MEAN,
                    std=VOLUME_STD, summary="MONAI SegResNet, 4.7 M",
                    options={"monai_class": "SegResNet", "encoder": "down_layers",
                             "stems": ("convInit",), "encoder_label": "CNN encoder"})
