"""Feature modules of the 2D backbones built with timm: the stride-4-to-32 maps as NCHW tensors, and ViTDet's
simple feature pyramid for plain ViTs (Li et al., "Exploring Plain Vision Transformer Backbones for Object
Detection", ECCV 2022, sec. 3)."""

from __future__ import annotations

import torch
from torch import nn

from domainmona.errors import UserError


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ViTDet's norm in the pyramid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """From the last ViT block's stride-16 map (C channels) to maps at strides 4, 8, 16 and 32 with C/4, C/2,
    C and C channels: two deconvolutions up (with LayerNorm and GELU between), one deconvolution, the map
    itself, a 2x2 max-pooling down. ViTDet follows each with 1x1 and 3x3 convolutions to the detector's width;
    here the FPN or decoder after it does that. Trains with the head (it is not part of the pretrained ViT)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_channels = self.channels(dim)
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.down = nn.MaxPool2d(2, stride=2)

    @staticmethod
    def channels(dim: int) -> tuple[int, int, int, int]:
        return dim // 4, dim // 2, dim, dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.up4(x), self.up2(x), x, self.down(x)]


class TimmFeatures(nn.Module):
    """A timm model as `features_only` (`body`, the adapted backbone) and, for a plain ViT, what makes its
    pyramid (`pyramid`): the simple pyramid on its last block, or a side network (`side`: 'hst', 'vit-comer',
    domainmona.adapters.side) that runs the ViT itself, block by block. Forward gives NCHW maps whatever
    layout timm returns (Swin's are NHWC)."""

    def __init__(self, model: str, in_chans: int = 3, out_indices: tuple[int, ...] | None = None,
                 simple_pyramid: bool = False, side: str | None = None, side_cfg: dict | None = None,
                 pretrained_bands: int = 3, **kwargs):
        super().__init__()
        import timm

        from domainmona.adapters.side import DEFAULT_SIDE, build_side
        from domainmona.adapters.side.host import host_vit

        if out_indices is not None:
            kwargs["out_indices"] = out_indices
        self.body = timm.create_model(model, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
        self.nhwc = getattr(self.body, "output_fmt", "NCHW") == "NHWC"
        self.pretrained_bands = pretrained_bands  # the bands its pretrained weights' input filters take
        side = side or (DEFAULT_SIDE if simple_pyramid else None)
        if side is not None and not simple_pyramid:
            raise UserError(f"side network '{side}': {model} makes its own pyramid (side networks need a plain ViT)")
        self.side = side
        self.pyramid = None if side is None else build_side(side, host_vit(self.body), in_chans, side_cfg)

    @property
    def out_channels(self) -> tuple[int, ...]:
        if self.pyramid is not None:
            return tuple(self.pyramid.out_channels)
        return tuple(self.body.feature_info.channels())

    def tuned_vit_modules(self) -> list[str]:
        """Paths (in this module) of the ViT's own modules its side network trains: HST's LayerNorms."""
        tuned = getattr(self.pyramid, "tuned_norm_paths", None)
        if tuned is None:
            return []
        from domainmona.adapters.side.host import host_vit

        host = host_vit(self.body)
        vit_path = next(name for name, m in self.named_modules() if m is host.vit)
        modules = dict.fromkeys(path.rpartition(".")[0] for path in tuned(host))  # parameter -> its LayerNorm
        return [f"{vit_path}.{path}" for path in modules]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.side not in (None, "simple"):
            from domainmona.adapters.side.host import host_vit

            return list(self.pyramid(x, host_vit(self.body)))
        maps = [m.permute(0, 3, 1, 2) if self.nhwc else m for m in self.body(x)]
        return self.pyramid(maps[-1]) if self.pyramid is not None else maps


def input_convolution(module: nn.Module) -> nn.Conv2d:
    """The convolution that sees the image bands (a ResNet's conv1, a ConvNeXt or EfficientNet stem, a ViT's or
    Swin's patch embedding), as `domainmona.adapters.bands.input_filters` finds it."""
    from domainmona.adapters.bands import input_filters

    return module.get_submodule(input_filters(module).rpartition(".")[0])


def trained_whole(module: nn.Module) -> list[str]:
    """Names in `module` of what trains whole beside the adapter method and must be saved with its adapters:
    what makes a plain ViT's pyramid (the simple pyramid or a side network: new, never pretrained), the ViT's
    own modules a side network tunes (HST's LayerNorms), and the input convolution on other bands than its
    pretrained weights' (3, or e.g. Prithvi's 6 HLS bands; it trains: no pretrained filter fits them)."""
    conv = input_convolution(module)
    bands = next((m.pretrained_bands for m in module.modules() if isinstance(m, TimmFeatures)), 3)
    names = []
    for name, m in module.named_modules():
        prefix = f"{name}." if name else ""
        if any(name == n or name.startswith(f"{n}.") for n in names):  # inside one listed already
            continue
        if isinstance(m, TimmFeatures) and m.pyramid is not None:
            names += [f"{prefix}pyramid", *(prefix + path for path in m.tuned_vit_modules())]
        elif isinstance(m, SimpleFeaturePyramid) or m is conv and conv.in_channels != bands:
            names.append(name)
    return names


def train_whole(module: nn.Module) -> None:
    """Make what `trained_whole` names trainable (after the adapter method's freezing, which leaves the ViT's
    own modules frozen). Idempotent."""
    for name in trained_whole(module):
        module.get_submodule(name).requires_grad_(True)


class SmpEncoder(nn.Module):
    """A registered 2D backbone's features module as a segmentation-models-pytorch encoder. smp's decoders take
    the input, a stride-2 map (none here: 0 channels, as smp gives for transformer encoders) and the stride-4
    to 32 maps. `side`/`side_cfg`: a plain ViT's side network (domainmona.adapters.side)."""

    def __init__(self, backbone: str, in_chans: int = 3, depth: int = 5, output_stride: int = 32,
                 side: str | None = None, side_cfg: dict | None = None):
        from domainmona.adapters.backbones import build_backbone

        super().__init__()
        if depth != 5 or output_stride != 32:
            raise UserError(f"{backbone}: its smp encoder gives 5 levels at output stride 32")
        sided = {"side": side, "side_cfg": side_cfg} if side else {}
        self.features = build_backbone(backbone, in_chans=in_chans, **sided)
        self.out_channels = [in_chans, 0, *self.features.out_channels]
        self.output_stride = output_stride

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """smp's hook for other bands: the features module is built for them already."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x.new_zeros(x.shape[0], 0, x.shape[2] // 2, x.shape[3] // 2), *self.features(x)]

    @classmethod
    def register(cls, backbone: str, in_chans: int, side: str | None = None, side_cfg: dict | None = None) -> str:
        """The smp encoder name of `backbone` (with its side network) on `in_chans` bands: smp builds encoders
        by name from its `encoders` table, so one is added there."""
        import json

        from segmentation_models_pytorch.encoders import encoders

        name = f"domainmona:{backbone}:{in_chans}"
        if side:
            name += f":{side}:{json.dumps(side_cfg or {}, sort_keys=True)}"
        encoders[name] = {"encoder": cls, "pretrained_settings": {},
                          "params": {"backbone": backbone, "in_chans": in_chans, "side": side, "side_cfg": side_cfg}}
        return name
