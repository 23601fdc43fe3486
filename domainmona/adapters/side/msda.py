"""Multi-scale deformable attention (Deformable-DETR), the attention ViT-CoMer's interaction blocks run between
its CNN pyramid and the ViT tokens; in 2D and, as this project's extension, 3D.

Why by hand: Deformable-DETR, ViT-Adapter and ViT-CoMer ship only a CUDA kernel that their backbone module
imports at import time (no build, no backbone), and label their plain-torch version "for debug and test only".
mmcv's torch fallback is 2D only, and mmcv is optional in this core. The torch path here is exact (the kernel's
maths, through `F.grid_sample`) and the default; mmcv's compiled CUDA kernel is used where it is installed,
because it does not materialise the sampled values (see `benchmarks/results/msda.md` for the torch path's cost).
"""

from __future__ import annotations

import functools
import importlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.errors import UserError

BACKENDS = ("auto", "torch", "mmcv")
# The attribute domainmona's pure-Python stand-in for `mmcv._ext` carries (domainmona.detection.mmcv_ext.MARKER,
# not imported: the core never imports a domain package); the stand-in has no MSDA kernel.
_STAND_IN_MARKER = "__domainmona_stand_in__"
_IM2COL_STEP = 64  # mmcv's default images per kernel launch; it must divide the batch


@functools.cache
def _mmcv_function() -> tuple[type | None, str]:
    """mmcv's compiled MSDA autograd function, or None and why not (imported on first use only)."""
    try:
        ext = importlib.import_module("mmcv._ext")
    except ImportError:
        return None, "mmcv with its compiled ops is not installed"
    if getattr(ext, _STAND_IN_MARKER, False):
        return None, "mmcv is installed without its compiled ops"
    if ext.get_compiling_cuda_version() == "not available":
        return None, "mmcv's compiled ops were built without CUDA"
    from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction

    return MultiScaleDeformableAttnFunction, ""


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"unknown MSDA backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def resolve_backend(backend: str, device: torch.device, spatial_dims: int) -> str:
    """The backend a call on `device` runs: "auto" takes mmcv's kernel only for 2D CUDA tensors with mmcv's
    compiled CUDA ops installed, else torch; "mmcv" where it cannot run is a one-line UserError."""
    _check_backend(backend)
    if backend == "torch":
        return "torch"
    if spatial_dims != 2:
        missing = "mmcv's kernel is 2D only"
    elif device.type != "cuda":
        missing = f"mmcv's kernel runs on CUDA tensors only, not {device.type}"
    else:  # only now import mmcv: "auto" on the CPU never touches it
        missing = _mmcv_function()[1]
    if not missing:
        return "mmcv"
    if backend == "mmcv":
        raise UserError(f"MSDA backend 'mmcv' is unavailable: {missing}; use backend 'torch' or 'auto'")
    return "torch"


