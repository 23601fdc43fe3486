"""timm's SAM ViT (`VisionTransformerSAM`: SAM and MedSAM image encoders): blocks take (B, H, W, C) maps, most
attend within 14x14 windows (padded), the rest globally, with decomposed relative positions and no class token.
Adapters see the whole map's tokens (B, H*W, C), whatever the window; VPT-deep's prompted attention (written for
(B, N, C) attention without SAM's relative positions) is refused."""

from __future__ import annotations

import torch
from torch import nn

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, Site, register_family, timm_checkpointing
from domainmona.adapters.modules.prompts import PromptedAttention
from domainmona.errors import UserError


class TimmSamBlockForward(AdapterHost):
    """`vision_transformer_sam.Block.forward` with the adapter joins."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.models.vision_transformer_sam import window_partition, window_unpartition

        batch, height, width, channels = x.shape
        branch = self.norm1(x)
        if self.window_size > 0:
            branch, padded = window_partition(branch, self.window_size)
        branch = self.drop_path1(self.ls1(self.attn(branch)))
        if self.window_size > 0:
            branch = window_unpartition(branch, self.window_size, (height, width), padded)
        x = self.join_map(self.join_attention, x, branch).reshape(batch, height * width, channels)
        x = self.join_mlp(x, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), (height, width))
        return x.reshape(batch, height, width, channels)


def _refuse_prompts(root: nn.Module, sites: list[Site]) -> None:
    if any(isinstance(site.block.attn, PromptedAttention) for site in sites):
        raise UserError("method 'vpt-deep' is not defined for timm-sam blocks: their attention takes (B, H, W, C) "
                        "maps with decomposed relative positions, which prompted attention does not compute")


FAMILY = register_family(Family(
    name="timm-sam",
    blocks=(("timm.models.vision_transformer_sam", "Block"),),
    roots=(("timm.models.vision_transformer_sam", "VisionTransformerSAM"),),
    forward=TimmSamBlockForward,
    dim=lambda block: block.norm1.normalized_shape[0],
    qkv=lambda block: block.attn.qkv,
    prepare=_refuse_prompts,
    checkpointing=timm_checkpointing,
))
