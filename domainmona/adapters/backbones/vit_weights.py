"""Weight converters of the plain ViTs (vit.py: timm's ViT and SAM ViT) and of MONAI's ViT (UNETR's encoder): each
file layout's names into the model's, the patch embedding into the model's form, and position embeddings (and SAM's
relative position tables) for another patch grid resampled to the model's (domainmona.adapters.pretrained calls
them with the file's tensors, the model's own shapes and the model).

MAE, DINO and MoCo v3 name their ViTs as timm does; the loader strips their containers and prefixes. Each converter
finds the layout from the file's names and returns it: timm ViT `openmmlab` (mmpretrain), `prithvi` (a 3D patch
embedding) or `timm`; SAM ViT `sam` (the official `image_encoder.` file) or `timm`; MONAI ViT `monai-vit`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.backbones.cnn_weights import Rules, Tensors, rename

Shapes = dict[str, torch.Size]

# mmpretrain VisionTransformer: `layers.N` blocks with ln1/ln2, mmcv's FFN (`ffn.layers.0.0`, `ffn.layers.1`),
# layer scales `attn.gamma1.weight` / `ffn.gamma2.weight`, the final norm `ln1`, CLIP-style `pre_norm`.
_OPENMMLAB_VIT: Rules = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^ln1\.", "norm."),
    (r"^pre_norm\.", "norm_pre."),
    (r"^layers\.(\d+)\.ln(\d)\.", r"blocks.\1.norm\2."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.attn\.gamma1\.weight$", r"blocks.\1.ls1.gamma"),
    (r"^layers\.(\d+)\.ffn\.gamma2\.weight$", r"blocks.\1.ls2.gamma"),
    (r"^layers\.(\d+)\.", r"blocks.\1."),  # attn.qkv, attn.proj
)
_PATCH_FILTERS = "patch_embed.proj.weight"
_PRITHVI_ENCODER = "encoder."  # Prithvi-EO-2.0's PrithviMAE nests its ViT (`encoder.*`) beside its MAE decoder


def _square(tokens: int) -> tuple[int, int] | None:
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else None


def _patch_grid(module: nn.Module) -> tuple[int, int]:
    """The patch grid the model's position embedding is laid out on (timm's `patch_embed.grid_size`; the model may
    be built at a non-square size)."""
    vit = next(m for m in module.modules() if hasattr(m, "patch_embed") and hasattr(m, "pos_embed"))
    return tuple(vit.patch_embed.grid_size)


def _resample_position_embedding(tensors: Tensors, own: Shapes, module: nn.Module,
                                 old_grid: tuple[int, int] | None = None) -> Tensors:
    """A position embedding for another patch grid (a checkpoint trained at 384, SatMAE's at 96, Prithvi's frame)
    resampled with timm's own function to the grid the model is built on; the file's grid is square unless
    `old_grid` says. The prefix rows (class, registers) are what the model's rows have beyond its grid; a DeiT
    distillation token's row, which the model lacks, is dropped with its token."""
    from timm.layers import resample_abs_pos_embed

    theirs, ours = tensors.get("pos_embed"), own.get("pos_embed")
    if theirs is None or ours is None or theirs.shape == ours or theirs.ndim != 3 or theirs.shape[-1] != ours[-1]:
        return tensors
    grid = _patch_grid(module)
    prefix = ours[1] - grid[0] * grid[1]
    distilled = int("dist_token" in tensors and "dist_token" not in own)
    patches = theirs.shape[1] - prefix - distilled
    old = old_grid or _square(patches)
    if prefix < 0 or old is None or old[0] * old[1] != patches:
        return tensors
    theirs = torch.cat([theirs[:, :prefix], theirs[:, prefix + distilled:]], dim=1)
    return tensors | {"pos_embed": resample_abs_pos_embed(theirs, list(grid), list(old), num_prefix_tokens=prefix)}


