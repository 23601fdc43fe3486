"""The segment-ct networks (MONAI SwinUNETR, UNETR, SegResNet), their encoders and where adapters go.

SwinUNETR comes with the pre-1.5 patch merging on offer and an optional slim CNN decoder.

Why the two additions:
- MONAI 1.5 fixed 3-D PatchMerging, which used to take two of its eight sub-voxels twice
  (MONAI issues #4757/#8284). Its `"merging"` and `"mergingv2"` both use all eight now, in different orders,
  so neither matches the public SSL weights (`model_swinvit.pt`), which were trained on the old order.
  MONAI 1.6 offers no legacy class; `LegacyPatchMerging` restores that order.
- In SwinUNETR the Swin width (`feature_size`) also sets every decoder width, and the decoder holds ~87% of
  the parameters (`encoder10` alone ~32M at width 48). `SlimDecoderSwinUNETR` keeps the 48-wide Swin (so
  the SSL weights still load) under a narrower decoder, joined by 1x1x1 projections.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import UNETR, SegResNet, SwinUNETR
from monai.networks.nets.swin_unetr import PatchMergingV2
from torch import nn

from domainmona.adapters.backbones import backbones, get_backbone
from domainmona.errors import UserError
from domainmona.medical.weights import load_network_weights

# Sub-voxel (d, h, w) offsets of MONAI < 1.5's 3-D PatchMerging, in concatenation order: (0,1,0) and (0,0,1)
# appear twice, (1,1,0) and (0,1,1) never.
LEGACY_MERGING_OFFSETS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))


class LegacyPatchMerging(PatchMergingV2):
    """3-D patch merging in MONAI < 1.5's voxel order, the one the public SSL Swin weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return super().forward(x)
        _, d, h, w, _ = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in LEGACY_MERGING_OFFSETS], -1)
        return self.reduction(self.norm(x))


class SlimDecoderSwinUNETR(SwinUNETR):
    """SwinUNETR with a `decoder_size`-wide CNN decoder under a `feature_size`-wide Swin encoder."""

    def __init__(self, *, feature_size: int, decoder_size: int, **kwargs: Any):
        super().__init__(feature_size=decoder_size, **kwargs)
        self.swinViT = SwinUNETR(feature_size=feature_size, **kwargs).swinViT
        self.skip_projections = nn.ModuleList(
            nn.Conv3d(feature_size * 2**i, decoder_size * 2**i, kernel_size=1) for i in range(5))
        # SwinUNETR.forward feeds swinViT's five outputs to the decoder; project them on the way.
        self.swinViT.register_forward_hook(self._project_skips)

    def _project_skips(self, _module: nn.Module, _args: Any, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project(h) for project, h in zip(self.skip_projections, hidden)]


# MONAI's names of the output head (the convolution to the classes): SwinUNETR's and UNETR's `out`, SegResNet's
# `conv_final`. It is re-initialised for another class count and trains in every decoder mode.
HEAD_NAMES = ("out", "conv_final")
# UNETRWithHST's side network and its skip projections: they train whole whatever the decoder does.
SIDE_MODULES = ("hst", "hst_skips")


def build_swinunetr(model_cfg: dict[str, Any], out_channels: int, in_channels: int = 1) -> SwinUNETR:
    """Plain (or slim-decoder) SwinUNETR from the `model:` settings; no adapters yet."""
    merging = model_cfg["merging"]
    common = dict(in_channels=in_channels, out_channels=out_channels,
                  downsample=LegacyPatchMerging if merging == "legacy" else merging,
                  dropout_path_rate=model_cfg["dropout_path_rate"], use_checkpoint=model_cfg["use_checkpoint"])
    feature_size = model_cfg["feature_size"]
    decoder_size = model_cfg["decoder_size"] or feature_size
    if decoder_size == feature_size:
        return SwinUNETR(feature_size=feature_size, **common)
    return SlimDecoderSwinUNETR(feature_size=feature_size, decoder_size=decoder_size, **common)


def build_unetr(model_cfg: dict[str, Any], out_channels: int, roi: int, in_channels: int = 1) -> UNETR:
    """Plain UNETR from `model.unetr` (with `model.side` hst: `UNETRWithHST`, HST's preset and options from
    `model.side_cfg`); its ViT's position embeddings are sized for `roi`^3 patches."""
    cfg = model_cfg["unetr"]
    if model_cfg.get("side") == "hst":
        from domainmona.medical.unetr_hst import UNETRWithHST

        options = dict(model_cfg.get("side_cfg") or {})
        if "preset" in options:
            options["hst_preset"] = options.pop("preset")
        try:
            return UNETRWithHST(in_channels=in_channels, out_channels=out_channels, img_size=roi,
                                feature_size=cfg["feature_size"], hidden_size=cfg["hidden_size"],
                                mlp_dim=cfg["mlp_dim"], num_heads=cfg["num_heads"], **options)
        except TypeError as exc:  # an option HST does not take
            raise UserError(f"hst: {exc}") from None
    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=roi, feature_size=cfg["feature_size"],
                 hidden_size=cfg["hidden_size"], mlp_dim=cfg["mlp_dim"], num_heads=cfg["num_heads"])


def build_segresnet(model_cfg: dict[str, Any], out_channels: int, in_channels: int = 1) -> SegResNet:
    """Plain SegResNet from `model.segresnet`."""
    cfg = model_cfg["segresnet"]
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                     init_filters=cfg["init_filters"], blocks_down=tuple(cfg["blocks_down"]),
                     blocks_up=tuple(cfg["blocks_up"]))


