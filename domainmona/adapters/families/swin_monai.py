"""MONAI Swin (SwinUNETR's `swinViT`), 3D or 2D: blocks take channels-last maps (B, D, H, W, C).

MONAI checkpoints the attention half and the MLP half separately; each half here includes its adapters,
so they stay inside the checkpointed part. `load_from` is inherited untouched.
"""

from __future__ import annotations

import torch
from torch.utils import checkpoint

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family


class MonaiSwinBlockForward(AdapterHost):
    def forward(self, x: torch.Tensor, mask_matrix) -> torch.Tensor:
        x = self._maybe_checkpointed(self._attention_half, x, mask_matrix)
        return self._maybe_checkpointed(self._mlp_half, x)

    def _maybe_checkpointed(self, half, *args):
        if self.use_checkpoint:
            return checkpoint.checkpoint(half, *args, use_reentrant=False)
        return half(*args)

    def _attention_half(self, x: torch.Tensor, mask_matrix) -> torch.Tensor:
        return self.join_map(self.join_attention, x, self.drop_path(self.forward_part1(x, mask_matrix)))

    def _mlp_half(self, x: torch.Tensor) -> torch.Tensor:
        return self.join_map(self.join_mlp, x, self.forward_part2(x))


FAMILY = Family(
    name="monai-swin",
    blocks=(("monai.networks.nets.swin_unetr", "SwinTransformerBlock"),),
    roots=(("monai.networks.nets.swin_unetr", "SwinTransformer"),),
    forward=MonaiSwinBlockForward,
    dim=lambda block: block.dim,
    qkv=lambda block: block.attn.qkv,
    spatial_dims=lambda block: len(block.window_size),
)
