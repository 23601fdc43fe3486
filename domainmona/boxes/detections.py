"""Rotated detections of one patch or image, as numpy arrays (no torch, no mmcv)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from domainmona.boxes.geometry import poly_to_obb
from domainmona.errors import UserError


@dataclass
class Detections:
    """Rotated detections of one patch or image: le90 `boxes` (N, 5), `scores` (N,), class `labels` (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, boxes, scores, labels) -> "Detections":
        """Accept le90 boxes (N, 5) or polygons (N, 8) / (N, 4, 2), as numpy arrays or CPU tensors."""
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim == 2 and boxes.shape[1] == 5:
            obbs = boxes.copy()
        elif boxes.size == 0:
            obbs = np.zeros((0, 5))
        else:
            obbs = poly_to_obb(boxes.reshape(-1, 8))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not len(obbs) == len(scores) == len(labels):
            raise UserError(f"detections disagree in length: {len(obbs)} boxes, {len(scores)} scores, "
                            f"{len(labels)} labels")
        return cls(obbs, scores, labels)

    def __len__(self) -> int:
        return len(self.scores)
