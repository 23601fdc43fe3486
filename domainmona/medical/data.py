"""Find CT cases (MSD task folder, BTCV-style datalist JSON, or image/label folders) and check them early.

Checks read NIfTI headers, file lengths and the label maps' values, so a bad file among hundreds is reported
by name before any training: a truncated file, a 2-D or 4-D volume, an image given as labels.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainmona.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PAIR_FOLDERS = (("imagesTr", "labelsTr"), ("images", "labels"))
AFFINE_ATOL = 1e-3  # mm: image and label grids must agree to well below a voxel
MAX_LABEL = 255  # label maps hold class indices (predict writes uint8); a CT image holds thousands of values
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)  # what nibabel/gzip raise on damaged data


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
    if _truncated(path, image):
        raise UserError(f"{path}: truncated (the file ends before its {'x'.join(map(str, shape))} voxels)")
    _check_affine(path, image.affine)
    return image


def _check_affine(path: Path, affine: np.ndarray) -> None:
    """A voxel-to-world affine that places voxels: finite, and not singular (every reorientation and
    resampling inverts it; MONAI fails deep inside its transforms on an all-zero one)."""
    if not np.isfinite(affine).all():
        raise UserError(f"{path}: its voxel-to-world affine holds NaN or infinite values; fix the header's "
                        "sform/qform")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(np.linalg.det(affine[:3, :3])) <= 1e-6 * max(float(np.prod(spacing)), 1e-300) or spacing.min() == 0:
        raise UserError(f"{path}: its voxel-to-world affine is singular (voxel sizes "
                        f"{', '.join(f'{v:.3g}' for v in spacing)} mm); fix the header's sform/qform")


def _truncated(path: Path, image) -> bool:
    """Whether the file holds fewer bytes than its header promises, read without decompressing in the usual
    case: a single-member gzip (what nibabel writes) states its uncompressed length in its last 4 bytes."""
    needed = int(image.dataobj.offset) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
    if not path.name.endswith(".gz"):
        return path.stat().st_size < needed
    with path.open("rb") as f:
        f.seek(-4, os.SEEK_END)
        if int.from_bytes(f.read(4), "little") == needed % 2**32:
            return False
    total = 0  # several gzip members, trailing bytes, or damage: count what decompresses
    try:
        with gzip.open(path, "rb") as f:
            while total < needed and (chunk := f.read(1 << 22)):
                total += len(chunk)
    except READ_ERRORS:
        return True
    return total < needed


def read_labels(path: str | Path) -> np.ndarray:
    """The voxels of a label map as uint8 class indices; refused in one line when they are not class indices
    (non-integer, negative, NaN, or more than `MAX_LABEL`: most likely an image given as labels)."""
    image = check_volume(path)
    try:
        data = np.asanyarray(image.dataobj)
    except READ_ERRORS as exc:
        raise UserError(f"{path}: cannot read its voxels ({type(exc).__name__})") from None
    which = f"labels must be class indices 0..{MAX_LABEL}"
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise UserError(f"{path}: a label map with NaN/inf values; {which}")
        if (data != np.round(data)).any():
            raise UserError(f"{path}: non-integer values (an image, not a label map?); {which}")
    elif data.dtype.kind not in "iub":
        raise UserError(f"{path}: {data.dtype} voxels are not class indices; {which}")
    low, high = data.min(), data.max()
    if low < 0 or high > MAX_LABEL:
        raise UserError(f"{path}: values {low:g}..{high:g} (an image, not a label map?); {which}")
    return data.astype(np.uint8)


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON datalist ({type(exc).__name__})") from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list) or not content["training"]:
        raise UserError(f"{path}: a datalist needs a non-empty 'training' list of image/label entries")
    for key in ("training", "validation"):
        entries = content.get(key, [])
        if not isinstance(entries, list):
            raise UserError(f"{path}: '{key}' must be a list of image/label entries")
        for i, item in enumerate(entries):
            if not (isinstance(item, dict) and isinstance(item.get("image"), str)
                    and isinstance(item.get("label"), str)):
                raise UserError(f"{path}: entry {i} of '{key}' needs both 'image' and 'label' file names")
    lists = [load_decathlon_datalist(path, True, key) if content.get(key) else []
             for key in ("training", "validation")]
    return lists[0], lists[1], _named_classes(path, content.get("labels", {}))


def _named_classes(path: Path, labels: object) -> dict[int, str]:
    """The datalist's `labels` mapping ({"0": "background", "1": "spleen"}) with integer keys."""
    if not isinstance(labels, dict) or not all(str(k).isdigit() and int(k) <= MAX_LABEL for k in labels):
        raise UserError(f"{path}: 'labels' must map class indices 0..{MAX_LABEL} to names")
    return {int(k): str(v) for k, v in labels.items()}


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


def _check_label_values(cases: list[dict], names: dict[int, str]) -> dict[int, str]:
    """Read every label map once: each must hold class indices, within the named classes when there are
    names; without names, the classes are those present."""
    top = 0
    for case in cases:
        high = int(read_labels(case["label"]).max())
        if names and high > max(names):
            raise UserError(f"{case['label']}: holds class {high}, beyond the dataset's classes 0..{max(names)}")
        top = max(top, high)
    return names or {0: "background", **{i: f"class_{i}" for i in range(1, top + 1)}}


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
        if shots < 1:
            raise UserError(f"--shots {shots}: must be at least 1")
        if shots > len(training):
            raise UserError(f"--shots {shots}: only {len(training)} labelled training cases available")
        training = training[:shots]
    validation = validation[:val_max]
    for case in training + validation:
        check_pair(case["image"], case["label"])
    names = _check_label_values(training + validation, names)
    if len(names) < 2:
        raise UserError(f"{data}: labels name no foreground class")
    return Split(training, validation, names)