def build_network(model_cfg: dict[str, Any], out_channels: int, roi: int | None = None) -> nn.Module:
    """The plain network `model.name` names; UNETR needs the patch size `roi`."""
    name = model_cfg["name"]
    if name == "unetr":
        if roi is None:
            raise ValueError("UNETR is built for one patch size: pass roi")
        return build_unetr(model_cfg, out_channels, roi)
    if name == "segresnet":
        return build_segresnet(model_cfg, out_channels)
    return build_swinunetr(model_cfg, out_channels)


def encoder_modules(name: str) -> tuple[str, tuple[str, ...]]:
    """The network's frozen encoder (the backbone registry's record): the module adapters go into, and the other
    modules it owns."""
    options = get_backbone(name).options
    return options["encoder"], tuple(options["stems"])


def encoder(model: nn.Module, name: str) -> nn.Module:
    """The module of `model` (network `name`) that holds the adapters."""
    return model.get_submodule(encoder_modules(name)[0])


def assemble(model_cfg: dict[str, Any], out_channels: int, pretrained: str | None = None, verbose: bool = False,
             device: torch.device | str = "cpu", roi: int | None = None) -> nn.Module:
    """Build on `device`, load pretrained weights (the encoder's, or the whole network's), then inject adapters
    into the encoder: the core freezes it except what the method trains. SegResNet's stem conv (`convInit`,
    before the first down block) is frozen with its encoder unless the method is 'full'. The CNN decoder follows
    `model.decoder` (`decoder_mode`: null resolves from the weights): train leaves it trainable; frozen freezes
    it but the output head; adapt also injects the method into each of its stages (`decoder_parts`), so that
    their adapters and the head train. Adapter 'none': plain model."""
    from domainmona.adapters import inject
    from domainmona.medical.settings import decoder_mode

    name, method = model_cfg["name"], model_cfg["adapter"]
    model = build_network(model_cfg, out_channels, roi).to(device)
    if pretrained is not None:
        load_network_weights(model, name, pretrained, verbose=verbose)
    if method == "none":
        return model
    inject(encoder(model, name), method, **model_cfg["adapter_cfg"])
    for stem in encoder_modules(name)[1]:
        model.get_submodule(stem).requires_grad_(method == "full")
    for module in tuned_vit_modules(model):  # HST tunes the frozen ViT's LayerNorms
        model.get_submodule(module).requires_grad_(True)
    mode = decoder_mode(model_cfg, pretrained)
    if mode != "train":
        for module in decoder_modules(model, name).values():
            module.requires_grad_(False)
    if mode == "adapt":
        for part in decoder_parts(model, name).values():
            inject(part, method, **model_cfg["adapter_cfg"])
    return model


def head_of(model: nn.Module) -> str:
    """The name of the network's output head (see HEAD_NAMES)."""
    return next(name for name, _ in model.named_children() if name in HEAD_NAMES)


def decoder_modules(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """The CNN decoder of network `name`: its top-level modules but the encoder (and its stems), the output head
    and a side network."""
    module, stems = encoder_modules(name)
    outside = {module, *stems, head_of(model), *SIDE_MODULES}
    return {child: m for child, m in model.named_children() if child not in outside}


def decoder_parts(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """The decoder modules holding blocks an adapter family knows, each adapted on its own by --decoder adapt:
    every stage of SwinUNETR's and UNETR's decoder (family monai-unetr-decoder), SegResNet's `up_layers`
    (monai-segresnet). The rest (SegResNet's upsampling convs, a slim decoder's skip projections) stays frozen."""
    from domainmona.adapters.families import FAMILIES
    from domainmona.adapters.families.spec import matches

    return {child: m for child, m in decoder_modules(model, name).items()
            if any(matches(block, family.blocks) for block in m.modules() for family in FAMILIES)}


def tuned_vit_modules(model: nn.Module) -> list[str]:
    """Modules of the encoder a side network trains whole (UNETR with HST: the ViT's LayerNorms); none
    otherwise."""
    tuned = getattr(model, "tuned_norm_names", None)
    return list(dict.fromkeys(name.rpartition(".")[0] for name in tuned())) if tuned else []


def network_of(model: nn.Module) -> str:
    """The segment-ct network name of a model `assemble` built."""
    classes = {c.__name__ for c in type(model).__mro__}
    for name, spec in backbones(3).items():
        if spec.options.get("monai_class") in classes:
            return name
    raise TypeError(f"{type(model).__name__} is not a segment-ct network")


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters split into the encoder (Swin, ViT, or SegResNet's stem and down blocks), the adapters injected
    into it, the CNN decoder (the rest) and the adapters injected into the decoder."""
    from domainmona.adapters import adapter_parameter_names

    module, stems = encoder_modules(network_of(model))
    prefixes = tuple(f"{m}." for m in (module, *stems))
    adapters = adapter_parameter_names(model)
    groups: dict[str, list[nn.Parameter]] = {"encoder": [], "adapter": [], "decoder": [], "decoder_adapter": []}
    for name, param in model.named_parameters():
        part = "encoder" if name.startswith(prefixes) else "decoder"
        groups[("adapter" if part == "encoder" else "decoder_adapter") if name in adapters else part].append(param)
    return groups


def optimizer_groups(model: nn.Module, lr: float, adapter_lr: float) -> list[dict]:
    """AdamW groups: adapters (encoder's and decoder's) at `adapter_lr`, every other trainable weight at `lr`."""
    groups = {name: [p for p in params if p.requires_grad] for name, params in parameter_groups(model).items()}
    return [g for g in ({"params": groups["encoder"] + groups["decoder"], "lr": lr},
                        {"params": groups["adapter"] + groups["decoder_adapter"], "lr": adapter_lr}) if g["params"]]
