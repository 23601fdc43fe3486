"""HST, Hierarchical Side-Tuning (Lin et al., arXiv 2310.05393), as a side network beside a plain ViT
(shared/SIDE-NETWORKS.md, Part A).

The frozen ViT runs with one learnable meta token prepended before every block (dropped again after it); a small
hierarchical side network (conv stem, one side block per ViT block, stages at strides 4/8/16/32) reads each
block's meta output through a 2-key cross-attention and its patch map, projected by the stage's shared bridge and
resized to the stage grid, as an addition. The four stage maps are the pyramid dense heads take.

What HST trains: its own modules and meta tokens (this module) plus the ViT's per-block LayerNorms, which stay
in the ViT: `tuned_norm_paths` names them for the caller to unfreeze and save. The ViT is never a submodule
here: the caller owns it and passes its `HostViT` to `forward`.

Beyond the paper (each labelled where it is built): `n_meta` other than 1, stage counts other than 4, the ViT's
prefix generalised to the host's (0 for MONAI, 1 for timm), and 3D hosts (MONAI's ViT in UNETR: Conv3d stem
and downsamplers, trilinear resize), whose HST analogue is not defined by the paper (SIDE-NETWORKS.md A.5(c)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.side.host import HostViT
from domainmona.errors import UserError

# Stage widths and heads. "cls" is the paper's released (classification) configuration; the paper publishes no
# dense-prediction widths, so "dense-s" and "dense-m" are this project's choice (SIDE-NETWORKS.md A.5(a)):
# 0.765 M, 5.75 M and 14.93 M trainable parameters beside ViT-B/16, ViT LayerNorms included.
PRESETS = {
    "cls": {"stage_dims": (32, 48, 64, 72), "stage_heads": (2, 4, 8, 12)},
    "dense-s": {"stage_dims": (64, 128, 192, 256), "stage_heads": (2, 4, 8, 8)},
    "dense-m": {"stage_dims": (64, 128, 256, 512), "stage_heads": (2, 4, 8, 16)},
}

_NORMS = ("bn", "syncbn", "gn")


def preset_kwargs(name: str, dim: int) -> dict:
    """`HST` keyword arguments of preset `name` (the same for every ViT width; `dim` is the side-network
    protocol's, domainmona.adapters.side)."""
    return preset(name)


def preset(name: str) -> dict:
    """The stage widths and heads of preset `name`."""
    if name not in PRESETS:
        raise UserError(f"hst: unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return dict(PRESETS[name])


class HST(nn.Module):
    """HST's side network and meta tokens for one host ViT; `forward(x, host)` returns the stage maps
    (B, C_s, *grid_s) at strides 4, 8, 16, 32 (one per entry of `stage_dims`).

    `stage_ends`: the last ViT block of each stage (default: equal shares of the depth, (2, 5, 8, 11) for 12
    blocks, (5, 11, 17, 23) for 24); side block j of stage s consumes ViT block start_s + j. `project_first`
    applies the bridge before the resize (the same result as the released code's resize-then-project, since
    bilinear weights sum to 1, and much cheaper at stride 4). `norm` is the stem's norm: its BatchNorm is trained
    from scratch, so with 1-2 images per GPU prefer "syncbn" or "gn". `n_meta=0` runs the ViT unchanged and the
    side reads only the mean token (an ablation, not HST)."""

    def __init__(self, host: HostViT, in_chans: int = 3, stage_dims: Sequence[int] = (32, 48, 64, 72),
                 stage_heads: Sequence[int] = (2, 4, 8, 12), stage_ends: Sequence[int] | None = None,
                 n_meta: int = 1, project_first: bool = True, norm: str = "bn"):
        super().__init__()
        if n_meta and not host.accepts_extra_prefix:
            raise UserError(f"hst: the {host.kind}'s blocks use windowed attention, where HST's meta token is "
                            f"undefined (use vit-comer)")
        stage_dims, stage_heads = tuple(stage_dims), tuple(stage_heads)
        if not stage_dims or len(stage_heads) != len(stage_dims):
            raise UserError(f"hst: give one head count per stage width ({len(stage_dims)} widths, "
                            f"{len(stage_heads)} head counts)")
        for dim, heads in zip(stage_dims, stage_heads):
            if dim % heads:
                raise UserError(f"hst: stage width {dim} is not a multiple of its {heads} heads")
        if norm not in _NORMS:
            raise UserError(f"hst: norm '{norm}' is not one of {', '.join(_NORMS)}")
        if n_meta < 0:
            raise UserError(f"hst: n_meta must be 0 or more, not {n_meta}")
        self.dim, self.depth, self.spatial_dims = host.dim, host.depth, host.spatial_dims
        self.in_chans, self.n_meta, self.project_first = in_chans, n_meta, project_first
        self.stage_ends = _stage_ends(stage_ends, self.depth, len(stage_dims))
        self.out_channels = stage_dims

        # n_meta per block; Xavier-uniform per (1, 1, D) token, whose bound is sqrt(6 / 2D)
        self.meta = nn.Parameter(torch.empty(self.depth, n_meta, self.dim)) if n_meta else None
        starts = (0,) + tuple(end + 1 for end in self.stage_ends[:-1])
        widths = (in_chans,) + stage_dims
        self.stages = nn.ModuleList(
            _Stage(widths[s], stage_dims[s], stage_heads[s], self.dim, self.stage_ends[s] + 1 - starts[s],
                   n_meta, self.spatial_dims, stem=(s == 0), norm=norm)
            for s in range(len(stage_dims)))
        self._init_weights()

    def _init_weights(self) -> None:
        """The released initialisation (SIDE-NETWORKS.md A.3); norms keep PyTorch's 1/0."""
        if self.meta is not None:
            bound = math.sqrt(6.0 / (2 * self.dim))
            nn.init.uniform_(self.meta, -bound, bound)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
                fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @staticmethod
    def tuned_norm_paths(host: HostViT) -> list[str]:
        """Names, relative to the host's ViT module, of the ViT LayerNorm parameters HST tunes (every block's
        norm1/norm2; the final norm is unused): the caller unfreezes them and saves them with HST."""
        return [f"{path}.{name}" for path, module in host.norms() for name, _ in module.named_parameters()]

    def forward(self, x: torch.Tensor, host: HostViT) -> list[torch.Tensor]:
        return self.run(x, host)[0]

    def run(self, x: torch.Tensor, host: HostViT, taps: Sequence[int] = ()
            ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stage maps, and the ViT's token sequences (host prefix + patches, meta tokens dropped) after the
        blocks in `taps`, for callers that also decode the ViT's own features (UNETR)."""
        self._check(x, host)
        tokens, grid = host.embed(x)
        feature, maps, tapped, block = x, [], {}, 0
        for stage in self.stages:
            side, size = stage.enter(feature)
            for index in range(len(stage.blocks)):
                tokens, meta_out, patches = self._vit_block(host, block, tokens, grid)
                if block in taps:
                    tapped[block] = tokens
                side = stage.side_block(index, side, meta_out, patches, grid, size, self.project_first)
                block += 1
            feature = stage.leave(side, size)
            maps.append(feature)
        return maps, [tapped[b] for b in taps]

    def _vit_block(self, host: HostViT, index: int, tokens: torch.Tensor, grid: tuple[int, ...]):
        """ViT block `index` with its meta tokens prepended: (tokens for the next block, meta outputs,
        patch tokens)."""
        n = self.n_meta
        if n:
            tokens = torch.cat((self.meta[index].expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens), 1)
        out = host.block(index, tokens, grid, extra_prefix=n)
        return out[:, n:], out[:, :n], host.patch_tokens(out, n)

    def _check(self, x: torch.Tensor, host: HostViT) -> None:
        built = (self.dim, self.depth, self.spatial_dims)
        if (host.dim, host.depth, host.spatial_dims) != built:
            raise UserError(f"hst: built for a {self.spatial_dims}D ViT of width {self.dim} and depth "
                            f"{self.depth}, given a {host.spatial_dims}D one of width {host.dim} and depth "
                            f"{host.depth}")
        if x.shape[1] != self.in_chans:
            raise UserError(f"hst: the input has {x.shape[1]} channels, the side stem takes {self.in_chans} "
                            f"(in_chans)")


def _stage_ends(ends: Sequence[int] | None, depth: int, stages: int) -> tuple[int, ...]:
    """The last ViT block of each stage: given, or equal shares of `depth`. Every block must feed a side block
    (the released ViT-L code silently ignored blocks 12-23)."""
    if ends is None:
        ends = tuple((s + 1) * depth // stages - 1 for s in range(stages))
    ends = tuple(int(e) for e in ends)
    if (len(ends) != stages or ends[-1] != depth - 1 or ends[0] < 0
            or any(b <= a for a, b in zip(ends, ends[1:]))):
        raise UserError(f"hst: stage_ends {ends} must be {stages} increasing block indices ending at the ViT's "
                        f"last block ({depth - 1})")
    return ends


class _Stage(nn.Module):
    """One side stage: stem or downsampler, the bridge shared by its blocks, per-block meta norms, side blocks
    and the output norm."""

    def __init__(self, in_dim: int, dim: int, heads: int, vit_dim: int, blocks: int, n_meta: int,
                 spatial_dims: int, stem: bool, norm: str):
        super().__init__()
        self.spatial_dims = spatial_dims
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        if stem:
            self.down = nn.Sequential(conv(in_dim, dim, 3, stride=2, padding=1, bias=False),
                                      _stem_norm(norm, dim, spatial_dims), nn.ReLU(inplace=True),
                                      conv(dim, dim, 2, stride=2))
        else:
            self.down = conv(in_dim, dim, 3, stride=2, padding=1)
        self.down_norm = nn.LayerNorm(dim)
        self.bridge = nn.Linear(vit_dim, dim)
        self.meta_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(blocks)) if n_meta else None
        self.blocks = nn.ModuleList(_SideBlock(dim, heads) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(dim)

    def enter(self, feature: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Stage tokens (B, N, C) from the previous map (or the image) and the stage grid."""
        mapped = self.down(feature)
        return self.down_norm(mapped.flatten(2).transpose(1, 2)), tuple(mapped.shape[2:])

    def leave(self, side: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        side = self.out_norm(side)
        return side.transpose(1, 2).reshape(side.shape[0], side.shape[2], *size)

    def side_block(self, index: int, side: torch.Tensor, meta_out: torch.Tensor, patches: torch.Tensor,
                   grid: tuple[int, ...], size: tuple[int, ...], project_first: bool) -> torch.Tensor:
        if project_first:
            local = self._resize(self.bridge(patches), grid, size)
        else:
            local = self.bridge(self._resize(patches, grid, size))
        keys = [local.mean(1, keepdim=True)]
        if self.meta_norms is not None:
            keys.insert(0, self.meta_norms[index](self.bridge(meta_out)))
        return self.blocks[index](side, torch.cat(keys, 1), local)

    def _resize(self, tokens: torch.Tensor, grid: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
        """Tokens on the ViT grid resized (bi/trilinear) to the stage grid."""
        if grid == size:
            return tokens
        b, _, c = tokens.shape
        mapped = tokens.transpose(1, 2).reshape(b, c, *grid)
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        return F.interpolate(mapped, size=size, mode=mode, align_corners=False).flatten(2).transpose(1, 2)


def _stem_norm(norm: str, dim: int, spatial_dims: int) -> nn.Module:
    if norm == "gn":
        return nn.GroupNorm(math.gcd(32, dim), dim)
    if norm == "syncbn":
        return nn.SyncBatchNorm(dim)
    return nn.BatchNorm3d(dim) if spatial_dims == 3 else nn.BatchNorm2d(dim)


class _SideBlock(nn.Module):
    """t + CrossAttn(LN1(t), keys) + local, then + MLP(LN2(.)): 12C^2 + 13C parameters. Only the queries are
    normalised; the keys/values are the block's meta-global tokens and the mean projected ViT token."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, side: torch.Tensor, keys: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        side = side + self._attend(self.norm1(side), keys)
        side = side + local
        return side + self.mlp(self.norm2(side))

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, n, c = queries.shape

        def heads(t):
            return t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q(queries)), heads(self.k(keys)), heads(self.v(keys)))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))
