"""Base layers that carry their own learned update, and how that update folds back into them.

Reparametrising methods (LoRA, SSF, FacT, KronA, KAdaptation) swap a frozen layer's class for a subclass of it
that adds the method's tensors; parameter names and class lineage stay, so pretrained weights load as before.
`merge_into_base` folds the update into the layer's own weight and bias and restores the original class.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

SHARED_ATTR = "adapter_shared"  # the module holding the tensors a backbone's blocks share (FacT, KAdaptation)
_SWAPPED: dict[tuple[type, type], type] = {}


class Mergeable:
    """Mixin for a swapped base layer. Subclasses name their own tensors in `adapter_tensors` (and the plain
    attributes they add in `attributes`) and implement `fold` (update weight/bias in place)."""

    adapter_tensors: ClassVar[tuple[str, ...]] = ()
    attributes: ClassVar[tuple[str, ...]] = ()
    base_class: ClassVar[type]  # the class before the swap

    def fold(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def merge_into_base(self) -> None:
        """Fold the update into the frozen tensors, drop the method's tensors, and become the original class."""
        self.fold()
        for name in self.adapter_tensors:
            delattr(self, name)
        for name in self.attributes:
            self.__dict__.pop(name, None)
        self.__class__ = self.base_class


class QVDelta(Mergeable):
    """Swapped-in mixin for a qkv Linear (C -> 3C): W + [dq; 0; dv], k left alone."""

    def part_delta(self, part: str) -> torch.Tensor:
        """The (C x C) update of the q or the v rows."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        dq, dv = self.part_delta("q"), self.part_delta("v")
        return torch.cat((dq, torch.zeros_like(dq), dv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight + self.delta_weight(), self.bias)

    def fold(self) -> None:
        add_weight_delta(self, self.delta_weight())


def swap_class(module: nn.Module, mixin: type) -> nn.Module:
    """Make `module` an instance of `mixin` mixed into its own class (one cached subclass per pair)."""
    cls = type(module)
    key = (mixin, cls)
    if key not in _SWAPPED:
        _SWAPPED[key] = type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {"base_class": cls})
    module.__class__ = _SWAPPED[key]
    return module


def add_weight_delta(module: nn.Module, delta: torch.Tensor) -> None:
    """weight += delta, in the weight's dtype."""
    module.weight.add_(delta.to(module.weight.dtype))


def refer(module: nn.Module, name: str, target: nn.Module) -> None:
    """A plain reference from `module` to `target` (not a child: shared tensors appear once in a state dict,
    and a deep copy of the whole model keeps them shared)."""
    module.__dict__[name] = target


def new_parameter(shape, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=like.dtype, device=like.device))


def share(first_block: nn.Module, module: nn.Module) -> nn.Module:
    """Make `module` the owner of the tensors all blocks of a backbone share; it is held by the first block,
    not by the backbone root: a root such as timm's feature wrapper runs every child it holds, while a rewired
    block runs only what its forward names. `merge` removes it again."""
    first_block.add_module(SHARED_ATTR, module)
    return module
