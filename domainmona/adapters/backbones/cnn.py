"""CNN backbones built with timm (`features_only`): their stage outputs at strides 4, 8, 16 and 32 feed the FPN
or the segmentation decoder. Weights in timm, torchvision and OpenMMLab layouts load, EfficientNets' also in
efficientnet_pytorch's (domainmona.adapters.pretrained)."""

from __future__ import annotations

from domainmona.adapters.backbones import Backbone, register_backbone

CNN_LAYOUTS = ("timm", "torchvision", "openmmlab")


def _cnn(name: str, timm_name: str, channels: tuple[int, ...], out_indices: tuple[int, ...], summary: str,
         layouts: tuple[str, ...] = CNN_LAYOUTS) -> Backbone:
    def build(in_chans: int = 3, **options):
        from domainmona.adapters.backbones.features import TimmFeatures

        return TimmFeatures(timm_name, in_chans, out_indices, **options)

    return Backbone(name=name, build=build, family="cnn", channels=channels, strides=(4, 8, 16, 32),
                    layouts=layouts, summary=summary, timm=(timm_name, {}), options={"out_indices": out_indices})


@register_backbone
def resnet50() -> Backbone:
    return _cnn(name="resnet50", timm_name="resnet50", channels=(256, 512, 1024, 2048), out_indices=(1, 2, 3, 4),
                summary="ResNet-50, 24 M (SSL4EO, MoCo, DINO weights)")


@register_backbone
def resnet101() -> Backbone:
    return _cnn(name="resnet101", timm_name="resnet101", channels=(256, 512, 1024, 2048),
                out_indices=(1, 2, 3, 4), summary="ResNet-101, 43 M")


@register_backbone
def convnext_t() -> Backbone:
    return _cnn(name="convnext-t", timm_name="convnext_tiny", channels=(96, 192, 384, 768),
                out_indices=(0, 1, 2, 3), summary="ConvNeXt-T, 28 M")


@register_backbone
def convnext_s() -> Backbone:
    return _cnn(name="convnext-s", timm_name="convnext_small", channels=(96, 192, 384, 768),
                out_indices=(0, 1, 2, 3), summary="ConvNeXt-S, 50 M")


@register_backbone
def convnext_b() -> Backbone:
    return _cnn(name="convnext-b", timm_name="convnext_base", channels=(128, 256, 512, 1024),
                out_indices=(0, 1, 2, 3), summary="ConvNeXt-B, 88 M")


@register_backbone
def efficientnet_b0() -> Backbone:
    return _cnn(name="efficientnet-b0", timm_name="efficientnet_b0", channels=(24, 40, 112, 320),
                out_indices=(1, 2, 3, 4), summary="EfficientNet-B0, 3.6 M",
                layouts=("timm", "torchvision", "efficientnet_pytorch"))


@register_backbone
def efficientnet_lite0() -> Backbone:
    """B0 without squeeze-excitation, ReLU6: the mobile variant ImageNet files ship for (efficientnet_pytorch)."""
    return _cnn(name="efficientnet-lite0", timm_name="efficientnet_lite0", channels=(24, 40, 112, 320),
                out_indices=(1, 2, 3, 4), summary="EfficientNet-Lite0, 3.0 M", layouts=("timm", "efficientnet_pytorch"))


@register_backbone
def mobilenetv2() -> Backbone:
    return _cnn(name="mobilenetv2", timm_name="mobilenetv2_100", channels=(24, 32, 96, 320),
                out_indices=(1, 2, 3, 4), summary="MobileNetV2, 2.2 M", layouts=("timm", "torchvision"))
