"""ViT-CoMer (Xia et al., CVPR 2024) as a trainable side network beside a frozen plain ViT: a CNN branch (SPM
stem + MRFP) and 4 CNN-Transformer interactions (CTI) turn the ViT into a 4-level pyramid (strides 4/8/16/32,
D channels each) for dense heads. Spec: SIDE-NETWORKS.md part B.

The ViT is driven through the host-ViT protocol (`domainmona.adapters.side.host`), block by block; this module
never holds the ViT (the caller owns it, with its checkpoint names, adapters and freezing), it only adds to the
ViT's tokens through the zero-initialised gates γ, so at init the ViT stream is the frozen ViT's, bit for bit.

This project's choices, beyond the paper's code:
* Inputs whose sides are not multiples of 32 are padded with zeros on the bottom/right to the next multiple of
  32 (before the stem and the ViT) and each output map is cropped back to ceil(H/stride) x ceil(W/stride); the
  official code requires multiples of 32 and fails with an opaque reshape error otherwise.
* The host's prefix tokens (class, registers) stay in the ViT stream, so the frozen ViT runs as pretrained (the
  official code drops the class token); injections and extractions act on the patch tokens only.
* The CNN token sequence's levels are tracked with explicit offsets (`Levels`), not the official "N // 21".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from domainmona.adapters.side.host import HostViT
from domainmona.adapters.side.msda import MSDeformAttn
from domainmona.errors import UserError

# The official configurations (spec B.1's table). `dim` is the ViT width each was released for; `mrfp_ratio` is
# MRFP's hidden width as a fraction of D (D/2 in the detection code, `dim_ratio` in the segmentation code).
PRESETS = {
    "det-S": dict(dim=384, deform_heads=6, value_ratio=1.0, mrfp_ratio=0.5, vit_feature_mode="last"),
    "det-B": dict(dim=768, deform_heads=12, value_ratio=0.5, mrfp_ratio=0.5, vit_feature_mode="last"),
    "seg-T": dict(dim=192, deform_heads=6, value_ratio=1.0, mrfp_ratio=6.0, vit_feature_mode="per_stage"),
    "seg-S": dict(dim=384, deform_heads=6, value_ratio=1.0, mrfp_ratio=1.5, vit_feature_mode="per_stage"),
    "seg-B": dict(dim=768, deform_heads=12, value_ratio=0.5, mrfp_ratio=1.0, vit_feature_mode="per_stage"),
}

STRIDES = (4, 8, 16, 32)
_LN_EPS = 1e-6  # the official norm layer's


AUTO = "auto"  # the detection configuration of the ViT's width (det-S, det-B), else det-B's ratios


def preset_kwargs(name: str, dim: int) -> dict:
    """`ViTCoMer` keyword arguments of official configuration `name` for a ViT of width `dim`. 'auto' (this
    project's default) takes the detection configuration made for that width, and for other widths (ViT-L,
    ViT-T) det-B's ratios with one deformable head per 64 channels (ViT-CoMer publishes no det-L/T)."""
    if name == AUTO:
        same = [n for n, p in PRESETS.items() if n.startswith("det-") and p["dim"] == dim]
        if same:
            return preset_kwargs(same[0], dim)
        return {**preset_kwargs("det-B", dim), "deform_heads": max(1, dim // 64)}
    if name not in PRESETS:
        raise UserError(f"unknown ViT-CoMer preset '{name}'; choose one of {', '.join(PRESETS)}")
    preset = dict(PRESETS[name])
    del preset["dim"]
    preset["mrfp_hidden"] = int(dim * preset.pop("mrfp_ratio"))
    return preset


@dataclass(frozen=True)
class Levels:
    """The CNN token sequence `c` of one ViT grid (h, w): levels at strides 8, 16 and 32 ((2h, 2w), (h, w),
    (h/2, w/2)) concatenated, with their start offsets [0, 4hw, 5hw] and 21hw/4 tokens in all."""

    shapes: tuple[tuple[int, int], ...]
    starts: tuple[int, ...]
    total: int

    @classmethod
    def of(cls, grid: tuple[int, int]) -> Levels:
        h, w = grid
        shapes = ((2 * h, 2 * w), (h, w), (h // 2, w // 2))
        sizes = [a * b for a, b in shapes]
        return cls(shapes, tuple(sum(sizes[:i]) for i in range(3)), sum(sizes))

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return list(tokens.split([a * b for a, b in self.shapes], dim=1))

    def maps(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The levels as channels-first maps (B, C, H_l, W_l)."""
        parts = zip(self.split(tokens), self.shapes)
        return [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *shape) for t, shape in parts]

    @staticmethod
    def tokens(maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    def add_vit(self, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """`c` with the ViT's patch tokens added to its stride-16 level."""
        c8, c16, c32 = self.split(tokens)
        return torch.cat([c8, c16 + patches, c32], dim=1)

    def msda_inputs(self, batch: int, device: torch.device, dtype: torch.dtype):
        """(reference points (B, N, 1, 2) as (x, y) pixel centres in [0, 1], spatial shapes, level starts):
        every CNN token queries from its own cell, over all three levels. Points are at least fp32."""
        dtype = torch.promote_types(dtype, torch.float32)
        points = []
        for h, w in self.shapes:
            y, x = torch.meshgrid((torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
                                  (torch.arange(w, device=device, dtype=dtype) + 0.5) / w, indexing="ij")
            points.append(torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1))
        reference = torch.cat(points)[None, :, None].expand(batch, -1, -1, -1)
        shapes = torch.tensor(self.shapes, dtype=torch.long, device=device)
        starts = torch.tensor(self.starts, dtype=torch.long, device=device)
        return reference, shapes, starts


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "syncbn":
        return nn.SyncBatchNorm(channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise UserError(f"ViT-CoMer norm must be bn, syncbn or gn, not '{kind}'")


def _conv_norm_relu(cin: int, cout: int, stride: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm2d(norm, cout), nn.ReLU(inplace=True)]


class SpatialPrior(nn.Module):
    """SPM: a ResNet-like stem giving strides 4/8/16/32 (widths c, 2c, 4c, 4c), each mapped to D by a 1x1 conv."""

    def __init__(self, in_chans: int, width: int, dim: int, norm: str):
        super().__init__()
        self.stem = nn.Sequential(*_conv_norm_relu(in_chans, width, 2, norm),
                                  *_conv_norm_relu(width, width, 1, norm),
                                  *_conv_norm_relu(width, width, 1, norm), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_norm_relu(width, 2 * width, 2, norm))
        self.conv3 = nn.Sequential(*_conv_norm_relu(2 * width, 4 * width, 2, norm))
        self.conv4 = nn.Sequential(*_conv_norm_relu(4 * width, 4 * width, 2, norm))
        widths = (width, 2 * width, 4 * width, 4 * width)
        self.fc1, self.fc2, self.fc3, self.fc4 = (nn.Conv2d(c, dim, 1) for c in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class ConvFFN(nn.Module):
    """Linear, one depthwise 3x3 shared by the three levels, GELU, linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, levels: Levels) -> torch.Tensor:
        x = levels.tokens([self.dwconv(m) for m in levels.maps(self.fc1(x))])
        return self.fc2(self.act(x))


class _MultiReceptive(nn.Module):
    """One level of MRFP: depthwise 3x3 on the first half of the channels, 5x5 on the rest, norm, GELU."""

    def __init__(self, hidden: int, norm: str):
        super().__init__()
        self.half = hidden // 2
        self.small = nn.Conv2d(self.half, self.half, 3, 1, 1, groups=self.half)
        rest = hidden - self.half
        self.large = nn.Conv2d(rest, rest, 5, 1, 2, groups=rest)
        self.norm = _norm2d(norm, hidden)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.small(x[:, :self.half]), self.large(x[:, self.half:])], dim=1)
        return self.act(self.norm(x))


class MRFP(nn.Module):
    """Multi-receptive-field feature pyramid. Its output replaces `c` (no skip), and GELU is applied twice (per
    level, then on the whole sequence), as in the official code."""

    def __init__(self, dim: int, hidden: int, norm: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.levels = nn.ModuleList(_MultiReceptive(hidden, norm) for _ in range(3))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, c: torch.Tensor, levels: Levels) -> torch.Tensor:
        maps = levels.maps(self.fc1(c))
        x = levels.tokens([level(m) for level, m in zip(self.levels, maps)])
        return self.fc2(self.act(x))


class Extractor(nn.Module):
    """Deformable self-attention among the three CNN levels, then a ConvFFN, both residual."""

    def __init__(self, dim: int, msda: dict, cffn_hidden: int, drop_path: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = MSDeformAttn(dim, **msda)
        self.ffn = ConvFFN(dim, cffn_hidden)
        self.ffn_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query, feat, levels: Levels, msda_in) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), msda_in[0], self.feat_norm(feat), *msda_in[1:])
        return query + self.drop_path(self.ffn(self.ffn_norm(query), levels))


class ToViT(Extractor):
    """CNN -> ViT: deformable self-attention over all CNN tokens, a ConvFFN on the attention output, the three
    levels pooled to stride 16 and gated by γ. Returns the addition to the patch tokens. (The modules are the
    extractor's; the residual and the gate differ.)"""

    def __init__(self, dim: int, msda: dict, cffn_hidden: int, drop_path: float, init_values: float):
        super().__init__(dim, msda, cffn_hidden, drop_path)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, c: torch.Tensor, levels: Levels, msda_in) -> torch.Tensor:
        a = self.attn(self.query_norm(c), msda_in[0], self.feat_norm(c), *msda_in[1:])
        a = a + self.drop_path(self.ffn(self.ffn_norm(a), levels))
        m8, m16, m32 = levels.maps(a)
        pooled = (F.interpolate(m8, scale_factor=0.5, mode="bilinear", align_corners=False) + m16
                  + F.interpolate(m32, scale_factor=2, mode="bilinear", align_corners=False))
        return self.gamma * pooled.flatten(2).transpose(1, 2)


class ToCNN(nn.Module):
    """ViT -> CNN: the patch tokens are added to the stride-16 level, then (with `cnn_feature_interaction`) the
    extractor mixes the levels. Literal reading of the official code: the extractor's residual is the
    LayerNorm-ed `c`, so `c` is re-normalised here."""

    def __init__(self, dim: int, msda: dict, cffn_hidden: int, drop_path: float, interaction: bool):
        super().__init__()
        if interaction:
            self.query_norm = nn.LayerNorm(dim, eps=_LN_EPS)
            self.feat_norm = nn.LayerNorm(dim, eps=_LN_EPS)
            self.extractor = Extractor(dim, msda, cffn_hidden, drop_path)
        self.interaction = interaction

    def forward(self, c: torch.Tensor, patches: torch.Tensor, levels: Levels, msda_in) -> torch.Tensor:
        c = levels.add_vit(c, patches)
        if self.interaction:
            c = self.extractor(self.query_norm(c), self.feat_norm(c), levels, msda_in)
        return c


class ExtraCTI(ToCNN):
    """One of the last CTI's extra CTIs: like `ToCNN`, with a residual ConvFFN before the extractor."""

    def __init__(self, dim: int, msda: dict, cffn_hidden: int, drop_path: float, interaction: bool):
        super().__init__(dim, msda, cffn_hidden, drop_path, interaction)
        self.ffn = ConvFFN(dim, cffn_hidden)
        self.ffn_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, c, patches, levels, msda_in):
        c = levels.add_vit(c, patches)
        c = c + self.drop_path(self.ffn(self.ffn_norm(c), levels))
        if self.interaction:
            c = self.extractor(self.query_norm(c), self.feat_norm(c), levels, msda_in)
        return c


def _run(module: nn.Module, recompute: bool, *args):
    """`module(*args)`, with activations recomputed in backward when `recompute`."""
    return checkpoint(module, *args, use_reentrant=False) if recompute else module(*args)


class CTI(nn.Module):
    """One CNN-Transformer interaction around a group of ViT blocks: MRFP, toV, the blocks, toC (and, in the
    last CTI, the extra CTIs)."""

    def __init__(self, dim: int, msda: dict, cffn_hidden: int, mrfp_hidden: int, drop_path: float,
                 init_values: float, interaction: bool, n_extra: int, norm: str):
        super().__init__()
        self.mrfp = MRFP(dim, mrfp_hidden, norm)
        self.to_vit = ToViT(dim, msda, cffn_hidden, drop_path, init_values)
        self.to_cnn = ToCNN(dim, msda, cffn_hidden, drop_path, interaction)
        self.extra = nn.ModuleList(ExtraCTI(dim, msda, cffn_hidden, drop_path, interaction)
                                   for _ in range(n_extra))

    def forward(self, tokens, c, host: HostViT, grid, blocks: range, levels: Levels, msda_in, recompute: bool):
        # MRFP stays outside the checkpoints (as in the official code) so its BatchNorm statistics update once
        c = levels.add_vit(self.mrfp(c, levels), host.patch_tokens(tokens))
        added = _run(self.to_vit, recompute, c, levels, msda_in)
        prefix = tokens[:, :host.num_prefix]
        tokens = torch.cat([prefix, host.patch_tokens(tokens) + added], dim=1)
        for index in blocks:
            tokens = host.block(index, tokens, grid)
        patches = host.patch_tokens(tokens)
        c = _run(self.to_cnn, recompute, c, patches, levels, msda_in)
        for extra in self.extra:
            c = _run(extra, recompute, c, patches, levels, msda_in)
        return tokens, c


class Interaction(NamedTuple):
    """What the interactions leave for the output stage (and for inspection)."""

    c1: torch.Tensor  # the stem's stride-4 map (B, D, 4h, 4w)
    c: torch.Tensor  # CNN tokens (B, levels.total, D)
    levels: Levels
    streams: list[torch.Tensor]  # the ViT token sequence (prefix included) after each interaction
    grid: tuple[int, int]  # the ViT grid of the padded input
    size: tuple[int, int]  # the input's own (H, W), before padding


class ViTCoMer(nn.Module):
    """The ViT-CoMer side network of one plain ViT: `forward(x, host)` returns 4 maps NCHW with D channels at
    strides 4/8/16/32, each ceil(H/stride) x ceil(W/stride).

    `groups`: the ViT blocks of each interaction, as (first, last) pairs that cover all blocks in order (default:
    4 equal consecutive groups). `mrfp_hidden`: MRFP's width (default D/2, the detection code's).
    `vit_feature_mode`: "last" adds the final ViT map to every level (detection code), "per_stage" adds the map
    after interaction k to level k (segmentation code). `with_cp`: recompute each CTI's toV, toC and extra CTIs in
    backward while training. `norm`: the side network's BatchNorms as "bn", "syncbn" or "gn"."""

    def __init__(self, host: HostViT, in_chans: int = 3, groups=None, deform_heads: int = 12, n_points: int = 4,
                 value_ratio: float = 0.5, cffn_ratio: float = 0.25, mrfp_hidden: int | None = None,
                 n_extra_cti: int = 4, cnn_feature_interaction: bool = True, init_values: float = 0.0,
                 vit_feature_mode: str = "last", base_width: int = 64, norm: str = "bn", msda_backend: str = "auto",
                 with_cp: bool = False, drop_path: float = 0.0):
        super().__init__()
        if host.spatial_dims != 2:
            raise UserError("3D ViT-CoMer is not built (the paper defines 2D only); use hst for a 3D ViT")
        if tuple(host.patch) != (16, 16):
            raise UserError(f"vit-comer needs a patch-16 ViT (stride-16 grid); this {host.kind} has patch "
                            f"{'x'.join(map(str, sorted(set(host.patch))))}")
        if vit_feature_mode not in ("last", "per_stage"):
            raise UserError(f"vit_feature_mode must be 'last' or 'per_stage', not '{vit_feature_mode}'")
        dim = self.dim = host.dim
        self.depth = host.depth
        self.groups = _groups(groups, self.depth)
        if vit_feature_mode == "per_stage" and len(self.groups) != 4:
            raise UserError(f"vit_feature_mode 'per_stage' needs 4 interaction groups, not {len(self.groups)}")
        self.vit_feature_mode = vit_feature_mode
        self.with_cp = with_cp
        self.out_channels = (dim,) * 4

        msda = dict(n_levels=3, n_heads=deform_heads, n_points=n_points, value_ratio=value_ratio,
                    backend=msda_backend)
        cffn_hidden = int(dim * cffn_ratio)
        self.spm = SpatialPrior(in_chans, base_width, dim, norm)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.interactions = nn.ModuleList(
            CTI(dim, msda, cffn_hidden, mrfp_hidden or dim // 2, drop_path, init_values, cnn_feature_interaction,
                n_extra_cti if i == len(self.groups) - 1 else 0, norm)
            for i in range(len(self.groups)))
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleList(_norm2d(norm, dim) for _ in STRIDES)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Spec B.3: generic init, then each MSDA's own reset; γ keeps `init_values`."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def interact(self, x: torch.Tensor, host: HostViT) -> Interaction:
        """The stem, the ViT and the interactions on `x` (padded to a multiple of 32)."""
        if host.dim != self.dim or host.depth != self.depth:
            raise UserError(f"this ViT-CoMer was built for a ViT of width {self.dim} and depth {self.depth}, "
                            f"not {host.dim} and {host.depth}")
        size = tuple(x.shape[-2:])
        x = F.pad(x, (0, -size[1] % 32, 0, -size[0] % 32))  # zeros bottom/right to a multiple of 32
        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([m.flatten(2).transpose(1, 2) + e for m, e in zip((c2, c3, c4), self.level_embed)], dim=1)
        tokens, grid = host.embed(x)
        levels = Levels.of(grid)
        msda_in = levels.msda_inputs(x.shape[0], x.device, c.dtype)
        recompute = self.with_cp and self.training and torch.is_grad_enabled()
        streams = []
        for cti, (first, last) in zip(self.interactions, self.groups):
            tokens, c = cti(tokens, c, host, grid, range(first, last + 1), levels, msda_in, recompute)
            streams.append(tokens)
        return Interaction(c1, c, levels, streams, grid, size)

    def forward(self, x: torch.Tensor, host: HostViT) -> list[torch.Tensor]:
        state = self.interact(x, host)
        c2, c3, c4 = state.levels.maps(state.c)
        c1 = self.up(c2) + state.c1
        vit = [host.to_map(s, state.grid) for s in state.streams]
        if self.vit_feature_mode == "last":
            vit = [vit[-1]] * 4
        scales = (4, 2, 1, 0.5)
        outs = []
        for norm, c_k, v, scale, stride in zip(self.norms, (c1, c2, c3, c4), vit, scales, STRIDES):
            if scale != 1:
                v = F.interpolate(v, scale_factor=scale, mode="bilinear", align_corners=False)
            f = norm(c_k + v)
            outs.append(f[:, :, :math.ceil(state.size[0] / stride), :math.ceil(state.size[1] / stride)])
        return outs


def _groups(groups, depth: int) -> tuple[tuple[int, int], ...]:
    """The interaction groups as (first, last) block pairs; by default 4 equal consecutive groups."""
    if groups is None:
        n = min(4, depth)
        bounds = [round(depth * i / n) for i in range(n + 1)]
        return tuple((bounds[i], bounds[i + 1] - 1) for i in range(n))
    groups = tuple((int(first), int(last)) for first, last in groups)
    expected = 0
    for first, last in groups:
        if first != expected or last < first:
            break
        expected = last + 1
    else:
        if expected == depth and groups:
            return groups
    raise UserError(f"ViT-CoMer groups {list(map(list, groups))} must be (first, last) block pairs that cover "
                    f"the ViT's {depth} blocks in order")
