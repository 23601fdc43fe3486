"""Domain-free adapter core: Mona and peer PEFT methods, injection, fusion, adapter checkpoints."""

from domainmona.adapters.fuse import fuse
from domainmona.adapters.modules.mona import Mona, Mona3d

__all__ = ["Mona", "Mona3d", "fuse"]
