"""Self-registering methods and backbone families: a new one is one file in its package, found by import."""

import importlib
import sys

import pytest

from domainmona.adapters.registry import Registry

_PLUGIN = """
from registry_under_test import REGISTRY
REGISTRY.add({name!r}, {entry!r}, order={order})
"""


def test_load_imports_every_module_of_a_package_and_lists_by_order_then_name(tmp_path, monkeypatch):
    package = tmp_path / "plugins_under_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, (name, order) in {"a": ("zeta", 1), "b": ("alpha", 2), "c": ("beta", 1)}.items():
        (package / f"{module}.py").write_text(_PLUGIN.format(name=name, entry=name.upper(), order=order))
    registry = Registry("plugin")
    fake = type(sys)("registry_under_test")
    fake.REGISTRY = registry
    monkeypatch.setitem(sys.modules, "registry_under_test", fake)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = importlib.import_module("plugins_under_test")
    loaded = registry.load("plugins_under_test", plugins.__path__)
    assert list(loaded.items()) == [("beta", "BETA"), ("zeta", "ZETA"), ("alpha", "ALPHA")]


def test_a_second_entry_under_a_taken_name_is_refused():
    registry = Registry("plugin")
    registry.add("x", object())
    with pytest.raises(ValueError, match="two plugins are named 'x'"):
        registry.add("x", object())


def test_every_family_file_registers_its_family():
    import pkgutil

    from domainmona.adapters import families

    defined = {importlib.import_module(f"{families.__name__}.{m.name}").FAMILY.name
               for m in pkgutil.iter_modules(families.__path__)
               if hasattr(importlib.import_module(f"{families.__name__}.{m.name}"), "FAMILY")}
    names = [f.name for f in families.FAMILIES]
    assert names == sorted(names) and set(names) == defined
    assert {"cnn", "mmdet-swin", "monai-swin", "timm-swin", "timm-vit"} <= defined


def test_methods_register_themselves_in_the_papers_order_and_the_cli_reads_the_same_names_without_torch():
    from domainmona.adapters.methods import METHODS, get_method
    from domainmona.adapters.registry import method_names

    assert tuple(METHODS) == method_names() == (
        "full", "fixed", "bitfit", "normtuning", "partial-1", "adapter", "lora", "adaptformer", "lorand", "mona",
        "ssf", "parallel-adapter", "fact-tt", "fact-tk", "krona", "kadaptation", "vpt-deep", "vpt-shallow",
        "convpass", "conv-adapter")
    assert all(type(method).name == name and get_method(name) is method for name, method in METHODS.items())
