"""Layers one way: the imports each layer may make, read from the source (every import statement, including
those inside functions, and `importlib.import_module` of a literal name).

  domainmona.tiling, domainmona.boxes   the shared tiling contract and its boxes: no detection, no geo;
  domainmona.detection                  may use tiling and boxes, never geo;
  domainmona.adapters                   the domain-free core: no detection, geo or medical.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "domainmona"

# (files, as globs under the package) -> packages they must not import
RULES = [
    (("tiling.py", "boxes/**/*.py"), ("domainmona.detection", "domainmona.geo")),
    (("detection/**/*.py",), ("domainmona.geo",)),
    (("adapters/**/*.py",), ("domainmona.detection", "domainmona.geo", "domainmona.medical")),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every import in the file; `from a import b` gives both `a` and `a.b`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(globs, forbidden, root: Path = PACKAGE) -> list[str]:
    """One line per offending import statement: `file:line imports module`."""
    files = sorted({path for pattern in globs for path in root.glob(pattern)})
    assert files, f"no files match {globs} under {root}"
    bad = []
    for path in files:
        offending: dict[int, str] = {}
        for line, name in imported_names(path, root):
            if line not in offending and any(name == layer or name.startswith(layer + ".") for layer in forbidden):
                offending[line] = name
        bad.extend(f"{path.relative_to(root.parent).as_posix()}:{line} imports {name}"
                   for line, name in sorted(offending.items()))
    return bad


@pytest.mark.parametrize(("globs", "forbidden"), RULES, ids=["tiling-and-boxes", "detection", "adapters"])
def test_layers_import_one_way(globs, forbidden):
    bad = violations(globs, forbidden)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_reader_sees_imports_inside_functions_relative_ones_and_import_module(tmp_path):
    fake = tmp_path / "domainmona"
    (fake / "boxes").mkdir(parents=True)
    (fake / "boxes" / "sample.py").write_text(
        "import importlib\n"
        "def f():\n"
        "    from ..detection.dota import merge\n"
        "    from domainmona import geo\n"
        "    importlib.import_module('domainmona.geo.bands')\n"
        "from domainmona.errors import UserError\n", encoding="utf-8")
    assert violations(("boxes/**/*.py",), ("domainmona.detection", "domainmona.geo"), root=fake) == [
        "domainmona/boxes/sample.py:3 imports domainmona.detection.dota",
        "domainmona/boxes/sample.py:4 imports domainmona.geo",
        "domainmona/boxes/sample.py:5 imports domainmona.geo.bands",
    ]


def test_the_old_dota_modules_re_export_the_boxes_types():
    import domainmona.boxes as boxes
    from domainmona.detection.dota import geometry, labels, merge

    assert labels.DotaObject is boxes.DotaObject and labels.write_dota_labels is boxes.write_dota_labels
    assert geometry.normalise_quads is boxes.normalise_quads and geometry.obb_to_poly is boxes.obb_to_poly
    assert merge.Detections is boxes.Detections
