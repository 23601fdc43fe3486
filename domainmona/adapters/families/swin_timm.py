"""timm Swin (also inside segmentation-models-pytorch `tu-swin*` encoders): blocks take NHWC maps."""

from __future__ import annotations

import torch

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, register_family, timm_checkpointing


class TimmSwinBlockForward(AdapterHost):
    """`SwinTransformerBlock.forward` with the adapter joins; timm checkpoints whole blocks, adapters included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.join_map(self.join_attention, x, self.drop_path1(self._attn(self.norm1(x))))
        return self.join_map(self.join_mlp, x, self.drop_path2(self.mlp(self.norm2(x))))


FAMILY = register_family(Family(
    name="timm-swin",
    blocks=(("timm.models.swin_transformer", "SwinTransformerBlock"),),
    roots=(("timm.models.swin_transformer", "SwinTransformer"),),
    forward=TimmSwinBlockForward,
    dim=lambda block: block.dim,
    qkv=lambda block: block.attn.qkv,
    checkpointing=timm_checkpointing,
))
