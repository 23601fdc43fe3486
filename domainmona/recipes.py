"""Where the framework configs and the pipeline recipes live, and how a recipe is read.

`configs/` (mmengine/MONAI settings) and `pipelines/` (job recipes: data + config + stages, as YAML data)
sit at the repository root. The package reaches both as its data folder `domainmona/_data/`: in a source
checkout (editable install) `_data/configs` and `_data/pipelines` are symlinks to the root folders, and a
wheel holds real copies of them (package data, see pyproject.toml). So one lookup through
importlib.resources serves both, from any working directory; mmengine's relative `_base_` paths resolve
inside that folder either way.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from domainmona.errors import UserError

# A real directory: pip installs wheels unpacked, and mmengine reads configs (and their `_base_`) from disk.
DATA_DIR = Path(files(__package__) / "_data")
CONFIGS_DIR = DATA_DIR / "configs"
PIPELINES_DIR = DATA_DIR / "pipelines"


def load_recipe(name: str) -> dict[str, Any]:
    """Read `pipelines/<name>.yaml` as a plain dict."""
    path = PIPELINES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))
        raise UserError(f"no pipeline recipe '{name}' in {PIPELINES_DIR} (known: {', '.join(known) or 'none'})")
    with path.open() as f:
        recipe = yaml.safe_load(f)
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping")
    return recipe


def grid_field(part: str) -> Any:
    """A dataclass field defaulting to the DOTA patch grid's "size" or "gap" (read when an instance is made)."""
    from dataclasses import field

    return field(default_factory=lambda: patch_grid()[("size", "gap").index(part)])


def patch_grid(name: str = "dota") -> tuple[int, int]:
    """(size, gap) of the DOTA/STAR patch grid: the `split` of `pipelines/<name>.yaml`, its one home."""
    split = load_recipe(name)["split"]
    return split["size"], split["gap"]
