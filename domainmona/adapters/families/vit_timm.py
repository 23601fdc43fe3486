"""Plain timm ViT: tokens (B, prefix + H*W, C); CLS/register tokens skip Mona's conv path."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, Site, matches, register_family, timm_checkpointing

_VIT = (("timm.models.vision_transformer", "VisionTransformer"),)
_PATCH_EMBED = (("timm.layers.patch_embed", "PatchEmbed"),)


@dataclass
class TokenGrid:
    """Patch grid of the current input and the number of leading prefix tokens, shared by all blocks."""

    shape: tuple[int, int]
    prefix: int


class TimmViTBlockForward(AdapterHost):
    token_grid: TokenGrid

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        grid = self.token_grid
        branch = self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = self.join_attention(x, branch, grid.shape, grid.prefix)
        return self.join_mlp(x, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), grid.shape, grid.prefix)


def _track_grid(root: nn.Module, sites: list[Site]) -> None:
    """Share one patch grid between the patch embed and every block; a hook on the patch embed updates it
    from each input image's size. (Kept on modules, not in a closure, so deep copies get their own grid.)"""
    vit = next(m for m in root.modules() if matches(m, _VIT))
    patch_embed = next(m for m in vit.modules() if matches(m, _PATCH_EMBED))
    patch_embed.token_grid = TokenGrid(tuple(patch_embed.grid_size), vit.num_prefix_tokens)
    for site in sites:
        site.block.token_grid = patch_embed.token_grid
    patch_embed.register_forward_pre_hook(_update_grid)


def _update_grid(patch_embed: nn.Module, args) -> None:
    patch_embed.token_grid.shape = tuple(patch_embed.dynamic_feat_size(tuple(args[0].shape[-2:])))


def _qkv(block: nn.Module) -> nn.Module | None:
    qkv = getattr(block.attn, "qkv", None)
    return qkv if isinstance(qkv, nn.Linear) else None


FAMILY = register_family(Family(
    name="timm-vit",
    blocks=(("timm.models.vision_transformer", "Block"),),
    roots=_VIT,
    forward=TimmViTBlockForward,
    dim=lambda block: block.norm1.normalized_shape[0],
    qkv=_qkv,
    prepare=_track_grid,
    checkpointing=timm_checkpointing,
))
