"""Registries that fill themselves: a method or backbone-family file registers what it defines when imported, and
its package imports every one of its modules, so a new method or family is one new file (no list to edit).

This module imports no torch: the command line reads the method names from here for its choices and help.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

METHODS_DIR = Path(__file__).parent / "methods"
METHOD_DECORATOR = "register_method"


class Registry(Generic[T]):
    """Entries by name, listed by their `order` key, then by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[float, T]] = {}

    def add(self, name: str, entry: T, order: float = 0) -> T:
        if name in self._entries and self._entries[name][1] is not entry:
            raise ValueError(f"two {self.kind}s are named '{name}'")
        self._entries[name] = (order, entry)
        return entry

    def get(self, name: str) -> T | None:
        """The entry registered as `name` so far (None: none)."""
        entry = self._entries.get(name)
        return entry[1] if entry else None

    def load(self, package: str, path: Iterable[str]) -> dict[str, T]:
        """Import every module of `package` (its `__path__`), each registering what it defines; the entries."""
        import pkgutil  # not for the command line's start-up, which only reads `method_names`

        for info in pkgutil.iter_modules(path):
            importlib.import_module(f"{package}.{info.name}")
        return self.entries()

    def entries(self) -> dict[str, T]:
        """Everything registered so far, in order."""
        return {name: entry for name, (_, entry) in sorted(self._entries.items(), key=lambda i: (i[1][0], i[0]))}


@functools.cache
def method_names() -> tuple[str, ...]:
    """The registered methods' names in registry order, read from the method files' source without importing
    them (or torch): each class decorated `@register_method(order=N)` with a literal `name = "..."`.
    tests/test_adapters_registry.py checks that this equals `METHODS`."""
    found = []
    for file in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            order = _registered_order(node) if isinstance(node, ast.ClassDef) else None
            if order is not None:
                found.append((order, _class_constant(node, "name")))
    return tuple(name for _, name in sorted(found))


def __getattr__(name: str):
    """`METHOD_NAMES` (exported by `domainmona.adapters`): `method_names()`, read on first use."""
    if name == "METHOD_NAMES":
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registered_order(node: ast.ClassDef) -> float | None:
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == METHOD_DECORATOR:
            return ast.literal_eval(decorator.args[0] if decorator.args else decorator.keywords[0].value)
    return None


def _class_constant(node: ast.ClassDef, attribute: str) -> str:
    for statement in node.body:
        if (isinstance(statement, ast.Assign) and [getattr(t, "id", None) for t in statement.targets] == [attribute]
                and isinstance(statement.value, ast.Constant)):
            return statement.value.value
    raise ValueError(f"registered method class {node.name} has no literal `{attribute} = '...'`")
