"""The host-ViT protocol: what a side network (HST, ViT-CoMer) needs of the frozen plain ViT it runs beside,
for each ViT implementation users' foundation models come in (timm `VisionTransformer`: timm, DeiT, MAE, DINO,
MoCo v3, Prithvi, SSL4EO; timm `VisionTransformerSAM`: SAM and MedSAM image encoders; MONAI `ViT`: UNETR).

A `HostViT` is a view over the ViT module, not a module itself: the ViT stays where the backbone put it (so its
checkpoint names, adapter injection and freezing are unchanged), and the side network calls it block by block.
Tokens are always a sequence (B, prefix + N, D), whatever layout the blocks take; `grid` is the patch grid
((h, w) or (d, h, w)) of the N patch tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from domainmona.errors import UserError


class HostViT:
    """Facts and calls of one plain ViT. Subclasses implement `_embed` and `_block` for their layout."""

    kind = ""

    def __init__(self, vit: nn.Module):
        self.vit = vit

    # -- facts ---------------------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.vit.blocks)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    dim: int
    patch: tuple[int, ...]  # patch size per spatial dimension
    num_prefix: int  # class/register tokens before the patch tokens
    spatial_dims: int = 2

    @property
    def windowed(self) -> tuple[bool, ...]:
        """Per block: whether its attention is windowed (HST's meta token is undefined there)."""
        return (False,) * self.depth

    @property
    def accepts_extra_prefix(self) -> bool:
        """Whether blocks take extra tokens before the patch tokens (HST's meta token)."""
        return not any(self.windowed)

    def norms(self) -> list[tuple[str, nn.LayerNorm]]:
        """(path in the ViT, module) of each block's two pre-norms (HST tunes them)."""
        found = []
        for index, block in enumerate(self.vit.blocks):
            for name in self._norm_names:
                found.append((f"blocks.{index}.{name}", getattr(block, name)))
        return found

    _norm_names = ("norm1", "norm2")

    # -- calls ---------------------------------------------------------------------------------------------
    def grid_of(self, x: torch.Tensor) -> tuple[int, ...]:
        """The patch grid of an input batch; a side that is not a multiple of the patch is a one-line error."""
        sizes = tuple(x.shape[2:])
        if len(sizes) != self.spatial_dims or any(s % p for s, p in zip(sizes, self.patch)):
            raise UserError(f"input of size {'x'.join(map(str, sizes))} is not a multiple of the ViT's patch "
                            f"{'x'.join(map(str, self.patch))}")
        return tuple(s // p for s, p in zip(sizes, self.patch))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Patch and position embedding (resized to the input's grid), prefix tokens first."""
        grid = self.grid_of(x)
        return self._embed(x), grid

    def block(self, index: int, tokens: torch.Tensor, grid: tuple[int, ...], extra_prefix: int = 0) -> torch.Tensor:
        """Block `index` on a token sequence that carries `extra_prefix` tokens before the host's own prefix."""
        if extra_prefix and not self.accepts_extra_prefix:
            raise UserError(f"{self.kind} blocks with windowed attention take no extra prefix tokens")
        # adapters injected into the block (domainmona.adapters.families) read the prefix from its token grid
        shared = getattr(self.vit.blocks[index], "token_grid", None)
        if shared is None or not extra_prefix:
            return self._block(index, tokens, grid, extra_prefix)
        shared.prefix = self.num_prefix + extra_prefix
        try:
            return self._block(index, tokens, grid, extra_prefix)
        finally:
            shared.prefix = self.num_prefix

    def patch_tokens(self, tokens: torch.Tensor, extra_prefix: int = 0) -> torch.Tensor:
        return tokens[:, extra_prefix + self.num_prefix:]

    def to_map(self, tokens: torch.Tensor, grid: tuple[int, ...], extra_prefix: int = 0) -> torch.Tensor:
        """Patch tokens as a channels-first map (B, D, *grid)."""
        patches = self.patch_tokens(tokens, extra_prefix)
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _block(self, index: int, tokens: torch.Tensor, grid: tuple[int, ...], extra_prefix: int) -> torch.Tensor:
        raise NotImplementedError


class TimmViTHost(HostViT):
    """timm `VisionTransformer` (built with `dynamic_img_size=True`, so position embeddings follow the grid)."""

    kind = "timm ViT"

    def __init__(self, vit: nn.Module):
        super().__init__(vit)
        self.dim = vit.embed_dim
        self.patch = tuple(vit.patch_embed.patch_size)
        self.num_prefix = vit.num_prefix_tokens

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.patch_embed(x)  # its hook tells adapted blocks the grid (domainmona.adapters.families.vit_timm)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)

    def _block(self, index, tokens, grid, extra_prefix):
        return self.vit.blocks[index](tokens)


class SamViTHost(HostViT):
    """timm `VisionTransformerSAM` (SAM / MedSAM image encoders): no prefix tokens, blocks take (B, h, w, D)
    and most attend within 14x14 windows; the neck is not used (side networks make the pyramid)."""

    kind = "SAM ViT"

    def __init__(self, vit: nn.Module):
        super().__init__(vit)
        self.dim = vit.embed_dim
        self.patch = tuple(vit.patch_embed.patch_size)
        self.num_prefix = 0

    @property
    def windowed(self) -> tuple[bool, ...]:
        return tuple(bool(getattr(b, "window_size", 0)) for b in self.vit.blocks)

    def _embed(self, x):
        from timm.layers import resample_abs_pos_embed_nhwc

        vit = self.vit
        x = vit.patch_embed(x)
        if vit.pos_embed is not None:
            x = x + resample_abs_pos_embed_nhwc(vit.pos_embed, x.shape[1:3])
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        return x.flatten(1, 2)

    def _block(self, index, tokens, grid, extra_prefix):
        b, _, d = tokens.shape
        out = self.vit.blocks[index](tokens.reshape(b, *grid, d))
        return out.reshape(b, -1, d)


class MonaiViTHost(HostViT):
    """MONAI `ViT` (UNETR's encoder): 2D or 3D patches, learned position embeddings of the network's fixed
    image size, no class token with `classification=False`."""

    kind = "MONAI ViT"

    def __init__(self, vit: nn.Module):
        super().__init__(vit)
        embedding = vit.patch_embedding
        self.dim = embedding.position_embeddings.shape[-1]
        self.patch = _monai_patch(embedding)
        self.spatial_dims = len(self.patch)
        self.num_prefix = 1 if hasattr(vit, "cls_token") else 0

    def grid_of(self, x):
        grid = super().grid_of(x)
        fixed = self.vit.patch_embedding.position_embeddings.shape[1]
        if math.prod(grid) != fixed:
            raise UserError(f"a MONAI ViT takes the image size it was built for ({fixed} patches), "
                            f"not {'x'.join(map(str, x.shape[2:]))}")
        return grid

    def _embed(self, x):
        x = self.vit.patch_embedding(x)
        if self.num_prefix:
            x = torch.cat((self.vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x

    def _block(self, index, tokens, grid, extra_prefix):
        return self.vit.blocks[index](tokens)


def _monai_patch(embedding: nn.Module) -> tuple[int, ...]:
    """The patch size of MONAI's `PatchEmbeddingBlock`: the convolution's kernel ('conv'), or the lengths its
    einops rearrangement names p1, p2(, p3) ('perceptron')."""
    layers = embedding.patch_embeddings
    if isinstance(layers, nn.modules.conv._ConvNd):
        return tuple(layers.kernel_size)
    lengths = dict(getattr(layers[0], "axes_lengths", {}))
    return tuple(lengths[f"p{i}"] for i in range(1, 4) if f"p{i}" in lengths)


def host_vit(vit: nn.Module) -> HostViT:
    """The host view of `vit` (found inside `vit` when it wraps one: timm's FeatureGetterNet, UNETR)."""
    for module in vit.modules():
        name = type(module).__name__
        if name == "VisionTransformer" and hasattr(module, "patch_embed"):
            return TimmViTHost(module)
        if name == "VisionTransformerSAM":
            return SamViTHost(module)
        if name == "ViT" and hasattr(module, "patch_embedding"):
            return MonaiViTHost(module)
    raise UserError(f"{type(vit).__name__} is not a plain ViT (timm VisionTransformer, SAM image encoder or "
                    f"MONAI ViT): side networks need one")
