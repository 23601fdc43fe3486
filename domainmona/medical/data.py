"""Find CT cases (MSD task folder, BTCV-style datalist JSON, or image/label folders) and check them early.

Checks read NIfTI headers only, so a bad file among hundreds is reported by name before any training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainmona.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PAIR_FOLDERS = (("imagesTr", "labelsTr"), ("images", "labels"))
AFFINE_ATOL = 1e-3  # mm: image and label grids must agree to well below a voxel


@dataclass
class Split:
    """Training and validation cases as MONAI dicts ({"image": path, "label": path})."""

    train: list[dict]
    val: list[dict]
    label_names: dict[int, str]

    @property
    def num_classes(self) -> int:
        return max(self.label_names) + 1


def is_nifti(path: str | Path) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def check_volume(path: str | Path):
    """Return the nibabel image of a 3-D NIfTI file, or raise a one-line UserError naming it."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if not is_nifti(path):
        raise UserError(f"{path}: not a NIfTI file (expected {' or '.join(NIFTI_SUFFIXES)})")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises several types for corrupt or foreign files
        raise UserError(f"{path}: cannot be read as NIfTI ({exc})") from None
    shape = image.shape
    if len(shape) != 3 or min(shape) < 2:
        raise UserError(f"{path}: expected a 3-D volume, got shape {tuple(shape)}")
    return image


def check_pair(image_path: str | Path, label_path: str | Path) -> None:
    """An image and its label must share shape and voxel→world affine."""
    image, label = check_volume(image_path), check_volume(label_path)
    if image.shape != label.shape:
        raise UserError(f"{label_path}: label shape {label.shape} differs from image shape {image.shape}")
    if not np.allclose(image.affine, label.affine, atol=AFFINE_ATOL):
        raise UserError(f"{label_path}: label affine differs from the image's ({image_path})")


def _from_datalist(path: Path) -> tuple[list[dict], list[dict], dict[int, str]]:
    from monai.data import load_decathlon_datalist

    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON datalist ({exc})") from None
    if not isinstance(content, dict) or not content.get("training"):
        raise UserError(f"{path}: a datalist needs a non-empty 'training' list of image/label entries")
    for key in ("training", "validation"):
        for i, item in enumerate(content.get(key, [])):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise UserError(f"{path}: entry {i} of '{key}' needs both 'image' and 'label'")
    lists = [load_decathlon_datalist(path, True, key) if content.get(key) else []
             for key in ("training", "validation")]
    names = {int(k): str(v) for k, v in content.get("labels", {}).items()}
    return lists[0], lists[1], names


def _from_folders(folder: Path) -> list[dict]:
    for images_name, labels_name in PAIR_FOLDERS:
        images, labels = folder / images_name, folder / labels_name
        if images.is_dir():
            break
    else:
        raise UserError(f"{folder}: expected dataset.json, or image/label folders "
                        f"({', '.join('/'.join(p) for p in PAIR_FOLDERS)})")
    cases = []
    for image in sorted(p for p in images.iterdir() if is_nifti(p) and not p.name.startswith(".")):
        label = labels / image.name
        if not label.is_file():
            raise UserError(f"{image}: missing label {label}")
        cases.append({"image": str(image), "label": str(label)})
    if not cases:
        raise UserError(f"{images}: no NIfTI images")
    return cases


def _scan_label_names(cases: list[dict]) -> dict[int, str]:
    """Classes present in the labels, when the dataset does not name them."""
    import nibabel as nib

    top = max(int(np.asarray(nib.load(c["label"]).dataobj).max()) for c in cases)
    return {0: "background", **{i: f"class_{i}" for i in range(1, top + 1)}}


def load_split(data: str | Path, shots: int | None = None, val_max: int = 5) -> Split:
    """Cases for training: the first `shots` labelled cases, validation from the datalist or held out."""
    data = Path(data)
    if data.is_file():
        training, validation, names = _from_datalist(data)
    elif (data / "dataset.json").is_file():
        training, validation, names = _from_datalist(data / "dataset.json")
    elif data.is_dir():
        training, validation, names = _from_folders(data), [], {}
    else:
        raise UserError(f"{data}: no such dataset folder or datalist file")
    if not validation:
        held_out = max(1, len(training) // 5) if len(training) >= 2 else 0
        training, validation = training[:len(training) - held_out], training[len(training) - held_out:]
    if shots is not None:
        if not 1 <= shots <= len(training):
            raise UserError(f"--shots {shots}: only {len(training)} labelled training cases available")
        training = training[:shots]
    validation = validation[:val_max]
    for case in training + validation:
        check_pair(case["image"], case["label"])
    names = names or _scan_label_names(training)
    if len(names) < 2:
        raise UserError(f"{data}: labels name no foreground class")
    return Split(training, validation, names)
