"""A PEFT method: its config dataclass, the modules it attaches to each block, the base weights it trains."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from domainmona.adapters.families.spec import Site
from domainmona.adapters.registry import Registry
from domainmona.errors import UserError


@dataclass(frozen=True)
class NoConfig:
    """Methods without options."""


class Method:
    """Base class of a PEFT method. A method is one file in `domainmona/adapters/methods/` (plus its test) whose
    class is decorated `@register_method(order=N)`: `METHODS` lists methods by N (the Mona paper's set 10-100,
    later methods after), and the command line reads `name` from the source without importing it, so `name`
    must be a string literal. Subclasses set `name`, `summary`, `Config` (a frozen dataclass whose fields'
    defaults give the option types) and override the hooks they need:

    - `attach(site, config)`: add modules to one block (slots via `fill_slots`, or swap a layer's class);
    - `attach_model(root, sites, config)`: after every block, what the whole backbone holds (tensors shared
      by blocks, under `modules.delta.share`; layers outside the blocks); raise `UserError` (one line) where
      the method is undefined for the family (`reparam.require_transformer`);
    - `trains_base(path, owner, sites, config)`: which of the backbone's own weights train;
    - `recomputes = True` when its modules can recompute their internals in backward (`Recomputable`).

    Whatever injection adds is recorded as the backbone's adapter tensors (`AdapterState.parameters`, read by
    `inject.adapter_parameter_names` and saved by `save_adapter`), never recognised by name. Layers swapped to
    a `modules.delta.Mergeable` fold into the frozen weights with `merge` (Mona's convs fold with `fuse`).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    recomputes: ClassVar[bool] = False  # its modules can recompute their internals in backward (Recomputable)

    def make_config(self, **options: Any):
        """Validated config from keyword options (strings from a CLI are converted to the field's type)."""
        fields = {f.name: f for f in dataclasses.fields(self.Config)}
        values = {}
        for key, value in options.items():
            field = fields.get(key)
            if field is None:
                known = ", ".join(fields) or "none"
                raise UserError(f"method '{self.name}' has no option '{key}' (options: {known})")
            kind = type(field.default)
            try:
                values[key] = kind(value)
            except (TypeError, ValueError):
                raise UserError(f"method '{self.name}': option {key}={value!r} is not a {kind.__name__}") from None
            if kind in (int, float) and not (math.isfinite(values[key]) and values[key] >= 0):
                raise UserError(f"method '{self.name}': option {key} must be a finite number >= 0, got {value}")
        return self.Config(**values)

    def attach(self, site: Site, config) -> None:
        """Add this method's modules to one block (default: none)."""

    def attach_model(self, root: nn.Module, sites: list[Site], config) -> None:
        """Add this method's backbone-level modules, once, after `attach` on every site (default: none)."""

    def trains_base(self, path: str, owner: nn.Module, sites: list[Site], config) -> bool:
        """Whether the backbone's own parameter at `path` (owned by module `owner`) trains (default: no)."""
        return False

    def fill_slots(self, site: Site, placement: str, make: Callable[[], nn.Module]) -> None:
        """Put a fresh `make()` in each of the block's slots for `placement`; a one-line error when its
        family has none."""
        slots = site.family.slots(placement)
        if not slots:
            raise UserError(f"method '{self.name}' needs {placement} adapter slots, which {site.family.name} "
                            f"blocks do not have (try 'mona')")
        for slot in slots:
            site.block.add_module(slot, make())


METHOD_REGISTRY: Registry[Method] = Registry("adapter method")


def register_method(order: float) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register an instance of the class under its `name`, listed at `order` in `METHODS`."""

    def register(cls: type[Method]) -> type[Method]:
        METHOD_REGISTRY.add(cls.name, cls(), order)
        return cls

    return register
