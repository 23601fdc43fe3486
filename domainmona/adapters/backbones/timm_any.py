"""`timm:NAME`: any timm model timm can give feature maps for, without a registration. Its maps and family are
read by building it once (random weights): the last four maps at strides 4 to 32, or, for a model whose maps
all have one stride (a plain ViT), the simple feature pyramid on its last map."""

from __future__ import annotations

import functools

from domainmona.adapters.backbones import Backbone
from domainmona.errors import UserError


@functools.cache
def timm_backbone(model: str) -> Backbone:
    import timm

    from domainmona.adapters.backbones.features import SimpleFeaturePyramid, TimmFeatures
    from domainmona.adapters.families import find_backbone

    if model not in timm.list_models():
        raise UserError(f"timm:{model}: timm has no such model (see timm.list_models())")
    try:
        probe = timm.create_model(model, pretrained=False, features_only=True)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise UserError(f"timm:{model}: timm cannot give its feature maps ({str(exc).splitlines()[0]})") from None
    info = probe.feature_info
    channels, strides = info.channels(), info.reduction()
    try:
        family = find_backbone(probe)[2].name
    except UserError:  # builds, but every method ('full' too) is refused in one line when injected
        family = "none"
    if len(set(strides)) == 1:  # a plain ViT: one stride
        dim = channels[-1]
        options = {"out_indices": (-1,), "simple_pyramid": True, "dynamic_img_size": True}
        channels, strides, pyramid = SimpleFeaturePyramid.channels(dim), (4, 8, 16, 32), "simple"
    else:
        wanted = [i for i, s in enumerate(strides) if 4 <= s <= 32][-4:]
        if [strides[i] for i in wanted] != [4, 8, 16, 32]:
            raise UserError(f"timm:{model}: its feature maps have strides {strides}, not 4, 8, 16 and 32")
        options = {"out_indices": tuple(info.out_indices[i] if hasattr(info, 'out_indices') else i for i in wanted)}
        channels, strides, pyramid = tuple(channels[i] for i in wanted), (4, 8, 16, 32), "stages"

    def build(in_chans: int = 3, **extra):
        return TimmFeatures(model, in_chans, **{**options, **extra})

    return Backbone(name=f"timm:{model}", build=build, family=family, channels=tuple(channels),
                    strides=tuple(strides), layouts=("timm",), summary=f"timm {model}",
                    timm=None if pyramid == "simple" else (model, {"out_indices": options["out_indices"]}),
                    pyramid=pyramid)
