"""`load_pretrained(backbone, path)`: pretrained backbone weights from a local file, in the layouts users hold.

The layout (the report's `layout`) is read from the file's containers, prefixes and names:
- timm: a timm model's state dict (its head, `fc` or `classifier` stays unused); torchvision's ResNets have the same
  names;
- torchvision: ConvNeXt, EfficientNet and MobileNetV2 (`features.N...`, converted in backbones/cnn_weights.py), also
  `features` saved on its own and MobileNetV2's flat pre-0.8 names (`features.N.conv.{0,1,3,4,6,7}`);
- efficientnet_pytorch: EfficientNet and EfficientNet-Lite (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`);
- openmmlab: mmpretrain/mmdet (`state_dict`, `backbone.` prefix): ResNet (timm's names), ConvNeXt
  (`downsample_layers`, `stages.N.M.depthwise_conv`) and ViT (`layers.N.ln1`, backbones/vit_weights.py);
- mae: a `{"model": ...}` container around timm's names (MAE, DeiT, SatMAE, Scale-MAE, RETFound);
- dino: DINO's `teacher` (a container, or a `teacher.` prefix) and its `backbone.` prefix (the head left out);
- moco: MoCo v3's `module.base_encoder.` or MoCo v2's `module.encoder_q.` prefix (the projection head `fc`/`head`
  left out, and the momentum encoder);
- prithvi: Prithvi's plain MAE state dict (1.0; 2.0 nests it as `encoder.*`): a Conv3d patch embedding of tubelet 1
  loaded as the Conv2d one, its fixed 3D sin-cos position embedding cut to the class row and first frame; the MAE
  decoder (`decoder*`, `mask_token`) unused;
- sam: the official SAM/MedSAM file (`image_encoder.`, `prompt_encoder.`, `mask_decoder.`): the image encoder
  into timm's SAM ViT (`mlp.lin1` -> `mlp.fc1`), its neck, the prompt encoder and the mask decoder unused;
- monai-vit: MONAI's ViT (`patch_embedding.`, `blocks.N.mlp.linear1`), bare, `vit.`-prefixed or a whole UNETR
  (its decoder unused), into a UNETR's ViT; a perceptron patch embedding (Linear) and a conv one (Conv3d) load
  into either;
- microsoft-swin, timm-swin, openmmlab-swin: Swin's three namings, converted for the mmdet and timm Swins;
- monai-ssl: MONAI's self-supervised Swin (`model_swinvit.pt`, `module.layersN.0.blocks...`).
Converters live beside their families (backbones/*_weights.py). Position embeddings for another patch grid load
resampled to the grid the model is built on (timm ViTs and SAM resample them again to each input's grid). On other
than 3 bands, the file's RGB filters of the input convolution load inflated (domainmona.adapters.bands); filters
for another band count (Prithvi's 6 into a 4-band model) are refused, the rule inflating RGB filters only.

A checkpoint for another architecture is refused in one line, and nothing is loaded, when
1. a tensor named like one of the backbone's own has another shape (another width: ViT-B into ViT-S), RGB input
   filters for another band count (inflated), a ViT's position embedding for another grid, SAM's relative position
   tables and a Swin's relative position bias for a smaller window (resampled) excepted;
2. it holds blocks past the end of one of the backbone's sequences (a deeper network: ResNet-101 into ResNet-50);
3. less than 3/4 of the backbone's own tensors load (a shallower network: ResNet-50 fills half of ResNet-101;
   another family, ResNet into ConvNeXt, fills none).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import torch
from torch import nn

from domainmona.adapters.backbones import cnn_weights, vit_weights
from domainmona.adapters.backbones.vit_weights import Shapes
from domainmona.adapters.bands import input_filters
from domainmona.adapters.families import find_backbone
from domainmona.adapters.inject import adapter_parameter_names
from domainmona.adapters.weights import LoadReport, canonical_name, load_matching, read_checkpoint, strip_prefix
from domainmona.errors import UserError

Tensors = dict[str, torch.Tensor]


def detect_layout(tensors: Tensors) -> str:
    keys = list(tensors)
    if any(re.match(r"layers\d\.0\.blocks\.", k) for k in keys):
        return "monai-ssl"
    if any(".attn.w_msa." in k for k in keys):
        return "openmmlab-swin"
    if any(k.startswith("layers.0.downsample.") for k in keys):
        return "microsoft-swin"
    if any(k.startswith("layers.1.downsample.") for k in keys):
        return "timm-swin"
    return "plain"


def _shift_downsample(tensors: Tensors, by: int) -> Tensors:
    """Move patch-merging weights `by` stages: timm puts each merge at the start of the next stage, Microsoft
    at the end of the previous one (+1: Microsoft to timm, -1: back). By hand: timm's `checkpoint_filter_fn`
    needs the bare timm model, which smp's feature wrapper is not."""
    out = {}
    for key, value in tensors.items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        out[f"layers.{int(match[1]) + by}.downsample.{match[2]}" if match else key] = value
    return out


