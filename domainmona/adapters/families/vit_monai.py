"""MONAI plain 3D ViT (UNETR's `vit`, the encoders of MONAI's 3D self-supervised ViTs): `TransformerBlock`s on
tokens (B, N, C) of the (D/p, H/p, W/p) patch grid. UNETR builds it without a CLS token (`classification=False`);
a classification ViT's CLS token is a prefix token that skips Mona's conv path. A block cannot tell a 2D ViT
from a 3D one when adapters are made, so 2D MONAI ViTs are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, Site, matches, register_family
from domainmona.adapters.families.vit_timm import TokenGrid
from domainmona.adapters.modules.delta import refer
from domainmona.adapters.modules.prompts import PromptedAttention
from domainmona.errors import UserError

_VIT = (("monai.networks.nets.vit", "ViT"),)
_PATCH_EMBED = (("monai.networks.blocks.patchembedding", "PatchEmbeddingBlock"),)


class MonaiViTBlockForward(AdapterHost):
    """`TransformerBlock.forward` with the adapter joins (an optional cross-attention stays between them)."""

    token_grid: TokenGrid

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        grid = self.token_grid
        x = self.join_attention(x, self.attn(self.norm1(x), attn_mask=attn_mask), grid.shape, grid.prefix)
        if self.with_cross_attention:
            x = x + self.cross_attn(self.norm_cross_attn(x), context=context)
        return self.join_mlp(x, self.mlp(self.norm2(x)), grid.shape, grid.prefix)


def _patch_size(patch_embed: nn.Module) -> tuple[int, ...]:
    """The patch size of a conv ('conv') or rearrange-and-linear ('perceptron') patch embedding."""
    proj = patch_embed.patch_embeddings
    if isinstance(proj, nn.modules.conv._ConvNd):
        return tuple(proj.stride)
    lengths = dict(proj[0].axes_lengths)  # einops Rearrange(..., p1=16, p2=16, p3=16)
    return tuple(lengths[f"p{i + 1}"] for i in range(len(lengths)))


def _prepare(root: nn.Module, sites: list[Site]) -> None:
    """One token grid shared by the patch embedding and every block, updated from each input's size by a hook
    (kept on modules, so deep copies get their own grid); prompted attentions made runnable."""
    patch_embed = next((m for m in root.modules() if matches(m, _PATCH_EMBED)), None)
    if patch_embed is None:
        raise UserError(f"monai-vit: {type(root).__name__} has transformer blocks but no MONAI patch embedding")
    patch_embed.token_patch_size = _patch_size(patch_embed)
    if len(patch_embed.token_patch_size) != 3:
        raise UserError(f"monai-vit: 3D ViTs only, this one has {len(patch_embed.token_patch_size)}D patches")
    vit = next((m for m in root.modules() if matches(m, _VIT)), root)
    patch_embed.token_grid = TokenGrid((), int(hasattr(vit, "cls_token")))
    for site in sites:
        site.block.token_grid = patch_embed.token_grid
    patch_embed.register_forward_pre_hook(_update_grid)
    _prompt_ready(sites)


def _prompt_ready(sites: list[Site]) -> None:
    """VPT-deep's prompted attention (written for timm/mmdet attention) reads `proj`, `proj_drop` and `attn_drop`:
    point them at MONAI's `out_proj`, `drop_output` and `drop_weights` (references, so names stay MONAI's)."""
    for site in sites:
        attn = site.block.attn
        if not isinstance(attn, PromptedAttention):
            continue
        if attn.causal or attn.rel_positional_embedding is not None:
            raise UserError(f"method 'vpt-deep': monai-vit block '{site.name}' has causal or relative-position "
                            "attention, which prompted attention does not compute")
        for name, target in (("proj", attn.out_proj), ("proj_drop", attn.drop_output), ("attn_drop", attn.drop_weights)):
            refer(attn, name, target)


def _update_grid(patch_embed: nn.Module, args) -> None:
    spatial = args[0].shape[2:]
    patch_embed.token_grid.shape = tuple(s // p for s, p in zip(spatial, patch_embed.token_patch_size))


def _qkv(block: nn.Module) -> nn.Module | None:
    """The fused qkv linear (`use_combined_linear=True`, MONAI's default); None with separate q/k/v."""
    return block.attn.qkv if isinstance(block.attn.qkv, nn.Linear) else None


FAMILY = register_family(Family(
    name="monai-vit",
    blocks=(("monai.networks.blocks.transformerblock", "TransformerBlock"),),
    roots=_VIT,
    forward=MonaiViTBlockForward,
    dim=lambda block: block.norm1.normalized_shape[0],
    qkv=_qkv,
    linears=lambda block: [block.attn.qkv, block.attn.out_proj, block.mlp.linear1, block.mlp.linear2],
    spatial_dims=lambda block: 3,
    prepare=_prepare,
))
