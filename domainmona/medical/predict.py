"""Sliding-window CT segmentation with fused Mona, written back in each input's original scanner geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from domainmona.console import progress
from domainmona.errors import UserError
from domainmona.io import atomic_path
from domainmona.medical import transforms
from domainmona.medical.checkpoint import load_checkpoint
from domainmona.medical.data import check_volume
from domainmona.medical.evaluate import LABEL_NAMES_FILE
from domainmona.medical.model import assemble
from domainmona.medical.preview import write_overlay


def segment(model: torch.nn.Module, image: torch.Tensor, roi: int, sw_batch_size: int, overlap: float) -> torch.Tensor:
    """Label map (1, D, H, W) of a preprocessed (1, D, H, W) volume; gaussian blending hides window seams."""
    logits = sliding_window_inference(image[None], (roi,) * 3, sw_batch_size, model, overlap=overlap, mode="gaussian")
    return logits.argmax(1).as_tensor() if hasattr(logits, "as_tensor") else logits.argmax(1)


def model_from_checkpoint(checkpoint: dict, device: torch.device) -> torch.nn.Module:
    """The trained model in eval mode with Mona fused (same outputs, fewer convs)."""
    from domainmona.adapters import fuse

    model = assemble(checkpoint["settings"]["model"], checkpoint["num_classes"], device=device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise UserError(f"checkpoint weights do not fit the model they describe ({first})") from None
    return fuse(model).eval()


def _output_name(path: Path) -> str:
    return path.name if path.name.endswith(".nii.gz") else f"{path.stem}.nii.gz"


def predict_volumes(inputs: list[str | Path], checkpoint_path: str | Path, out_dir: str | Path,
                    overlap: float = 0.5, device: str | None = None) -> list[Path]:
    """Write `<out>/<input name>` uint8 label maps (input's shape and affine) and `<out>/<stem>.png` previews."""
    import nibabel as nib

    inputs = [Path(p) for p in inputs]
    originals = [check_volume(p) for p in inputs]  # every input is checked before any work
    names = [_output_name(p) for p in inputs]
    if len(set(names)) != len(names):
        raise UserError("two inputs share a file name; their predictions would overwrite each other")
    if not 0 <= overlap < 1:
        raise UserError(f"--overlap {overlap}: must be in [0, 1)")
    checkpoint = load_checkpoint(checkpoint_path)
    settings = checkpoint["settings"]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model_from_checkpoint(checkpoint, device)
    chain = transforms.inference(settings["preprocess"])
    invert = transforms.inverse_to_original(chain)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with progress() as bar, torch.no_grad():
        task = bar.add_task("segment", total=len(inputs))
        for path, original, name in zip(inputs, originals, names):
            data = chain({transforms.IMAGE: str(path)})
            image = data[transforms.IMAGE]
            labels = segment(model, image.to(device), settings["train"]["roi"], settings["train"]["sw_batch_size"],
                             overlap).cpu()
            data[transforms.PRED] = MetaTensor(labels.float())  # Invertd needs a MetaTensor to invert onto
            restored = invert(data)[transforms.PRED][0].numpy().round().astype(np.uint8)
            if restored.shape != original.shape:
                raise RuntimeError(f"inverted prediction shape {restored.shape} != input shape {original.shape}")
            # A fresh header: the CT's scl_slope/scl_inter must not rescale the labels.
            label_map = nib.Nifti1Image(restored, original.affine)
            label_map.header.set_xyzt_units(*original.header.get_xyzt_units())
            target = out_dir / name
            with atomic_path(target) as tmp:  # the temp name keeps .nii.gz, so nibabel writes gzip
                nib.save(label_map, tmp)
            write_overlay(image[0].numpy(), labels[0].numpy(), out_dir / f"{name[:-len('.nii.gz')]}.png")
            written.append(target)
            bar.advance(task)
    with atomic_path(out_dir / LABEL_NAMES_FILE) as tmp:
        tmp.write_text(json.dumps(checkpoint["label_names"], indent=2))
    return written
