"""`segment-ct demo`: the whole CT pipeline on generated volumes, driven by the `ct-demo` recipe."""

from __future__ import annotations

import copy
from pathlib import Path

from domainmona.console import console
from domainmona.io import claim_dir
from domainmona.recipes import load_recipe

COMMAND = "segment-ct demo"


def run_demo(out: str | Path, max_epochs: int | None = None, recipe_name: str = "ct-demo",
             model: str | None = None, adapter: str | None = None) -> float:
    """Generate → train → predict the validation cases → evaluate; return the mean foreground Dice. `model` and
    `adapter` replace the recipe's network and method (another method starts from its default options).

    `out` is new, empty or an earlier demo's: a rerun after an interruption regenerates the same data and
    resumes the training from its last.pt.
    """
    from domainmona.medical.data import load_split
    from domainmona.medical.predict import predict_volumes
    from domainmona.medical.report import evaluate_and_report
    from domainmona.medical.synthetic import write_dataset
    from domainmona.medical.train import train

    out = Path(out)
    recipe = load_recipe(recipe_name)
    settings = demo_settings(recipe, max_epochs, model, adapter)
    claim_dir(out, COMMAND)
    data = recipe["data"]
    data_dir = write_dataset(out / "data", cases=data["cases"], shape=tuple(data["shape"]),
                             spacing=tuple(data["spacing"]), seed=data["seed"])
    split = load_split(data_dir, recipe["shots"], settings["train"]["val_max"])
    checkpoint = train(split, settings, out / "run", resume=True)  # one GPU when there is one, else CPU
    predict_volumes([case["image"] for case in split.val], checkpoint, out / "predictions")
    evaluation = evaluate_and_report(out / "predictions", data_dir / "labelsTr", out / "evaluation.json")
    console.print(f"demo: mean foreground Dice {evaluation.mean_dice:.4f} on {len(split.val)} held-out case(s); "
                  f"outputs in {out}", highlight=False)
    return evaluation.mean_dice


def demo_settings(recipe: dict, max_epochs: int | None = None, model: str | None = None,
                  adapter: str | None = None) -> dict:
    """The recipe's settings with the demo's flags applied, then the recipe's `networks` entry for the chosen
    network (each network trains at its own lr on this tiny budget)."""
    from domainmona.medical.settings import load_settings

    overrides = copy.deepcopy(recipe["settings"])
    if max_epochs is not None:
        overrides["train"]["max_epochs"] = max_epochs
    if model is not None:
        overrides["model"]["name"] = model
    for section, values in recipe.get("networks", {}).get(overrides["model"].get("name"), {}).items():
        overrides.setdefault(section, {}).update(values)
    if adapter is not None and adapter != overrides["model"].get("adapter"):
        overrides["model"].update(adapter=adapter, adapter_cfg={})
    return load_settings(None, **overrides)
