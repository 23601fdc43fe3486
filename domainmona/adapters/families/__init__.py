"""Backbone families the core can adapt, found by class (without importing their libraries). Every module of this
package is imported here; a family file registers itself (see `spec.Family`)."""

from __future__ import annotations

from torch import nn

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import FAMILY_REGISTRY, Family, Site, matches
from domainmona.errors import UserError

FAMILIES: tuple[Family, ...] = tuple(FAMILY_REGISTRY.load(__name__, __path__).values())
# Wrappers that hold a whole timm backbone (smp's `tu-` encoders build timm models with features_only).
GENERIC_ROOTS = (("timm.models._features", "FeatureListNet"), ("timm.models._features", "FeatureDictNet"),
                 ("timm.models._features", "FeatureGetterNet"))
_ADAPTED_CLASSES: dict[type, type] = {}


def _is_root(module: nn.Module) -> bool:
    return matches(module, GENERIC_ROOTS) or any(matches(module, f.roots) for f in FAMILIES)


def find_backbone(model: nn.Module) -> tuple[str, nn.Module, Family]:
    """The backbone inside `model` (its path, the module, its family): `model` itself when it is a known
    backbone class or holds none, else its one outermost known backbone."""
    path, root = "", model
    if not _is_root(model):
        found = [(n, m) for n, m in model.named_modules() if n and _is_root(m)]
        outer = [(n, m) for n, m in found if not any(n.startswith(o + ".") for o, _ in found)]
        if len(outer) > 1:
            names = ", ".join(n for n, _ in outer)
            raise UserError(f"{type(model).__name__} holds several backbones ({names}): pass the one to adapt")
        if outer:
            path, root = outer[0]
    families = {f.name: f for m in root.modules() for f in FAMILIES if matches(m, f.blocks)}
    if len(families) != 1:
        supported = ", ".join(f.name for f in FAMILIES)
        what = "blocks of several families" if families else "no supported blocks"
        raise UserError(f"{type(root).__name__} has {what} (supported backbones: {supported})")
    return path, root, next(iter(families.values()))


def find_sites(root: nn.Module, family: Family) -> list[Site]:
    """Every block of `family` in `root`, in forward order (module registration order)."""
    return [Site(name, module, family) for name, module in root.named_modules() if matches(module, family.blocks)]


def rewire(site: Site) -> None:
    """Give the block the family's adapter-aware forward by swapping in a subclass of its own class, so
    its parameter names (and pretrained loading) are unchanged."""
    cls = type(site.block)
    if issubclass(cls, AdapterHost):
        return
    if cls not in _ADAPTED_CLASSES:
        _ADAPTED_CLASSES[cls] = type(f"Adapted{cls.__name__}", (site.family.forward, cls), {})
    site.block.__class__ = _ADAPTED_CLASSES[cls]
