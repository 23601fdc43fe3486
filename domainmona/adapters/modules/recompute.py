"""Activation recomputation scoped to one adapter: in training, an adapter keeps only its input for backward
and recomputes its internals there (the projected, convolved and activated maps of a Mona at Swin's first
stage hold about as much memory as the frozen block around it)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils import checkpoint


class Recomputable:
    """Mixin for adapter modules. `recompute` (on by default) is the user's switch; `inside_checkpoint` is set
    while the host block is itself checkpointed, where recomputing again inside would only add work."""

    recompute: bool = True
    inside_checkpoint: bool = False

    def recomputed(self, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        """`fn(*args)`; in training with gradients, run under a non-reentrant checkpoint (same values, same
        gradients, dropout masks replayed from the saved RNG state)."""
        if self.recompute and not self.inside_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


def configure_recompute(root: nn.Module, recompute: bool | None = None, inside_checkpoint: bool | None = None) -> None:
    """Set the switches of every recomputing adapter in `root` (None leaves one as it is)."""
    for module in root.modules():
        if isinstance(module, Recomputable):
            if recompute is not None:
                module.recompute = recompute
            if inside_checkpoint is not None:
                module.inside_checkpoint = inside_checkpoint