def _is_prithvi(tensors: Tensors) -> bool:
    filters = tensors.get(_PATCH_FILTERS, tensors.get(_PRITHVI_ENCODER + _PATCH_FILTERS))
    return filters is not None and filters.ndim == 5


def _origin(width: int) -> torch.Tensor:
    """A 1D sin-cos embedding (sines then cosines) of position 0."""
    return torch.cat([torch.zeros(width // 2), torch.ones(width // 2)])


def _first_frame(pos_embed: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """Prithvi's fixed 3D sin-cos position embedding (class row, then T frames of h x w patches, w fastest; each
    row the concatenation of a w, an h and a t part of 6/16, 6/16 and 4/16 of the width) cut to the class row and
    the first frame, and that frame's grid: the frame is the rows whose t part is the first patch's, its width
    the period of the w part. None when the rows do not have that structure (the first patch at the origin)."""
    dim, rows = pos_embed.shape[-1], pos_embed[0, 1:].float()
    if dim % 16 or not len(rows):
        return None
    parts = (dim // 16 * 6, dim // 16 * 6, dim // 16 * 4)  # w, h, t
    if not torch.allclose(rows[0], torch.cat([_origin(n) for n in parts]), atol=1e-5):
        return None
    w_part, t_part = rows[:, :parts[0]], rows[:, parts[0] + parts[1]:]
    same_frame = torch.isclose(t_part, t_part[:1]).all(dim=1)
    frame = int(same_frame.int().cumprod(0).sum())
    repeats = torch.nonzero(torch.isclose(w_part[1:frame], w_part[:1]).all(dim=1))
    width = int(repeats[0]) + 1 if len(repeats) else frame
    if rows.shape[0] % frame or frame % width:
        return None
    return pos_embed[:, :1 + frame], (frame // width, width)


def _from_prithvi(tensors: Tensors) -> tuple[Tensors, tuple[int, int] | None]:
    """Prithvi's MAE into a timm ViT on one image: the encoder's names (2.0's `encoder.` nesting removed; the MAE
    decoder's `decoder*` and `mask_token` stay under their names, unused), the Conv3d patch filters of tubelet 1 as
    Conv2d filters, and the position embedding's class row and first frame with that frame's grid (None when the
    rows are not Prithvi's sin-cos frames: then they are taken as one square grid)."""
    out = {k.removeprefix(_PRITHVI_ENCODER): v for k, v in tensors.items()}
    filters = out[_PATCH_FILTERS]
    if filters.shape[2] == 1:  # (D, bands, 1, p, p): one frame per token
        out[_PATCH_FILTERS] = filters[:, :, 0]
    frame = _first_frame(out["pos_embed"]) if "pos_embed" in out else None
    if frame is None:
        return out, None
    out["pos_embed"], grid = frame
    return out, grid


def to_timm(tensors: Tensors, own: Shapes, module: nn.Module) -> tuple[Tensors, str]:
    """A timm ViT's file under timm's names, and the naming found (openmmlab, prithvi or timm)."""
    grid = None
    if any(k.startswith("layers.0.ln1.") for k in tensors):
        tensors, naming = rename(tensors, _OPENMMLAB_VIT), "openmmlab"
    elif _is_prithvi(tensors):
        (tensors, grid), naming = _from_prithvi(tensors), "prithvi"
    else:
        naming = "timm"
    return _resample_position_embedding(tensors, own, module, grid), naming


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (2S-1, C) relative position table for another window or grid, interpolated linearly along its length
    (what timm's SAM attention does on the fly when the input's grid differs from its table's)."""
    return F.interpolate(table.T.unsqueeze(0), size=length, mode="linear").squeeze(0).T.contiguous()


def sam_to_timm(tensors: Tensors, own: Shapes, module: nn.Module) -> tuple[Tensors, str]:
    """A SAM ViT's file under timm's `VisionTransformerSAM` names, and the naming found: `sam`, the official file
    (SAM, MedSAM: `image_encoder.` kept without its prefix and its MLP `lin1/lin2` named `fc1/fc2`; the prompt
    encoder and mask decoder stay under their names, unused) or `timm`. The (1, H, W, C) position embedding is
    resampled to the model's grid and the relative position tables resized to its windows."""
    from timm.layers import resample_abs_pos_embed_nhwc

    naming = "sam" if any(k.startswith("image_encoder.") for k in tensors) else "timm"
    if naming == "sam":
        tensors = {k.removeprefix("image_encoder.").replace(".mlp.lin", ".mlp.fc") if k.startswith("image_encoder.")
                   else k: v for k, v in tensors.items()}
    out = {}
    for key, value in tensors.items():
        shape = own.get(key)
        if shape is not None and shape != value.shape and value.ndim == len(shape) and value.shape[-1] == shape[-1]:
            if key == "pos_embed":
                value = resample_abs_pos_embed_nhwc(value, list(shape[1:3]))
            elif key.endswith((".rel_pos_h", ".rel_pos_w")):
                value = _resize_table(value, shape[0])
        out[key] = value
    return out, naming


_MONAI_PATCH = "patch_embedding.patch_embeddings"
_MONAI_POSITIONS = "patch_embedding.position_embeddings"


def _patch_projection(tensors: Tensors, own: Shapes) -> Tensors:
    """MONAI's patch embedding in the model's form: `conv` (Conv3d (D, C, p, p, p) at `.patch_embeddings`) or
    `perceptron` (Linear (D, p*p*p*C) at `.patch_embeddings.1`, fed MONAI's einops rearrangement
    `b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)`: the channel varies fastest), converted either way."""
    conv, linear = f"{_MONAI_PATCH}.weight", f"{_MONAI_PATCH}.1.weight"
    out = dict(tensors)
    if conv in tensors and linear in own:
        weight = out.pop(conv)
        out[linear] = weight.permute(0, *range(2, weight.ndim), 1).flatten(1)
        out[f"{_MONAI_PATCH}.1.bias"] = out.pop(f"{_MONAI_PATCH}.bias")
    elif linear in tensors and conv in own:
        weight, shape = out.pop(linear), own[conv]
        spatial = len(shape) - 2
        out[conv] = weight.reshape(shape[0], *shape[2:], shape[1]).permute(0, spatial + 1, *range(1, spatial + 1))
        out[f"{_MONAI_PATCH}.bias"] = out.pop(f"{_MONAI_PATCH}.1.bias")
    return out


def _cube(tokens: int) -> int | None:
    side = round(tokens ** (1 / 3))
    return side if side ** 3 == tokens else None


def monai_to_vit(tensors: Tensors, own: Shapes, module: nn.Module) -> tuple[Tensors, str]:
    """MONAI ViT weights (a UNETR's `vit.`-prefixed ones, a whole UNETR's, whose decoder stays under its names,
    unused, or a bare ViT's) under the ViT's names, the patch embedding in the model's form and the position
    embeddings of another cubic patch grid resampled (trilinear) to the model's; layout `monai-vit`, or `plain`
    without MONAI's ViT names."""
    if any(k.startswith("vit.") for k in tensors):
        tensors = {k.removeprefix("vit."): v for k, v in tensors.items()}
    if not any(k.startswith(("patch_embedding.", "blocks.0.mlp.linear1.")) for k in tensors):
        return tensors, "plain"
    tensors = _patch_projection(tensors, own)
    theirs, ours = tensors.get(_MONAI_POSITIONS), own.get(_MONAI_POSITIONS)
    if theirs is not None and ours is not None and theirs.shape != ours and theirs.shape[-1] == ours[-1]:
        old, new = _cube(theirs.shape[1]), _cube(ours[1])
        if old and new:
            grid = theirs.reshape(1, old, old, old, -1).permute(0, 4, 1, 2, 3)
            grid = F.interpolate(grid, size=(new,) * 3, mode="trilinear", align_corners=False)
            tensors = tensors | {_MONAI_POSITIONS: grid.flatten(2).transpose(1, 2)}
    return tensors, "monai-vit"
