"""VPT (Jia et al. ECCV 2022): learnable prompt tokens. `vpt-deep`: p prompts per block as an attention prefix in
every (shifted) window, 2D and 3D; `vpt-shallow`: p prompts carried through a plain ViT from its first block."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.methods.reparam import require_transformer
from domainmona.adapters.modules.prompts import DropPrompts, PrependPrompts, PromptedAttention, new_prompts
from domainmona.errors import UserError


@dataclass(frozen=True)
class VPTConfig:
    prompts: int = 10  # p, per block (deep) or in all (shallow)


def _patch_fan_in(root: nn.Module) -> int:
    """Inputs of one patch-embedding output (3 * patch^2 for RGB): the first conv of the backbone."""
    conv = next(m for m in root.modules() if isinstance(m, nn.modules.conv._ConvNd))
    return conv.weight[0].numel()


@register_method(order=170)
class VPTDeep(Method):
    name = "vpt-deep"
    summary = "prompt tokens per block as an attention prefix in every window"
    Config = VPTConfig

    def attach_model(self, root, sites, config) -> None:
        if config.prompts < 1:
            raise UserError(f"method '{self.name}': prompts must be >= 1")
        fan_in = _patch_fan_in(root)
        for site in sites:
            require_transformer(self.name, site)
            qkv = site.family.qkv(site.block)
            attention = next((m for m in site.block.modules() if getattr(m, "qkv", None) is qkv), None)
            if qkv is None or attention is None:
                raise UserError(f"method '{self.name}' needs a fused qkv attention, which {site.family.name} "
                                f"block '{site.name}' does not have")
            PromptedAttention.convert(attention, site.block.norm1, config.prompts, fan_in)


@register_method(order=180)
class VPTShallow(Method):
    name = "vpt-shallow"
    summary = "prompt tokens carried through a plain ViT (timm ViT only)"
    Config = VPTConfig

    def attach_model(self, root, sites, config) -> None:
        family = sites[0].family.name
        if family != "timm-vit":
            raise UserError(f"method '{self.name}' is defined for plain ViTs only, not {family} backbones "
                            f"(try 'vpt-deep')")
        if config.prompts < 1:
            raise UserError(f"method '{self.name}': prompts must be >= 1")
        vit = root.get_submodule(sites[0].name.rpartition(".")[0].rpartition(".")[0])
        prompts = new_prompts(config.prompts, sites[0].dim, _patch_fan_in(root), next(sites[0].block.parameters()))
        PrependPrompts.convert(vit.norm_pre, vit.num_prefix_tokens, prompts)
        DropPrompts.convert(vit.norm, vit.num_prefix_tokens, config.prompts)
