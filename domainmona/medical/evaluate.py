"""Per-class Dice and HD95 (mm) of predicted label maps against ground truth, with MONAI's metrics.

A class absent from both prediction and ground truth of a case is left out of that class's mean (Dice
and HD95 are undefined there); a false positive on an empty ground truth counts as Dice 0.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainmona.errors import UserError
from domainmona.io import same_file
from domainmona.medical.data import AFFINE_ATOL, check_volume, is_nifti, read_labels

LABEL_NAMES_FILE = "labels.json"  # written by `predict` beside the label maps


@dataclass
class Evaluation:
    names: dict[int, str]
    unmatched: list[str] = field(default_factory=list)  # predictions without a ground truth
    per_case: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)  # case → class → (dice, hd95)

    def mean(self, index: int, metric: int) -> float:
        values = [case[index][metric] for case in self.per_case.values()]
        finite = [v for v in values if not math.isnan(v)]
        return float(np.mean(finite)) if finite else math.nan

    @property
    def mean_dice(self) -> float:
        return float(np.nanmean([self.mean(i, 0) for i in self.names]))

    def to_json(self) -> dict:
        def clean(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "mean_dice": clean(self.mean_dice),
            "classes": {self.names[i]: {"index": i, "dice": clean(self.mean(i, 0)), "hd95_mm": clean(self.mean(i, 1))}
                        for i in self.names},
            "cases": {case: {self.names[i]: {"dice": clean(d), "hd95_mm": clean(h)} for i, (d, h) in scores.items()}
                      for case, scores in self.per_case.items()},
        }


def score_case(pred: np.ndarray, gt: np.ndarray, classes: list[int], spacing) -> dict[int, tuple[float, float]]:
    """Dice and 95th-percentile symmetric Hausdorff distance (in the units of `spacing`) per class."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    num_classes = max(classes) + 1
    y_pred = torch.as_tensor(pred.astype(np.int64))[None, None]
    y = torch.as_tensor(gt.astype(np.int64))[None, None]
    dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False, num_classes=num_classes)[0]
    with warnings.catch_warnings():  # empty masks are expected per class; they are handled below
        warnings.filterwarnings("ignore", message=".* is all 0", category=UserWarning)
        # MONAI 1.6 passes its own deprecated `always_return_as_numpy` internally: nothing for users to change.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd95 = compute_hausdorff_distance(one_hot(y_pred, num_classes), one_hot(y, num_classes),
                                          include_background=True, percentile=95, spacing=list(map(float, spacing)))[0]
    scores = {}
    for c in classes:
        both_empty = not (pred == c).any() and not (gt == c).any()
        scores[c] = (math.nan, math.nan) if both_empty else (float(dice[c]), float(hd95[c]))
    return scores


def _label_names(pred_dir: Path, top: int) -> dict[int, str]:
    """`class_i` names, replaced by those in predict's labels.json when it is there (its other keys, such as
    `producer`, are not classes)."""
    names = {i: f"class_{i}" for i in range(1, top + 1)}
    names_file = pred_dir / LABEL_NAMES_FILE
    if names_file.is_file():
        try:
            content = json.loads(names_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{names_file}: not a readable labels file ({type(exc).__name__})") from None
        if not isinstance(content, dict):
            raise UserError(f"{names_file}: must map class indices to names")
        names.update({int(k): str(v) for k, v in content.items() if k.isdigit() and int(k) in names})
    return names


def matched_files(pred_dir: str | Path, gt_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(predictions with a same-named ground truth, all predictions), refused when there is nothing to pair."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder")
    if same_file(pred_dir, gt_dir):
        raise UserError(f"--pred and --gt are the same folder ({pred_dir}): every score would be perfect")
    pred_files = sorted(p for p in pred_dir.iterdir() if is_nifti(p) and not p.name.startswith("."))
    matched = [p for p in pred_files if (gt_dir / p.name).is_file()]
    if not matched:
        raise UserError(f"{pred_dir}: no NIfTI prediction has a same-named ground truth in {gt_dir}")
    return matched, pred_files


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path) -> Evaluation:
    """Score the predictions that have a same-named ground truth, every foreground class. Both sides must
    be label maps (class indices): an image given instead is refused, never scored."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    matched, pred_files = matched_files(pred_dir, gt_dir)
    pairs = []
    for pred_file in matched:
        gt_file = gt_dir / pred_file.name
        gt, pred = check_volume(gt_file), check_volume(pred_file)
        if gt.shape != pred.shape or not np.allclose(gt.affine, pred.affine, atol=AFFINE_ATOL):
            raise UserError(f"{pred_file}: shape/affine differ from ground truth {gt_file} "
                            f"({pred.shape} vs {gt.shape})")
        pairs.append((pred_file.name, read_labels(pred_file), read_labels(gt_file), gt.header.get_zooms()[:3]))
    top = max(int(max(p.max(), g.max())) for _, p, g, _ in pairs)
    if top < 1:
        raise UserError(f"{gt_dir}: neither ground truth nor predictions contain a foreground label")
    evaluation = Evaluation(_label_names(pred_dir, top), unmatched=[p.name for p in pred_files if p not in matched])
    for name, pred, gt, spacing in pairs:
        evaluation.per_case[name] = score_case(pred, gt, list(evaluation.names), spacing)
    return evaluation