def _torch_msda(value: torch.Tensor, shapes: list[list[int]], starts: list[int], sampling_locations: torch.Tensor,
                attention_weights: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel's maths with one `grid_sample` per level: bilinear (trilinear in 3D), zero padding,
    half-pixel centres (align_corners=False), weighted sum over levels and points."""
    B, S, M, Dh = value.shape
    _, Q, _, L, K, dims = sampling_locations.shape
    sizes = [math.prod(shape) for shape in shapes]
    if starts[-1] + sizes[-1] != S:
        raise ValueError(f"value has {S} tokens but the levels {shapes} starting at {starts} need "
                         f"{starts[-1] + sizes[-1]}")
    grids = 2 * sampling_locations - 1  # [0, 1] -> grid_sample's [-1, 1]
    out = value.new_zeros(B * M, Dh, Q)
    for level, (shape, start, size) in enumerate(zip(shapes, starts, sizes)):
        v = value[:, start:start + size].permute(0, 2, 3, 1).reshape(B * M, Dh, *shape)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(B * M, *[1] * (dims - 2), Q, K, dims)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(B * M, 1, Q, K)
        out = out + (sampled.view(B * M, Dh, Q, K) * weights).sum(-1)
    return out.view(B, M * Dh, Q).transpose(1, 2).contiguous()


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                   backend: str = "auto") -> torch.Tensor:
    """value (B, S, M, Dh) — the L levels' tokens concatenated (level l starts at level_start_index[l]);
    spatial_shapes LongTensor (L, 2) rows (H_l, W_l), or (L, 3) rows (D_l, H_l, W_l) for 3D;
    sampling_locations (B, Q, M, L, K, 2|3) normalised to [0, 1] as (x, y[, z]) with pixel centres at (j+0.5)/W;
    attention_weights (B, Q, M, L, K) (already softmaxed) -> (B, Q, M*Dh).

    Sampling runs in fp32 (fp64 stays fp64), as the official autograd function does under autocast: half
    precision inputs are cast up and the result cast back to value's dtype."""
    L, dims = spatial_shapes.shape
    if dims not in (2, 3) or sampling_locations.shape[-1] != dims or sampling_locations.shape[3] != L:
        raise ValueError(f"spatial_shapes {tuple(spatial_shapes.shape)} and sampling_locations "
                         f"{tuple(sampling_locations.shape)} disagree: expected (L, 2|3) and (B, Q, M, L, K, 2|3)")
    dtype = value.dtype
    work = torch.promote_types(dtype, torch.float32)
    value, sampling_locations, attention_weights = (
        t.to(work) for t in (value, sampling_locations, attention_weights))
    if resolve_backend(backend, value.device, dims) == "mmcv":
        batch = value.shape[0]
        step = math.gcd(batch, _IM2COL_STEP) if batch > _IM2COL_STEP else batch
        out = _mmcv_function()[0].apply(value.contiguous(), spatial_shapes.long().contiguous(),
                                        level_start_index.long().contiguous(), sampling_locations.contiguous(),
                                        attention_weights.contiguous(), step)
    else:
        out = _torch_msda(value, spatial_shapes.tolist(), level_start_index.tolist(), sampling_locations,
                          attention_weights)
    return out.to(dtype)


def _directions(n_heads: int, spatial_dims: int) -> torch.Tensor:
    """Head m's initial sampling direction, scaled so its largest component is ±1, (M, dims).

    2D (Deformable-DETR): angle 2πm/M. 3D (this project's choice; no official 3D init exists): the 26
    neighbours of a voxel in antipodal pairs, ±axes first, then ±cube diagonals, then ±face diagonals, so
    every even prefix is symmetric; beyond 26 heads the list repeats."""
    if spatial_dims == 2:
        theta = torch.arange(n_heads, dtype=torch.float64) * (2 * math.pi / n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        return grid / grid.abs().max(-1, keepdim=True).values
    axes = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    cube = [(1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)]
    face = [(1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1)]
    pairs = torch.tensor(axes + cube + face, dtype=torch.float64)
    neighbours = torch.stack([pairs, -pairs], 1).reshape(-1, 3)
    return neighbours[torch.arange(n_heads) % len(neighbours)]


class MSDeformAttn(nn.Module):
    """Deformable-DETR's multi-scale deformable attention: each query samples K points per head and level
    around its reference point, at offsets and with weights predicted from the query itself."""

    def __init__(self, d_model: int, n_levels: int = 3, n_heads: int = 8, n_points: int = 4,
                 value_ratio: float = 1.0, spatial_dims: int = 2, backend: str = "auto"):
        super().__init__()
        value_dim = int(d_model * value_ratio)
        if value_dim % n_heads:
            raise ValueError(f"value width {value_dim} (d_model {d_model} x value_ratio {value_ratio}) is not "
                             f"divisible by n_heads {n_heads}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        _check_backend(backend)
        if backend == "mmcv" and spatial_dims == 3:
            raise UserError("MSDA backend 'mmcv' is unavailable: mmcv's kernel is 2D only; use backend 'torch' "
                            "or 'auto'")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.spatial_dims, self.backend = spatial_dims, backend
        self.value_proj = nn.Linear(d_model, value_dim)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * spatial_dims)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR's init: offsets and weights independent of the query (zero weight matrices), head m
        sampling along its own direction at 1..K steps (`_directions`), uniform attention 1/(L*K)."""
        M, L, K = self.n_heads, self.n_levels, self.n_points
        nn.init.zeros_(self.sampling_offsets.weight)
        steps = torch.arange(1, K + 1, dtype=torch.float64).view(1, 1, K, 1)
        bias = _directions(M, self.spatial_dims).view(M, 1, 1, -1) * steps
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(M, L, K, self.spatial_dims).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_input: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Q, D); reference_points (B, Q, L, dims) or (B, Q, 1, dims) in [0,1] (x, y[, z]);
        value_input (B, S, D); padding_mask (B, S) bool, True = padded (zeroed values) or None -> (B, Q, D).
        Offsets are normalised by (W_l, H_l[, D_l]) of each level."""
        B, Q, _ = query.shape
        M, L, K, dims = self.n_heads, self.n_levels, self.n_points, self.spatial_dims
        value = self.value_proj(value_input)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(B, value_input.shape[1], M, -1)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, K, dims)
        weights = self.attention_weights(query).view(B, Q, M, L * K).softmax(-1).view(B, Q, M, L, K)
        normaliser = spatial_shapes.flip(-1).to(reference_points.dtype)  # rows (W, H[, D]), like (x, y[, z])
        locations = reference_points[:, :, None, :, None] + offsets / normaliser[None, None, None, :, None]
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, self.backend)
        return self.output_proj(out)
