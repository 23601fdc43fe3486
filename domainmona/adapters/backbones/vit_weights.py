"""Weight converters of the plain ViTs (vit.py), which timm builds: OpenMMLab's (mmpretrain) names into timm's, and
a position embedding for another patch grid resampled to the model's (domainmona.adapters.pretrained calls them).
MAE, DINO and MoCo v3 name their ViTs as timm does; the loader strips their containers and prefixes."""

from __future__ import annotations

import math

import torch

from domainmona.adapters.backbones.cnn_weights import Rules, Tensors, rename

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


def _resample_position_embedding(tensors: Tensors, own: dict[str, torch.Size]) -> Tensors:
    """A square grid of position embeddings for another image size (a checkpoint trained at 384, or at 96 like
    SatMAE) resampled to the model's grid with timm's own function; the prefix tokens (class, registers) are
    what the model's token count has beyond a square."""
    from timm.layers import resample_abs_pos_embed

    theirs, ours = tensors.get("pos_embed"), own.get("pos_embed")
    if theirs is None or ours is None or theirs.shape == ours or theirs.shape[-1] != ours[-1]:
        return tensors
    grid = math.isqrt(ours[1])
    prefix = ours[1] - grid * grid
    old = math.isqrt(theirs.shape[1] - prefix)
    if old * old != theirs.shape[1] - prefix:
        return tensors
    return tensors | {"pos_embed": resample_abs_pos_embed(theirs, [grid, grid], [old, old], num_prefix_tokens=prefix)}


def to_timm(tensors: Tensors, own: dict[str, torch.Size]) -> tuple[Tensors, str]:
    """The file's tensors under timm's names, and the naming found (openmmlab or timm)."""
    naming = "openmmlab" if any(k.startswith("layers.0.ln1.") for k in tensors) else "timm"
    if naming == "openmmlab":
        tensors = rename(tensors, _OPENMMLAB_VIT)
    return _resample_position_embedding(tensors, own), naming
