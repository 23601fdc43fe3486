"""OpenMMLab Swin (mmdet's `SwinTransformer`, used by mmrotate): blocks are `norm1, attn, norm2, ffn`."""

from __future__ import annotations

import torch
from torch.utils import checkpoint

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, flag_checkpointing, register_family


class MMDetSwinBlockForward(AdapterHost):
    """`SwinBlock.forward` with the adapter joins; with `with_cp` the adapters run inside the checkpoint."""

    def forward(self, x: torch.Tensor, hw_shape):
        def inner(x):
            x = self.join_attention(x, self.attn(self.norm1(x), hw_shape), hw_shape)
            if not self.wants_bare_mlp_branch:
                return self.mlp_adds_its_residual(self.ffn(self.norm2(x), identity=x), hw_shape)
            # mmcv's FFN adds its identity itself; identity=0.0 returns the bare branch for the joins.
            return self.join_mlp(x, self.ffn(self.norm2(x), identity=0.0), hw_shape)

        if self.with_cp and torch.is_grad_enabled():
            return checkpoint.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


_BLOCKS = (("mmdet.models.backbones.swin", "SwinBlock"),)
FAMILY = register_family(Family(
    name="mmdet-swin",
    blocks=_BLOCKS,
    roots=(("mmdet.models.backbones.swin", "SwinTransformer"),),
    forward=MMDetSwinBlockForward,
    dim=lambda block: block.norm1.normalized_shape[0],
    qkv=lambda block: block.attn.w_msa.qkv,
    checkpointing=flag_checkpointing("with_cp", _BLOCKS),
))
