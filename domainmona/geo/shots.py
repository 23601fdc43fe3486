"""Seeded K-shot chip subsets: at most K labelled objects per class, every object of a kept chip labelled.

Dropping objects from a kept chip would teach the model that they are background, so whole chips are
chosen (as in TFA's few-shot COCO splits): chips are visited in a seeded order and taken while they add a
needed class without pushing any class past K.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def select_shots(chip_counts: Sequence[Counter], classes: Sequence[str], shots: int,
                 seed: int) -> tuple[list[int], Counter]:
    """Indices of the chips forming the subset (in chip order) and the per-class object counts reached."""
    order = np.random.default_rng(seed).permutation(len(chip_counts))
    totals: Counter = Counter()
    chosen = []
    for index in order:
        counts = chip_counts[index]
        adds_needed = any(totals[c] < shots for c in counts)
        if adds_needed and all(totals[c] + n <= shots for c, n in counts.items()):
            chosen.append(int(index))
            totals.update(counts)
        if all(totals[c] >= shots for c in classes):
            break
    return sorted(chosen), totals
