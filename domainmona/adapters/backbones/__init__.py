"""The backbone registry: every named backbone of every pipeline, timm style (one small registered constructor
per name, each family in its own file of this package with its weight converters beside it).

A registration (`Backbone`) states what the pipelines need to know before building anything: the builder, the
adapter family, the feature maps it gives (channels and strides), the pretrained layouts it loads, its input
normalisation and its N-band rule. Pipelines, configs and command-line choices read it; there is no other
list of backbone names or sizes. Add one with

    @register_backbone
    def my_net() -> Backbone:
        return Backbone(name="my-net", build=..., family="cnn", channels=(...), strides=(4, 8, 16, 32), ...)

in any module that is imported before use (the modules of this package are imported on first lookup).
`timm:NAME` names any timm model that timm can give feature maps for; its maps are found by building it.
This module imports no torch: the command line reads `backbone_names()` for its choices.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domainmona.adapters.registry import Registry
from domainmona.errors import UserError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on a 0-1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"
DEFAULT_BACKBONE = "swin-t"  # every 2D pipeline's and report's default (the Mona paper's detection backbone)
# N bands, every backbone: the input convolution's RGB filters are inflated by domainmona.adapters.bands' rule
# when pretrained weights load, and that convolution trains.
INFLATE = "inflate RGB filters (domainmona.adapters.bands)"
_DECORATOR = "register_backbone"


@dataclass(frozen=True)
class Backbone:
    """One named backbone.

    `build(in_chans=3, **options)` gives, for 2D backbones, the *features module*: its forward maps an image
    batch to the feature maps listed by `channels`/`strides` (NCHW), the stride-4-to-32 pyramid that FPNs and
    segmentation decoders take; for 3D backbones, the whole segmentation network. `timm` is the timm model
    and constructor options segmentation-models-pytorch builds as a `tu-` encoder (None where smp cannot take
    the model, e.g. plain ViTs); `pyramid` says how the maps are made ('stages': the backbone's own stages,
    'simple': ViTDet's simple feature pyramid from the last block).
    """

    name: str
    build: Callable[..., nn.Module]
    family: str  # the adapter family (domainmona.adapters.families) the blocks belong to
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    layouts: tuple[str, ...]  # pretrained layouts `--pretrained` loads (domainmona.adapters.pretrained)
    summary: str = ""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bands: str = INFLATE
    dims: int = 2
    timm: tuple[str, dict[str, Any]] | None = None
    pyramid: str = "stages"
    options: dict[str, Any] = field(default_factory=dict)  # shape facts other modules read (Swin: mmdet shape)
    shipped: Path | None = None  # weights domainmona ships, the default `--pretrained` of every pipeline


BACKBONE_REGISTRY: Registry[Backbone] = Registry("backbone")
_ORDER: list[str] = []


def register_backbone(constructor: Callable[[], Backbone]) -> Callable[[], Backbone]:
    """Decorator: register the `Backbone` the constructor returns under its name (listed in definition order)."""
    spec = constructor()
    if spec.name not in _ORDER:
        _ORDER.append(spec.name)
    file = constructor.__module__.rsplit(".", 1)[-1] + ".py"
    rank = FILE_ORDER.index(file) if file in FILE_ORDER else len(FILE_ORDER)
    BACKBONE_REGISTRY.add(spec.name, spec, order=rank * 1000 + _ORDER.index(spec.name))
    return constructor


@functools.cache
def _load_package() -> dict[str, Backbone]:
    return BACKBONE_REGISTRY.load(__name__, __path__)


def backbones(dims: int | None = None) -> dict[str, Backbone]:
    """The registered backbones (of `dims` spatial dimensions), in registration order."""
    _load_package()
    found = BACKBONE_REGISTRY.entries()  # with those registered since, by other modules too
    return {name: spec for name, spec in found.items() if dims is None or spec.dims == dims}


def get_backbone(name: str) -> Backbone:
    """The registered backbone `name`, or `timm:NAME` for any timm model with feature maps."""
    if name.startswith(TIMM_PREFIX):
        from domainmona.adapters.backbones.timm_any import timm_backbone

        return timm_backbone(name[len(TIMM_PREFIX):])
    found = backbones()
    if name not in found:
        raise UserError(f"unknown backbone '{name}' (choose from: {', '.join(found)}, or timm:NAME)")
    return found[name]


def build_backbone(name: str, in_chans: int = 3, **options: Any) -> nn.Module:
    """A named backbone with random weights (see `Backbone.build`)."""
    spec = get_backbone(name)
    if spec.dims == 3:
        return spec.build(**options)
    return spec.build(in_chans=in_chans, **options)


def check_backbone_name(name: str, dims: int | None = 2) -> str:
    """`name` when it names a backbone of `dims` dimensions (None: any) without building or importing anything:
    a registered name (read from this package's source, or registered since by another module) or, outside
    3D, `timm:NAME`; else a one-line `UserError` listing the choices."""
    names = backbone_names(dims)
    registered = BACKBONE_REGISTRY.get(name)
    if name in names or (registered is not None and dims in (None, registered.dims)):
        return name
    if dims != 3 and name.startswith(TIMM_PREFIX) and name[len(TIMM_PREFIX):]:
        return name
    extra = ", or timm:NAME" if dims != 3 else ""
    shown = name if len(name) <= 60 else f"{name[:60]}..."
    raise UserError(f"unknown backbone '{shown}' (choose from: {', '.join(names)}{extra})")


def check_side(name: str, side: str | None) -> None:
    """Refuse in one line a side network (domainmona.adapters.side) on a backbone that makes its own pyramid:
    side networks run beside a plain ViT."""
    from domainmona.adapters.side import DEFAULT_SIDE, get_side

    if side in (None, DEFAULT_SIDE):
        return
    get_side(side)
    if get_backbone(name).pyramid != "simple":
        plain = ", ".join(n for n, spec in backbones(2).items() if spec.pyramid == "simple")
        raise UserError(f"side network '{side}' runs beside a plain ViT ({plain}, or timm:NAME of one); "
                        f"{name} makes its own pyramid")


def sided(side: str | None, side_cfg: dict | None) -> dict[str, Any]:
    """The build options that give a plain ViT its side network (none for the default simple pyramid)."""
    from domainmona.adapters.side import DEFAULT_SIDE

    return {} if side in (None, DEFAULT_SIDE) else {"side": side, "side_cfg": dict(side_cfg or {})}


def feature_channels(name: str, side: str | None = None, side_cfg: dict | None = None) -> tuple[int, ...]:
    """Channels of the four maps the features module gives (with a side network: built on the meta device)."""
    options = sided(side, side_cfg)
    if not options:
        return get_backbone(name).channels
    import torch

    with torch.device("meta"):
        return tuple(build_backbone(name, **options).out_channels)


def check_adapter(name: str, method: str, side: str | None = None, side_cfg: dict | None = None,
                  **config: Any) -> None:
    """Refuse in one line, before anything is written, an adapter method (or option) the backbone's family does not
    define, or a side network (or option) the backbone cannot take: the method goes into the backbone built on
    the meta device (no memory, no weights), or on the CPU for constructors that read values off tensors
    (mmdet's Swin)."""
    import logging

    import torch

    from domainmona.adapters.inject import inject

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # a check builds nothing worth a log line (and a refused run writes none)
    try:
        check_side(name, side)
        options = sided(side, side_cfg)
        try:
            with torch.device("meta"):
                backbone = build_backbone(name, **options)
        except (RuntimeError, NotImplementedError):
            backbone = build_backbone(name, **options)
        inject(backbone, method, **config)
    finally:
        logging.disable(previous)


def shipped_weights(name: str) -> Path | None:
    """The weights domainmona ships for the backbone `name` (None for `timm:NAME` and most backbones)."""
    if name.startswith(TIMM_PREFIX):
        return None
    path = get_backbone(name).shipped
    return path if path is not None and path.is_file() else None


@functools.cache
def backbone_names(dims: int | None = None) -> tuple[str, ...]:
    """Registered names (of `dims` dimensions) read from this package's source without importing torch, for
    the command line's choices: every `@register_backbone` constructor makes one call with a literal
    `name="..."` (and `dims=N` unless 2), to `Backbone` or a helper that passes them on. tests/test_backbones.py checks that this equals `backbones()`."""
    found = []
    for file in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and any(getattr(d, "id", None) == _DECORATOR
                                                         for d in node.decorator_list):
                found.append((file.name, node.lineno, *_literal_name_dims(node)))
    return tuple(name for _, _, name, d in sorted(found, key=_file_order) if dims is None or d == dims)


def _file_order(item):
    file, line, _, _ = item
    return (FILE_ORDER.index(file) if file in FILE_ORDER else len(FILE_ORDER), file, line)


FILE_ORDER = ("swin.py", "cnn.py", "vit.py", "micro_vit.py", "volume.py")  # the order CLI choices list the families


def _literal_name_dims(node: ast.FunctionDef) -> tuple[str, int]:
    for call in ast.walk(node):
        keywords = {k.arg: k.value for k in call.keywords} if isinstance(call, ast.Call) else {}
        if isinstance(keywords.get("name"), ast.Constant):
            dims = ast.literal_eval(keywords["dims"]) if "dims" in keywords else 2
            return keywords["name"].value, dims
    raise ValueError(f"@{_DECORATOR} {node.name} makes no call with a literal name='...' (and dims=N)")
