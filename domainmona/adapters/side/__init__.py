"""Side networks for frozen plain ViTs: trainable networks beside the ViT that give the stride-4-to-32 pyramid
dense heads (FPN, UPerNet, UNETR's skips) take, where a plain ViT has one stride-16 map.

- `simple`: ViTDet's simple feature pyramid on the last block (Li et al., ECCV 2022), the baseline;
- `hst`: Hierarchical Side-Tuning (Lin et al., arXiv 2310.05393): a meta token per block, the ViT's LayerNorms
  and a small hierarchical side network fed by every block;
- `vit-comer`: ViT-CoMer (Xia et al., CVPR 2024): a CNN pyramid with multi-receptive-field convolutions and
  bidirectional deformable-attention interaction, gated to start exactly at the frozen ViT.

This table is the one home of the names (the command line reads it without importing torch); each network's
module holds its presets. `host` is the protocol side networks call the ViT through.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from domainmona.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from domainmona.adapters.side.host import HostViT


@dataclass(frozen=True)
class Side:
    """One side network: where its class lives, the paper, and the preset it takes when none is named."""

    name: str
    target: str  # "module:Class"; the class takes (host, in_chans, **options) and has `out_channels`
    summary: str
    default_preset: str | None = None  # a key of the module's PRESETS (None: no presets)


SIDES: dict[str, Side] = {s.name: s for s in (
    Side("simple", "domainmona.adapters.backbones.features:SimpleFeaturePyramid",
         "ViTDet's simple feature pyramid on the last block (the baseline)"),
    Side("hst", "domainmona.adapters.side.hst:HST",
         "Hierarchical Side-Tuning: meta tokens, the ViT's LayerNorms, a small side network", "dense-s"),
    Side("vit-comer", "domainmona.adapters.side.vit_comer:ViTCoMer",
         "ViT-CoMer: CNN pyramid + deformable-attention interaction, zero-gated", "auto"),
)}
SIDE_NAMES = tuple(SIDES)
DEFAULT_SIDE = "simple"
# With a side network that trains, the ViT stays frozen unless an in-ViT method is named (the papers'
# parameter-efficient mode); the simple pyramid keeps the pipelines' default method.
FROZEN_VIT_METHOD = "fixed"


def get_side(name: str) -> Side:
    if name not in SIDES:
        raise UserError(f"unknown side network '{name}' (choose from: {', '.join(SIDES)})")
    return SIDES[name]


def side_class(name: str) -> type:
    module, _, cls = get_side(name).target.partition(":")
    return getattr(importlib.import_module(module), cls)


def side_options(name: str, dim: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The constructor options of side network `name` beside a ViT of width `dim`: its preset (`preset`, else
    the default; the module's `preset_kwargs(name, dim)`) under the explicit `options`."""
    options = dict(options or {})
    side = get_side(name)
    preset = options.pop("preset", side.default_preset)
    if preset is None:
        return options
    module = importlib.import_module(side.target.partition(":")[0])
    return {**module.preset_kwargs(str(preset), dim), **options}


def build_side(name: str, host: HostViT, in_chans: int, options: dict[str, Any] | None = None) -> nn.Module:
    """Side network `name` for the ViT `host`, on `in_chans` input bands."""
    cls = side_class(name)
    if name == "simple":
        return cls(host.dim, **_accepted(name, cls, dict(options or {})))
    return cls(host, in_chans=in_chans, **_accepted(name, cls, side_options(name, host.dim, options)))


def _accepted(name: str, cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options``, refused in one line if the constructor does not take one of them (checked against its
    signature, so that a TypeError raised while building stays the bug it is)."""
    takes = [p for p in inspect.signature(cls).parameters if p not in ("host", "dim", "in_chans")]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise UserError(f"{name}: unknown option(s) {', '.join(unknown)}; it takes "
                        f"{', '.join(takes) or 'none'}")
    return options
