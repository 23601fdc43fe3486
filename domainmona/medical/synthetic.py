"""Small synthetic CT-like volumes with organ labels, for tests and `segment-ct demo` (real CT cannot ship).

Each case is a body (soft tissue inside a fat ring, air outside) holding a vertebra-like bone cylinder
(unlabelled distractor) and organ ellipsoids with distinct, realistic HU. Volumes are stored with an
oblique, non-RAS affine and anisotropic voxels so that every run exercises reorientation, resampling and
the inversion back to scanner geometry.

Two tasks for transfer: the *source* organs (`ORGANS`: liver, spleen, kidney; `write_dataset`), on which the
shipped CT networks are pretrained (`domainmona.medical.pretrain_source`), and a *target* organ absent from
them (`TARGET_ORGAN`, a pancreas-like lobulated tube; `write_target_dataset`), to adapt those networks to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


# The source organs, placed in voxel axes of the stored array; the oblique affine makes them oblique in the world.
ORGANS = (
    Organ("liver", 70.0, (0.35, 0.42, 0.5), (0.17, 0.15, 0.22)),
    Organ("spleen", 130.0, (0.68, 0.40, 0.5), (0.12, 0.12, 0.20)),
    Organ("kidney", 210.0, (0.60, 0.66, 0.42), (0.10, 0.11, 0.16)),
)
LABEL_NAMES = {"0": "background", **{str(i): o.name for i, o in enumerate(ORGANS, start=1)}}


@dataclass(frozen=True)
class TubeOrgan:
    """An organ along a quadratic Bezier curve (`path`: head, control point, tail), drawn as a chain of `lobes`
    overlapping ellipsoids of `radii` at the head narrowing to `taper` x `radii` at the tail, each lobe at its own
    HU within `hu` +- `lobulation`. Shape (long, thin, curved) and intensity (lobulated, between liver and spleen)
    are both new to a network pretrained on the uniform source ellipsoids: it has edges and HU to reuse, and a
    new organ to learn."""

    name: str
    hu: float
    lobulation: float
    path: tuple[tuple[float, float, float], ...]  # fractions of the volume extent per voxel axis
    radii: tuple[float, float, float]
    taper: float
    lobes: int


# Behind liver and spleen, over the kidney, as a pancreas lies; drawn over the source organs where they touch.
TARGET_ORGAN = TubeOrgan("pancreas", 100.0, 20.0, ((0.30, 0.64, 0.56), (0.50, 0.50, 0.56), (0.76, 0.56, 0.62)),
                         (0.07, 0.06, 0.10), 0.6, 8)
TARGET_LABEL_NAMES = {"0": "background", "1": TARGET_ORGAN.name}


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


def make_target_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (HU int16 image, uint8 label) pair of the target task: a source case (its organs left unlabelled, as a
    new task labels only its own organ) with the target organ, jittered in place, curve and size, labelled 1."""
    image, _ = make_case(rng, shape)
    organ, extent = TARGET_ORGAN, np.array(shape, dtype=float)
    head, control, tail = (np.array(point) for point in organ.path)
    shift = rng.normal(0, 0.02, 3)
    control = control + rng.normal(0, 0.03, 3)
    radii = np.array(organ.radii) * rng.uniform(0.85, 1.15, 3) * extent
    grid = np.indices(shape, dtype=float)
    label = np.zeros(shape, dtype=np.uint8)
    for t, hu in zip(np.linspace(0, 1, organ.lobes), organ.hu + organ.lobulation * rng.uniform(-1, 1, organ.lobes)):
        centre = ((1 - t) ** 2 * head + 2 * t * (1 - t) * control + t**2 * tail + shift) * extent
        inside = _ellipsoid(grid, centre, np.maximum(radii * (1 - (1 - organ.taper) * t), 1.5))
        image[inside] = hu + rng.normal(0, NOISE_HU, int(inside.sum()))
        label[inside] = 1
    return np.clip(image, -1024, 3071).astype(np.int16), label


def write_dataset(out_dir: str | Path, cases: int = 4, shape: tuple[int, int, int] = (64, 64, 40),
                  spacing: tuple[float, float, float] = (1.2, 1.2, 2.5), seed: int = 0) -> Path:
    """Write the source organs' MSD-layout task (imagesTr/, labelsTr/, dataset.json) atomically; return its
    folder."""
    return _write_task(out_dir, cases, shape, spacing, seed, make_case, LABEL_NAMES, "SyntheticAbdomen")


def write_target_dataset(out_dir: str | Path, cases: int = 5, shape: tuple[int, int, int] = (64, 64, 40),
                         spacing: tuple[float, float, float] = (1.2, 1.2, 2.5), seed: int = 0) -> Path:
    """Write the target organ's task (`make_target_case`), laid out as `write_dataset`'s; the same seed gives
    the same files."""
    return _write_task(out_dir, cases, shape, spacing, seed, make_target_case, TARGET_LABEL_NAMES,
                       "SyntheticPancreas")


def _write_task(out_dir: str | Path, cases: int, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                seed: int, make: Callable[[np.random.Generator, tuple[int, int, int]], tuple[np.ndarray, np.ndarray]],
                label_names: dict[str, str], task: str) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, "segment-ct demo data") as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        training = []
        for i in range(cases):
            image, label = make(rng, shape)
            affine = oblique_affine(rng, spacing)
            name = f"case_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTr" / name)
            nib.save(nib.Nifti1Image(label, affine), tmp / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        description = {"name": task, "description": "domainmona synthetic CT-like volumes",
                       "modality": {"0": "CT"}, "labels": label_names, "numTraining": cases,
                       "training": training, "test": []}
        (tmp / "dataset.json").write_text(json.dumps(description, indent=2))
    return out_dir
