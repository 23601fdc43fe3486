"""Domain-free adapter core: Mona and peer PEFT methods, injection, fusion, adapter checkpoints."""

from domainmona.adapters.fuse import fuse
from domainmona.adapters.inject import adapted_backbones, apply_freeze, inject
from domainmona.adapters.methods import METHODS
from domainmona.adapters.modules.mona import Mona, Mona3d

__all__ = ["METHODS", "Mona", "Mona3d", "adapted_backbones", "apply_freeze", "fuse", "inject"]
