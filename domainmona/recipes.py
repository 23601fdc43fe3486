"""Where the framework configs and the pipeline recipes live, and how a recipe is read.

`configs/` (mmengine/MONAI settings) and `pipelines/` (job recipes: data + config + stages, as YAML data)
sit at the repository root next to the package; domainmona is installed in editable mode by
scripts/install.sh, so they are found relative to the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from domainmona.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"
PIPELINES_DIR = REPO_ROOT / "pipelines"


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
