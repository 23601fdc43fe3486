"""Sliding-window CT segmentation with the adapters merged (Mona fused), written back in each input's original scanner geometry.

Outputs carry a domainmona mark (the NIfTI `descrip` field, the PNG `Software` text), so a rerun into the
same `--out` replaces its own files and refuses to overwrite anything else, an input above all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from domainmona.console import progress
from domainmona.errors import UserError
from domainmona.export import CT, runtime_network
from domainmona.io import PRODUCER, atomic_path, claim_dir, claim_file, write_json
from domainmona.medical import transforms
from domainmona.medical.checkpoint import load_checkpoint, load_state
from domainmona.medical.data import check_volume
from domainmona.medical.evaluate import LABEL_NAMES_FILE
from domainmona.medical.model import assemble
from domainmona.medical.preview import SOFTWARE, write_overlay

COMMAND = "segment-ct predict"
DESCRIP = f"{PRODUCER} {COMMAND}".encode()  # NIfTI header text (80 bytes at most)


def segment(model: torch.nn.Module, image: torch.Tensor, roi: int, sw_batch_size: int, overlap: float) -> torch.Tensor:
    """Label map (1, D, H, W) of a preprocessed (1, D, H, W) volume; gaussian blending hides window seams."""
    logits = sliding_window_inference(image[None], (roi,) * 3, sw_batch_size, model, overlap=overlap, mode="gaussian")
    return logits.argmax(1).as_tensor() if hasattr(logits, "as_tensor") else logits.argmax(1)


def model_from_checkpoint(checkpoint: dict, device: torch.device,
                          path: str | Path = "checkpoint") -> torch.nn.Module:
    """The trained model in eval mode, adapters merged into the frozen weights and Mona fused (same outputs,
    fewer ops)."""
    from domainmona.adapters import prepare_for_inference

    settings = checkpoint["settings"]
    model = assemble(settings["model"], checkpoint["num_classes"], device=device, roi=settings["train"]["roi"])
    load_state(path, checkpoint, model=model)
    return prepare_for_inference(model).eval()


def _output_name(path: Path) -> str:
    return path.name if path.name.endswith(".nii.gz") else f"{path.stem}.nii.gz"


def written_by_predict(path: Path) -> bool:
    """Whether ``path`` is a label map or preview this command wrote (its mark is there)."""
    try:
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as png:
                return png.info.get("Software") == SOFTWARE
        import nibabel as nib

        return bytes(nib.load(path).header["descrip"].item()).startswith(DESCRIP)
    except Exception:  # unreadable or foreign: not ours, whatever the library's reason
        return False


def predict_volumes(inputs: list[str | Path], checkpoint_path: str | Path, out_dir: str | Path,
                    overlap: float = 0.5, device: str | None = None, runtime: str = "torch",
                    onnx_model: str | Path | None = None) -> list[Path]:
    """Write `<out>/<input name>` uint8 label maps (input's shape and affine) and `<out>/<stem>.png` previews.

    Everything is checked before any work: the inputs, the overlap, the checkpoint, and every output path
    (never an input, never a file domainmona did not write). A killed run leaves no partial file; rerun it.
    ``runtime`` onnx runs ``onnx_model`` (exported from the checkpoint) in onnxruntime instead of torch.
    """
    import nibabel as nib

    inputs = [Path(p) for p in inputs]
    if not 0 <= overlap < 1:  # NaN fails this too
        raise UserError(f"--overlap {overlap}: must be in [0, 1)")
    originals = [check_volume(p) for p in inputs]
    names = [_output_name(p) for p in inputs]
    if len(set(names)) != len(names):
        raise UserError("two inputs share a file name; their predictions would overwrite each other")
    out_dir = Path(out_dir)
    targets = [out_dir / name for name in names]
    previews = [out_dir / f"{name[:-len('.nii.gz')]}.png" for name in names]
    read = [*inputs, Path(checkpoint_path), *([Path(onnx_model)] if onnx_model else [])]
    for path in targets + previews:
        claim_file(path, read, is_ours=written_by_predict)
    claim_file(out_dir / LABEL_NAMES_FILE, read)
    checkpoint = load_checkpoint(checkpoint_path)
    settings = checkpoint["settings"]
    network = runtime_network(runtime, None if onnx_model is None else Path(onnx_model), Path(checkpoint_path), CT)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and network is None else "cpu"))
    model = network or model_from_checkpoint(checkpoint, device, checkpoint_path)
    chain = transforms.inference(settings["preprocess"])
    invert = transforms.inverse_to_original(chain)
    claim_dir(out_dir, COMMAND)
    with progress() as bar, torch.no_grad():
        task = bar.add_task("segment", total=len(inputs))
        for path, original, target, preview in zip(inputs, originals, targets, previews):
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
            label_map.header["descrip"] = DESCRIP
            with atomic_path(target) as tmp:  # the temp name keeps .nii.gz, so nibabel writes gzip
                nib.save(label_map, tmp)
            write_overlay(image[0].numpy(), labels[0].numpy(), preview)
            bar.advance(task)
    write_json(out_dir / LABEL_NAMES_FILE, checkpoint["label_names"])
    return targets
