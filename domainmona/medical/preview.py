"""PNG preview: a few axial slices of the preprocessed (RAS) CT with the predicted labels over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domainmona.io import PRODUCER, atomic_path

SOFTWARE = f"{PRODUCER} segment-ct"  # the PNG's Software text: how a rerun knows the file is its own


def pick_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Axial (last-axis) indices spread through the labelled range, or through the volume if nothing is labelled."""
    labelled = np.flatnonzero(labels.reshape(-1, labels.shape[-1]).any(0))
    low, high = (labelled[0], labelled[-1]) if labelled.size else (0, labels.shape[-1] - 1)
    return sorted({int(round(i)) for i in np.linspace(low, high, count + 2)[1:-1]})


def write_overlay(image: np.ndarray, labels: np.ndarray, target: str | Path, count: int = 3) -> Path:
    """`image` is intensity in 0..1 and `labels` integer classes, both (R, A, S) voxel arrays."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    slices = pick_slices(labels, count)
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.4), squeeze=False)
    for ax, index in zip(axes[0], slices):
        # rot90 of an (R, A) slice: anterior up, the patient's right on the viewer's right (neurological view)
        ax.imshow(np.rot90(image[..., index]), cmap="gray", vmin=0, vmax=1)
        overlay = np.ma.masked_equal(np.rot90(labels[..., index]), 0)
        ax.imshow(overlay, cmap="tab10", alpha=0.45, vmin=0, vmax=9, interpolation="nearest")
        ax.set_title(f"axial {index}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=80, metadata={"Software": SOFTWARE})
    plt.close(fig)
    return Path(target)
