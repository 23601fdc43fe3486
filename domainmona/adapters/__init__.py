"""Domain-free adapter core: Mona and peer PEFT methods, injection, fusion, adapter checkpoints.

The names below load on first use, not when the package is imported: the command line imports
`domainmona.adapters.cli` (and with it this package) for every `--help`, which must not load torch.
"""

import importlib
import sys
from types import ModuleType

# exported name -> the submodule that defines it
_EXPORTS = {
    "load_adapter": "checkpoint", "save_adapter": "checkpoint", "fuse": "fuse", "adapted_backbones": "inject",
    "apply_freeze": "inject", "inject": "inject", "METHODS": "methods", "Mona": "modules.mona",
    "Mona3d": "modules.mona", "load_official_mona": "official", "load_pretrained": "pretrained",
    "TrainableReport": "report", "trainable_report": "report", "LoadReport": "weights",
    "set_adapter_recompute": "memory", "set_block_checkpointing": "memory", "block_checkpointing": "memory",
    "saved_tensor_bytes": "memory", "merge": "merge", "prepare_for_inference": "merge",
    "adapter_parameter_names": "inject",
    "METHOD_NAMES": "registry",  # `METHODS`' names in its order, read without torch
}

__all__ = sorted(_EXPORTS)


class _Package(ModuleType):
    """This package's module type: exports resolve on first access (PEP 562 alone cannot keep the functions
    `fuse` and `inject` winning over their same-named submodules, which the import system binds here)."""

    def __getattr__(self, name: str):
        if name not in _EXPORTS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        self.__dict__[name] = value  # later lookups skip this method
        return value

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, ModuleType):
            return  # the import system binding submodule `fuse` or `inject`: the export of that name wins
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_EXPORTS})


sys.modules[__name__].__class__ = _Package
