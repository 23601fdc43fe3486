"""Registry of the PEFT methods (the Mona paper's comparison set and the methods put beside Mona since): one file
per method, each class registering itself with `@register_method(order=N)` (see `base.Method`); every module of
this package is imported here."""

from domainmona.adapters.methods.base import METHOD_REGISTRY, Method
from domainmona.errors import UserError

METHODS: dict[str, Method] = METHOD_REGISTRY.load(__name__, __path__)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown adapter method '{name}' (choose from: {', '.join(METHODS)})") from None
