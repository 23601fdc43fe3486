"""One way settings reach a training run: a typed dataclass per pipeline, filled in layers.

Each pipeline's settings object (detection's `TrainOptions`, geo-det's `GeoDetSettings`, geo-seg's
`GeoSegSettings`, segment-ct's `CTSettings`) is a dataclass holding the defaults and every check. It is filled
in one order: the recipe or packaged defaults, then `--config FILE` (YAML), then the command-line flags
(`resolve`); the whole object goes into the pipeline and, as plain data (`plain`), into the checkpoint. The
same plain data is what `--print-config` prints (`print_settings`), so the two can be compared.

Here: reading a layer into a dataclass (unknown keys refused in one line, values checked against the field
types), `KEY=VALUE` options (`--adapter-opt`), the adapter options' check against the method's own config
dataclass, and dumping settings to plain data or YAML.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from domainmona.errors import UserError

Layer = tuple[str, Mapping[str, Any]]  # (where the values come from, for messages; the values)


def _shown(value: Any, limit: int = 60) -> str:
    from domainmona.options import shown

    return shown(value, limit)


def read_config(path: str | Path | None) -> dict[str, Any]:
    """A `--config` YAML file as a mapping (empty for None or an empty file); read safely and capped
    (`domainmona.io.read_yaml`)."""
    from domainmona.io import read_yaml

    if path is None:
        return {}
    content = read_yaml(path, "YAML settings file")
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserError(f"{path}: settings must be a YAML mapping of setting: value")
    return content


def parse_assignments(items: Iterable[str] | None, flag: str = "--adapter-opt") -> dict[str, Any]:
    """`KEY=VALUE` strings as a mapping; each value is read as a YAML scalar (`32` an int, `0.1` a float,
    `true` a bool, anything else a string)."""
    import yaml

    values: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{flag} {_shown(item)}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        values[key] = value if isinstance(value, (bool, int, float, str)) or value is None else text
    return values


def adapter_layer(config: Mapping[str, Any], adapter_opt: Iterable[str] | None) -> dict[str, Any]:
    """`--adapter-opt KEY=VALUE` options over the `--config` layer's `adapter_cfg`, key by key, as a layer of
    settings (empty without the flag)."""
    if not adapter_opt:
        return {}
    return {"adapter_cfg": {**(config.get("adapter_cfg") or {}), **parse_assignments(adapter_opt)}}


def check_adapter_options(method: str | None, options: Mapping[str, Any], where: str = "adapter_cfg") -> None:
    """Refuse, in one line, adapter options the method's config dataclass does not take or cannot convert
    (`Method.make_config`); methods that take no adapter ('none', None) take no options."""
    if not isinstance(options, Mapping):
        raise UserError(f"{where} {_shown(options)}: must be a mapping of the adapter method's options")
    if method in (None, "none"):
        if options:
            raise UserError(f"{where}: options {', '.join(map(str, options))} given but no adapter method")
        return
    from domainmona.adapters.methods import get_method

    get_method(str(method)).make_config(**options)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def check_keys(cls: type, values: Mapping[str, Any], where: str, aliases: Mapping[str, str] | None = None) -> dict:
    """``values`` with ``aliases`` renamed, refusing keys that are not fields of ``cls`` and checking each
    value against its field's type."""
    aliases = aliases or {}
    known = field_names(cls)
    renamed = {aliases.get(str(k), k): v for k, v in values.items()}
    unknown = [str(k) for k in renamed if k not in known]
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {_shown(', '.join(unknown), 200)[1:-1]} "
                        f"(known: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    return {key: convert(value, hints[key], f"{where}: {key}") for key, value in renamed.items()}


def resolve(cls: type, *layers: Layer, aliases: Mapping[str, str] | None = None):
    """``cls`` from ``layers`` applied in order (later values win): each layer's keys are checked
    (`check_keys`), then the dataclass is built once, so that its own checks (``__post_init__``) see the
    final values."""
    values: dict[str, Any] = {}
    for where, layer in layers:
        values.update(check_keys(cls, layer, where, aliases))
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise UserError(f"settings: missing {', '.join(missing)}")
    return cls(**values)


def given(**values: Any) -> dict[str, Any]:
    """The flags that were given: those not None (switches pass None when left at their default)."""
    return {k: v for k, v in values.items() if v is not None}


def switch(value: bool, default: bool) -> bool | None:
    """A `--x/--no-x` switch as a layer value: None (not given) when it is at its default, so that a
    `--config` value below it stands."""
    return None if value == default else value


def convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field type ``hint`` wants it, or a one-line UserError. Paths come from strings,
    tuples from lists, floats from ints (and from YAML's dotless `1e-4` strings); a bool is never a number."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return convert(value, option, where)
            except UserError as exc:
                errors.append(exc)
        raise errors[0] if len(options) == 1 else UserError(f"{where} must be a {_type_name(hint)}, got {_shown(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserError(f"{where} must be one of {', '.join(map(str, args))}, got {_shown(value)}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value.value if isinstance(value, enum.Enum) else value)
        except ValueError:
            choices = ", ".join(str(e.value) for e in hint)
            raise UserError(f"{where} must be one of {choices}, got {_shown(value)}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where} must be a whole number, got {_shown(value)}")
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise UserError(f"{where} must be a finite number, got {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where} must be a string, got {_shown(value)}")
    if hint is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise UserError(f"{where} must be a path, got {_shown(value)}")
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {_shown(value)}")
        item = args[0] if args else Any
        items = [convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise UserError(f"{where} must be a mapping, got {_shown(value)}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return resolve(hint, (where, value))
        raise UserError(f"{where} must be a mapping, got {_shown(value)}")
    return value


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "whole number", float: "number", str: "string", Path: "path"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)


def plain(value: Any) -> Any:
    """Settings as plain data (YAML and JSON): dataclasses as mappings, paths as strings, tuples as lists,
    enums as their values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Path):
        return str(value)
    return value


def dump_yaml(settings: Any) -> str:
    import yaml

    return yaml.safe_dump(plain(settings), sort_keys=False, allow_unicode=True)


def print_settings(settings: Any) -> None:
    """`--print-config`: the resolved settings as YAML on stdout, then exit 0 (nothing written)."""
    import typer

    typer.echo(dump_yaml(settings), nl=False)
    raise typer.Exit(0)


def side_layer(config: Mapping[str, Any], flags: Mapping[str, Any], side_opt: Iterable[str] | None) -> dict[str, Any]:
    """The side network's settings as a layer: `--side-opt KEY=VALUE` over the `--config` layer's `side_cfg`,
    and, where the side network trains beside a frozen ViT and no `--adapter` or `adapter` setting names a
    method, the frozen-ViT method (the papers' parameter-efficient mode)."""
    from domainmona.adapters.side import DEFAULT_SIDE, FROZEN_VIT_METHOD

    layer: dict[str, Any] = {}
    if side_opt:
        layer["side_cfg"] = {**(config.get("side_cfg") or {}), **parse_assignments(side_opt, "--side-opt")}
    side = flags.get("side") or config.get("side")
    if side not in (None, DEFAULT_SIDE) and flags.get("adapter") is None and config.get("adapter") is None:
        layer["adapter"] = FROZEN_VIT_METHOD
    return layer
