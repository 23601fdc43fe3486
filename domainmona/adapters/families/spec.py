"""What the core knows about one backbone family, and the blocks (sites) found in a backbone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from domainmona.adapters.families.host import (ATTN_BRANCH, ATTN_PARALLEL, MLP_BRANCH, MLP_PARALLEL, POST_ATTN,
                                               POST_BLOCK, POST_MLP)
from domainmona.adapters.registry import Registry
from domainmona.errors import UserError

ClassRef = tuple[str, str]  # (module, qualname): matched without importing the library


@dataclass(frozen=True)
class Family:
    """A backbone family: its block and root classes and how adapters plug into its blocks.

    A family is one file in `domainmona/adapters/families/` that registers itself when the package imports it
    (the package imports all of its modules): `FAMILY = register_family(Family(name=..., blocks=..., ...))`.
    Classes are named as (module, qualname) so that finding a backbone imports none of their libraries.
    """

    name: str
    blocks: tuple[ClassRef, ...]
    roots: tuple[ClassRef, ...]
    forward: type  # AdapterHost subclass whose forward replaces the block's
    dim: Callable[[nn.Module], int]
    qkv: Callable[[nn.Module], nn.Module | None] = lambda block: None
    spatial_dims: Callable[[nn.Module], int] = lambda block: 2
    transformer: bool = True  # False: CNN blocks with a single output slot
    prepare: Callable[[nn.Module, list["Site"]], None] = lambda root, sites: None  # after rewiring
    # The block's qkv, attention output, MLP fc1 and fc2 linears in that order (FacT's four factors), where the
    # block registers them in another order; default: registration order.
    linears: Callable[[nn.Module], list[nn.Module]] = lambda block: [m for m in block.modules()
                                                                     if isinstance(m, nn.Linear)]
    # The family's own block checkpointing: called with (root, True/False) it switches it, with (root, None) it
    # only reads it; returns whether it is on. None: the family has no such mechanism.
    checkpointing: Callable[[nn.Module, bool | None], bool] | None = None
    # The block's spatial convolutions in forward order, for the methods that work on convolutions (LoRA on each,
    # Conv-Adapter beside the last); empty: those methods keep their own rules for the family.
    convs: Callable[[nn.Module], list[nn.Module]] = lambda block: []

    def slots(self, placement: str) -> tuple[str, ...]:
        """Slot names for a placement ('post', 'branch', 'parallel' beside the MLP, 'attn-parallel' beside the
        attention); empty when the family has none."""
        if not self.transformer:
            return (POST_BLOCK,) if placement == "post" else ()
        return {"post": (POST_ATTN, POST_MLP), "branch": (ATTN_BRANCH, MLP_BRANCH),
                "parallel": (MLP_PARALLEL,), "attn-parallel": (ATTN_PARALLEL,)}[placement]


FAMILY_REGISTRY: Registry[Family] = Registry("backbone family")


def register_family(family: Family) -> Family:
    """Add `family` to the families `find_backbone` knows (listed by name); returns it."""
    return FAMILY_REGISTRY.add(family.name, family)


@dataclass
class Site:
    """One residual block of a backbone that can host adapters."""

    name: str  # relative to the backbone root
    block: nn.Module
    family: Family

    @property
    def dim(self) -> int:
        return int(self.family.dim(self.block))

    @property
    def spatial_dims(self) -> int:
        return self.family.spatial_dims(self.block)


def matches(module: nn.Module, refs: tuple[ClassRef, ...]) -> bool:
    """True when the module's class, or a base class, is one of `refs`."""
    return any((cls.__module__, cls.__qualname__) in refs for cls in type(module).__mro__)


def flag_checkpointing(attribute: str, owners: tuple[ClassRef, ...]) -> Callable[[nn.Module, bool | None], bool]:
    """Block checkpointing switched by a boolean attribute of the modules of the `owners` classes (mmdet's
    `with_cp`, MONAI's `use_checkpoint`)."""

    def switch(root: nn.Module, enabled: bool | None) -> bool:
        modules = [m for m in root.modules() if matches(m, owners) and hasattr(m, attribute)]
        for module in modules if enabled is not None else ():
            setattr(module, attribute, enabled)
        return any(getattr(m, attribute) for m in modules)

    return switch


def timm_checkpointing(root: nn.Module, enabled: bool | None) -> bool:
    """timm's `grad_checkpointing` flags inside `root`: those of models and Swin stages (one checkpoint per
    block, adapters included); a `features_only` wrapper's own flag only when nothing inside it has one (it
    checkpoints whole stages except its first and last)."""
    flagged = [m for m in root.modules() if type(m).__module__.startswith("timm.") and hasattr(m, "grad_checkpointing")]
    modules = [m for m in flagged if not type(m).__module__.startswith("timm.models._features")] or flagged
    if enabled and not modules:
        raise UserError(f"{type(root).__name__} has no block checkpointing domainmona can switch (timm models do)")
    for module in modules if enabled is not None else ():
        module.grad_checkpointing = enabled
    return any(m.grad_checkpointing for m in modules)
