"""What the core knows about one backbone family, and the blocks (sites) found in a backbone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from domainmona.adapters.families.host import (ATTN_BRANCH, MLP_BRANCH, MLP_PARALLEL, POST_ATTN, POST_BLOCK,
                                               POST_MLP)

ClassRef = tuple[str, str]  # (module, qualname): matched without importing the library


@dataclass(frozen=True)
class Family:
    """A backbone family: its block and root classes and how adapters plug into its blocks."""

    name: str
    blocks: tuple[ClassRef, ...]
    roots: tuple[ClassRef, ...]
    forward: type  # AdapterHost subclass whose forward replaces the block's
    dim: Callable[[nn.Module], int]
    qkv: Callable[[nn.Module], nn.Module | None] = lambda block: None
    spatial_dims: Callable[[nn.Module], int] = lambda block: 2
    transformer: bool = True  # False: CNN blocks with a single output slot
    prepare: Callable[[nn.Module, list["Site"]], None] = lambda root, sites: None  # after rewiring

    def slots(self, placement: str) -> tuple[str, ...]:
        """Slot names for a placement ('post', 'branch', 'parallel'); empty when the family has none."""
        if not self.transformer:
            return (POST_BLOCK,) if placement == "post" else ()
        return {"post": (POST_ATTN, POST_MLP), "branch": (ATTN_BRANCH, MLP_BRANCH),
                "parallel": (MLP_PARALLEL,)}[placement]


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
