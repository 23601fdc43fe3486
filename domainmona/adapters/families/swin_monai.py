"""MONAI Swin (SwinUNETR's `swinViT`), 3D or 2D: blocks take channels-last maps (B, D, H, W, C).

MONAI checkpoints the attention half and the MLP half separately; each half here includes its adapters,
so they stay inside the checkpointed part. `load_from` is inherited untouched.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils import checkpoint

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, flag_checkpointing, register_family


class MonaiSwinBlockForward(AdapterHost):
    def forward(self, x: torch.Tensor, mask_matrix) -> torch.Tensor:
        if not self.use_checkpoint:
            return self._mlp_half(self._attention_half(x, mask_matrix))
        # A checkpoint keeps its tensor inputs until backward: the stage's attention mask (nW x N x N floats,
        # 161 MB at SwinUNETR's first stage for a 96^3 patch) goes in as a recipe instead (MONAI's own
        # checkpointing keeps it).
        x = checkpoint.checkpoint(self._attention_half, x, self._mask_recipe(x, mask_matrix), use_reentrant=False)
        return checkpoint.checkpoint(self._mlp_half, x, use_reentrant=False)

    def _mask_recipe(self, x: torch.Tensor, mask_matrix) -> "_MaskRecipe | None":
        from monai.networks.nets.swin_unetr import get_window_size

        window, shift = get_window_size(tuple(x.shape[1:-1]), self.window_size, self.shift_size)
        if mask_matrix is None or not any(s > 0 for s in shift):
            return None  # unshifted blocks ignore the mask
        padded = [-(-size // w) * w for size, w in zip(x.shape[1:-1], window)]
        return _MaskRecipe(mask_matrix, padded, window, shift)

    def _attention_half(self, x: torch.Tensor, mask_matrix) -> torch.Tensor:
        if isinstance(mask_matrix, _MaskRecipe):
            mask_matrix = mask_matrix.get()
        return self.join_map(self.join_attention, x, self.drop_path(self.forward_part1(x, mask_matrix)))

    def _mlp_half(self, x: torch.Tensor) -> torch.Tensor:
        return self.join_map(self.join_mlp, x, self.forward_part2(x))


class _MaskRecipe:
    """A stage's attention mask without a strong reference: the stage's own tensor while it still holds it
    (forward), rebuilt exactly as the stage builds it when a checkpoint recomputes in backward."""

    def __init__(self, mask: torch.Tensor, padded: list[int], window: tuple[int, ...], shift: tuple[int, ...]):
        self.mask, self.args = weakref.ref(mask), (padded, window, shift, mask.device)

    def get(self) -> torch.Tensor:
        from monai.networks.nets.swin_unetr import compute_mask

        mask = self.mask()
        return mask if mask is not None else compute_mask(*self.args)


_BLOCKS = (("monai.networks.nets.swin_unetr", "SwinTransformerBlock"),)
FAMILY = register_family(Family(
    name="monai-swin",
    blocks=_BLOCKS,
    roots=(("monai.networks.nets.swin_unetr", "SwinTransformer"),),
    forward=MonaiSwinBlockForward,
    dim=lambda block: block.dim,
    qkv=lambda block: block.attn.qkv,
    spatial_dims=lambda block: len(block.window_size),
    checkpointing=flag_checkpointing("use_checkpoint", _BLOCKS),
))
