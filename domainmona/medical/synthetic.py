"""Small synthetic CT-like volumes with organ labels, for tests and `segment-ct demo` (real CT cannot ship).

Each case is a body (soft tissue inside a fat ring, air outside) holding a vertebra-like bone cylinder
(unlabelled distractor) and organ ellipsoids with distinct, realistic HU. Volumes are stored with an
oblique, non-RAS affine and anisotropic voxels so that every run exercises reorientation, resampling and
the inversion back to scanner geometry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainmona.io import atomic_dir

AIR_HU, FAT_HU, TISSUE_HU, BONE_HU = -1000.0, -100.0, 25.0, 500.0
NOISE_HU = 15.0


@dataclass(frozen=True)
class Organ:
    name: str
    hu: float
    centre: tuple[float, float, float]  # fraction of the volume extent per voxel axis
    radii: tuple[float, float, float]  # fraction of the volume extent per voxel axis


# Placed in voxel axes of the stored array; the oblique affine makes them oblique in the world.
ORGANS = (
    Organ("liver", 70.0, (0.35, 0.42, 0.5), (0.17, 0.15, 0.22)),
    Organ("spleen", 130.0, (0.68, 0.40, 0.5), (0.12, 0.12, 0.20)),
    Organ("kidney", 210.0, (0.60, 0.66, 0.42), (0.10, 0.11, 0.16)),
)
LABEL_NAMES = {"0": "background", **{str(i): o.name for i, o in enumerate(ORGANS, start=1)}}


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix about a unit axis."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def oblique_affine(rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """A voxel→world (RAS mm) affine: LPS-like axis flips, a 10–25° oblique tilt, anisotropic spacing."""
    flips = np.diag([-1.0, -1.0, 1.0])  # stored as L,P,S: not RAS, so Orientationd must act
    tilt = _rotation(rng.normal(size=3), np.deg2rad(rng.uniform(10, 25)))
    affine = np.eye(4)
    affine[:3, :3] = tilt @ flips @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-150, 150, size=3)
    return affine


def make_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (HU int16 image, uint8 label) pair with jittered organ positions and sizes."""
    extent = np.array(shape, dtype=float)
    grid = np.indices(shape, dtype=float)
    body_centre = extent / 2 + rng.normal(0, 0.02, 3) * extent
    body_radii = np.array([0.44, 0.40, 0.60]) * extent
    image = np.full(shape, AIR_HU)
    image[_ellipsoid(grid, body_centre, body_radii)] = FAT_HU
    image[_ellipsoid(grid, body_centre, body_radii - 2.0)] = TISSUE_HU
    spine_centre = np.array([0.5, 0.78, 0.5]) * extent
    image[_ellipsoid(grid, spine_centre, np.array([0.07, 0.07, 10.0]) * extent)] = BONE_HU
    label = np.zeros(shape, dtype=np.uint8)
    for index, organ in enumerate(ORGANS, start=1):
        centre = (np.array(organ.centre) + rng.normal(0, 0.02, 3)) * extent
        radii = np.array(organ.radii) * rng.uniform(0.85, 1.15, 3) * extent
        inside = _ellipsoid(grid, centre, np.maximum(radii, 1.5))
        image[inside] = organ.hu
        label[inside] = index
    image += rng.normal(0, NOISE_HU, shape)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def write_dataset(out_dir: str | Path, cases: int = 4, shape: tuple[int, int, int] = (64, 64, 40),
                  spacing: tuple[float, float, float] = (1.2, 1.2, 2.5), seed: int = 0) -> Path:
    """Write an MSD-layout task (imagesTr/, labelsTr/, dataset.json) atomically; return its folder."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, "segment-ct demo data") as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        training = []
        for i in range(cases):
            image, label = make_case(rng, shape)
            affine = oblique_affine(rng, spacing)
            name = f"case_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTr" / name)
            nib.save(nib.Nifti1Image(label, affine), tmp / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        description = {"name": "SyntheticAbdomen", "description": "domainmona synthetic CT-like volumes",
                       "modality": {"0": "CT"}, "labels": LABEL_NAMES, "numTraining": cases,
                       "training": training, "test": []}
        (tmp / "dataset.json").write_text(json.dumps(description, indent=2))
    return out_dir