def convert_to_mmdet(tensors: Tensors, layout: str) -> Tensors:
    if layout == "timm-swin":
        tensors, layout = _shift_downsample(tensors, -1), "microsoft-swin"
    if layout == "microsoft-swin":
        from mmdet.models.backbones.swin import swin_converter  # Microsoft -> OpenMMLab names and merge order

        return strip_prefix(swin_converter(tensors), "backbone.")
    return tensors


def _to_monai(tensors: Tensors, layout: str) -> Tensors:
    # The same renaming MONAI's SwinUNETR.load_from does by hand (MONAI's Mlp names fc1/fc2 linear1/linear2).
    tensors = strip_prefix(tensors, "swinViT.")
    return {k.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2."): v
            for k, v in tensors.items()}


def _unfold_order_back(v: torch.Tensor) -> torch.Tensor:
    """Undo swin_converter's reordering of the 4 merged sub-patches in a patch-merging weight (last dim)."""
    lead, channels = v.shape[:-1], v.shape[-1]
    v = v.reshape(*lead, channels // 4, 4).transpose(-1, -2)  # (..., 4 in OpenMMLab order, C/4)
    return v[..., [0, 2, 1, 3], :].reshape(*lead, channels)   # the permutation is its own inverse


def convert_mmdet_to_microsoft(tensors: Tensors) -> Tensors:
    """OpenMMLab Swin names and merge order back to the official Microsoft layout: the inverse of mmdet's
    `swin_converter`, which exists in one direction only. The per-stage output norms (`norm0..3`) have no
    Microsoft counterpart and are left out."""
    out = {}
    for key, value in tensors.items():
        if re.match(r"norm\d\.", key):
            continue
        if key.startswith("stages."):
            key = "layers." + key[len("stages."):]
            key = key.replace(".attn.w_msa.", ".attn.").replace(".ffn.layers.0.0.", ".mlp.fc1.")
            key = key.replace(".ffn.layers.1.", ".mlp.fc2.")
            if ".downsample." in key and (".reduction." in key or ".norm." in key):
                value = _unfold_order_back(value)
        elif key.startswith("patch_embed.projection."):
            key = key.replace("patch_embed.projection.", "patch_embed.proj.")
        out[key] = value
    return out


def _convert_to_timm(tensors: Tensors, layout: str) -> Tensors:
    if layout == "openmmlab-swin":
        tensors, layout = convert_mmdet_to_microsoft(tensors), "microsoft-swin"
    return _shift_downsample(tensors, +1) if layout == "microsoft-swin" else tensors


# A family's converter: (the file's tensors, the backbone's own shapes, the backbone) -> (tensors under the
# backbone's names, the layout found).
Converter = Callable[[Tensors, Shapes, nn.Module], tuple[Tensors, str]]


def _by_layout(convert: Callable[[Tensors, str], Tensors]) -> Converter:
    """A Swin/MONAI converter, which takes the layout `detect_layout` names, as a `Converter`."""
    def run(tensors: Tensors, own: Shapes, module: nn.Module) -> tuple[Tensors, str]:
        layout = detect_layout(tensors)
        return convert(tensors, layout), layout

    return run


def _fit_windows(convert: Converter) -> Converter:
    """A Swin converter followed by fitting the attention windows: a model whose last stages are smaller than the
    file's window (timm's Swin built for small tiles shrinks them) gets the relative position bias tables resized
    with timm's own function, and the file's position index (a buffer derived from the window) left out."""
    def run(tensors: Tensors, own: Shapes, module: nn.Module) -> tuple[Tensors, str]:
        from timm.layers import resize_rel_pos_bias_table

        tensors, layout = convert(tensors, own, module)
        out = {}
        for key, value in tensors.items():
            shape = own.get(canonical_name(key))
            if shape is None or shape == value.shape:
                out[key] = value
            elif key.endswith("relative_position_bias_table"):
                window = round((shape[0] ** 0.5 + 1) / 2)
                out[key] = resize_rel_pos_bias_table(value, (window, window), shape)
            elif not key.endswith("relative_position_index"):
                out[key] = value
        return out, layout

    return run


_CONVERTERS: dict[str, Converter] = {
    "mmdet-swin": _fit_windows(_by_layout(convert_to_mmdet)),
    "timm-swin": _fit_windows(_by_layout(_convert_to_timm)),
    "monai-swin": _by_layout(_to_monai),
    "cnn": lambda tensors, own, module: cnn_weights.to_timm(tensors, own),
    "timm-vit": vit_weights.to_timm,
    "timm-sam": vit_weights.sam_to_timm,
    "monai-vit": vit_weights.monai_to_vit,
}
_AS_IS = _by_layout(lambda tensors, layout: tensors)
# Self-supervised training wrappers: the prefix of the encoder to keep, the layout it names.
_SSL_PREFIXES = {"teacher.": "dino", "base_encoder.": "moco", "encoder_q.": "moco"}
_PROJECTION_HEADS = ("fc.", "head.")  # MoCo's projection MLP on the ResNet's `fc` / the ViT's `head`
MIN_COVERAGE = 0.75


def _unwrap(tensors: Tensors, containers: tuple[str, ...]) -> tuple[Tensors, str | None]:
    """The backbone's tensors without the training wrappers' prefixes, and the layout the wrappers name (dino,
    moco, openmmlab, mae; None for none)."""
    tensors = strip_prefix(tensors, "module.")
    source = "dino" if "teacher" in containers else None
    prefix = next((p for p in _SSL_PREFIXES if any(k.startswith(p) for k in tensors)), None)
    if prefix:
        tensors, source = strip_prefix(tensors, prefix), _SSL_PREFIXES[prefix]
    if source == "moco":
        tensors = {k: v for k, v in tensors.items() if not k.startswith(_PROJECTION_HEADS)}
    if source is None and any(k.startswith("backbone.") for k in tensors):
        source = "openmmlab"
    if source is None and "model" in containers:
        source = "mae"
    return strip_prefix(tensors, "backbone."), source


def _holder_prefix(root: nn.Module) -> str:
    """Where in the backbone the names of a pretrained file start: timm's FeatureGetterNet (a ViT's features)
    holds the whole model as `model`."""
    return "model." if type(root).__name__ == "FeatureGetterNet" else ""


def _blocks_past_the_end(module: nn.Module, keys: list[str], prefix: str) -> list[str]:
    """The keys (under `prefix` in `module`) that index one of its sequences (nn.Sequential, nn.ModuleList) past
    its end."""
    lengths = {canonical_name(f"{name}."): len(m) for name, m in module.named_modules()
               if isinstance(m, (nn.Sequential, nn.ModuleList))}

    def past_the_end(key: str) -> bool:
        parts = canonical_name(prefix + key).split(".")
        for i, part in enumerate(parts):
            length = lengths.get(".".join(parts[:i]) + ".")
            if length is not None and part.isdigit() and int(part) >= length:
                return True
        return False

    return [key for key in keys if past_the_end(key)]


def _other_bands(report: LoadReport, tensors: Tensors, own: Shapes, module: nn.Module, prefix: str) -> str | None:
    """Why the file is refused when its only misfit is input filters for another band count that are not RGB ones
    (which load inflated); None otherwise."""
    first = input_filters(module)
    if first is None or len(report.mismatched) != 1:
        return None
    key = report.mismatched[0]
    theirs, ours = tensors[key].shape, own[canonical_name(prefix + key)]
    if canonical_name(prefix + key) != canonical_name(first) or theirs[:1] + theirs[2:] != ours[:1] + ours[2:]:
        return None
    return (f"its input filters '{key}' take {theirs[1]} bands, this backbone {ours[1]} (only RGB filters are "
            f"inflated to other band counts, domainmona.adapters.bands): build it on the file's {theirs[1]} bands")


def _refuse_other_architecture(path, family: str, tensors: Tensors, own: Shapes, module: nn.Module,
                               prefix: str) -> Callable[[LoadReport], None]:
    """The module docstring's rule, checked on the counts before anything loads."""
    def check(report: LoadReport) -> None:
        what = f"{path}: not weights for this {family} backbone ({report.layout} layout)"
        bands = _other_bands(report, tensors, own, module, prefix)
        if bands:
            raise UserError(f"{path}: {bands}")
        if report.mismatched:
            key = report.mismatched[0]
            raise UserError(f"{what}: '{key}' is {tuple(tensors[key].shape)} in the file, "
                            f"{tuple(own[canonical_name(prefix + key)])} here ({len(report.mismatched)} such tensors)")
        extra = _blocks_past_the_end(module, report.unexpected, prefix)
        if extra:
            raise UserError(f"{what}: it holds {len(extra)} tensors of blocks this backbone lacks, e.g. '{extra[0]}'")
        if not report.loaded:
            example = next(iter(tensors))
            raise UserError(f"{path}: no tensor fits this {family} backbone ({report.layout} layout, e.g. '{example}')")
        total = report.loaded + len(report.missing)
        if report.loaded < MIN_COVERAGE * total:
            raise UserError(f"{what}: it fills only {report.loaded} of the backbone's {total} tensors (at least "
                            f"{MIN_COVERAGE:.0%} must load), e.g. '{report.missing[0]}' stays missing")

    return check


def load_pretrained(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load pretrained weights into the backbone inside `backbone`; returns the counts (see `LoadReport`). A file
    for another architecture is refused and loads nothing (module docstring)."""
    tensors, containers = read_checkpoint(path)
    tensors, source = _unwrap(tensors, containers)
    _, root, family = find_backbone(backbone)
    prefix, added = _holder_prefix(root), adapter_parameter_names(root)
    own = {canonical_name(k): v.shape for k, v in root.state_dict().items() if k not in added}
    tensors, naming = _CONVERTERS.get(family.name, _AS_IS)(
        tensors, {k.removeprefix(prefix): shape for k, shape in own.items()}, root)
    layout = source if source and naming in ("timm", "plain") else naming
    return load_matching(root, tensors, LoadReport(str(path), layout), inflate=True, prefix=prefix,
                         check=_refuse_other_architecture(path, family.name, tensors, own, root, prefix))
