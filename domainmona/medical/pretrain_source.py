"""Pretrain the small whole CT networks shipped in domainmona/assets/
(`python -m domainmona.medical.pretrain_source --model swinunetr|segresnet`).

Adapters pay when the network under them is pretrained whole, decoder included, and only a few MB change per
new organ. Real whole networks (MONAI bundles) are downloads; these stand in for them so that the demo, the
tests and the notebook show that workflow offline. Each is trained from scratch by `segment-ct train` itself
(full fine-tuning, no adapter) on generated *source* organs (`synthetic.ORGANS`: liver, spleen, kidney), never
on the target organ it is later adapted to (`synthetic.TARGET_ORGAN`). The whole state dict is kept under
MONAI's own names, as `torch.save(model.state_dict())` writes it, with the recipe and the source Dice in the
safetensors metadata. Data and training are seeded and run on CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import monai
import torch
from monai.data import DataLoader, Dataset

from domainmona.errors import UserError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
INT16_MAX = torch.iinfo(torch.int16).max


@dataclass(frozen=True)
class SourceRecipe:
    """How one source network is pretrained. `network` is what rebuilds it (the `model:` settings it differs
    in); `storage` is the dtype of its floating tensors in the asset."""

    network: dict[str, Any]
    lr: float
    epochs: int
    storage: str
    cases: int = 30  # one in five held out for the source Dice (`load_split`)
    shape: tuple[int, int, int] = (64, 64, 40)  # the CT demo's volumes
    spacing: tuple[float, float, float] = (1.2, 1.2, 2.5)
    data_seed: int = 100  # not the seeds of the demo's and the tests' source cases
    roi: int = 64
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=lambda: {
        # each patch holds the whole resampled body; intensity shifts as large as the organs' HU gaps would
        # blur them (as in pipelines/ct-demo.yaml)
        "augment": {"samples_per_volume": 1, "intensity_prob": 0.0},
        "train": {"num_workers": 0, "sw_batch_size": 2, "val_max": 6}})

    @property
    def name(self) -> str:
        return self.network["name"]


# SwinUNETR at MONAI's smallest width (12) is 4.08M parameters, SegResNet at width 8 1.18M. fp16 halves the
# SwinUNETR file; SegResNet fits in fp32.
RECIPES = {recipe.name: recipe for recipe in (
    SourceRecipe({"name": "swinunetr", "feature_size": 12, "decoder_size": None, "merging": "legacy"},
                 lr=1e-2, epochs=8, storage="float16"),
    SourceRecipe({"name": "segresnet",
                  "segresnet": {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}},
                 lr=1e-3, epochs=16, storage="float32"),
)}


def asset_path(name: str) -> Path:
    """Where `pretrain_source` writes network `name` by default, in the package."""
    return ASSETS / f"ct_source_{name}.safetensors"


def source_network(name: str) -> Path:
    """The shipped source network `name` (swinunetr or segresnet): a whole state dict, MONAI names."""
    if name not in RECIPES:
        raise UserError(f"source network {name!r}: choose from {', '.join(RECIPES)}")
    path = asset_path(name)
    if not path.is_file():
        raise UserError(f"{path}: missing; make it with 'python -m domainmona.medical.pretrain_source --model {name}'")
    return path


def source_recipe(name: str) -> dict[str, Any]:
    """The metadata of source network `name`, JSON values decoded: recipe, classes, source Dice, time."""
    from safetensors import safe_open

    with safe_open(source_network(name), "pt") as f:
        metadata = f.metadata()
    return {key: json.loads(value) for key, value in metadata.items()}


def source_settings(name: str) -> dict[str, Any]:
    """The `model:` settings that rebuild source network `name` (to put under a run's own, e.g. its adapter)."""
    return source_recipe(name)["network"]


def stored(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in `dtype`, integer ones (SwinUNETR's relative position indices) as int16 when they fit:
    `load_state_dict` and the project's loaders copy into the network's own tensors, so loading upcasts."""
    def narrow(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.to(dtype)
        return tensor.to(torch.int16) if tensor.abs().max() <= INT16_MAX else tensor

    return {key: narrow(tensor).contiguous() for key, tensor in state.items()}


def pretrain(name: str, out: Path, recipe: SourceRecipe) -> Path:
    """Generate the source task, train network `name` on it with `segment-ct train`, store it as `recipe.storage`
    and measure the source Dice of the stored weights on the held-out cases; write `out`."""
    from safetensors.torch import save_file

    from domainmona.io import atomic_path
    from domainmona.medical import synthetic, transforms
    from domainmona.medical.checkpoint import load_checkpoint
    from domainmona.medical.data import load_split
    from domainmona.medical.model import build_network
    from domainmona.medical.settings import load_settings
    from domainmona.medical.train import train, validation_dice

    settings = load_settings(None, model={**recipe.network, "adapter": "none"}, augment=recipe.settings["augment"],
                             train={**recipe.settings["train"], "roi": recipe.roi, "max_epochs": recipe.epochs,
                                    "val_every": recipe.epochs, "lr": recipe.lr, "seed": recipe.seed})
    with tempfile.TemporaryDirectory(prefix="ct-source-") as work:
        data = synthetic.write_dataset(Path(work) / "source", recipe.cases, recipe.shape, recipe.spacing,
                                       recipe.data_seed)
        split = load_split(data, val_max=settings["train"]["val_max"])
        started, cpu_started = time.perf_counter(), time.process_time()
        checkpoint = train(split, settings, Path(work) / "run", gpus=0)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        tensors = stored(load_checkpoint(checkpoint)["model"], getattr(torch, recipe.storage))
        model = build_network(settings["model"], split.num_classes)
        model.load_state_dict(tensors)
        held_out = DataLoader(Dataset(split.val, transforms.validation(settings["preprocess"])), batch_size=1)
        dice = validation_dice(model, held_out, settings, split.num_classes, torch.device("cpu"))
    metadata = {
        "format": f"monai-{name}", "produced_by": f"python -m domainmona.medical.pretrain_source --model {name}",
        "network": recipe.network, "recipe": asdict(recipe), "classes": synthetic.LABEL_NAMES,
        "train_cases": len(split.train), "held_out_cases": len(split.val),
        "iterations": recipe.epochs * len(split.train), "source_dice": round(dice, 4),
        "seconds": round(seconds), "cpu_seconds": round(cpu_seconds), "threads": torch.get_num_threads(),
        "storage": dict(Counter(str(t.dtype).removeprefix("torch.") for t in tensors.values())),
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "monai": monai.__version__}}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={key: json.dumps(value) for key, value in metadata.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(RECIPES), required=True)
    parser.add_argument("--out", type=Path, help="default: domainmona/assets/ct_source_<model>.safetensors")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    args = parser.parse_args()
    recipe = RECIPES[args.model]
    if args.epochs is not None:
        recipe = replace(recipe, epochs=args.epochs)
    print(pretrain(args.model, args.out or asset_path(args.model), recipe))


if __name__ == "__main__":
    main()
