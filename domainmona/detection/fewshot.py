"""K-shot training subsets of split patches, seeded, for few-shot studies.

Patches are visited in a seeded random order and kept while they contain a class that still has fewer
than K instances; a kept patch keeps all its labels, since dropping some objects of a patch would teach
the detector that they are background. Every class present in the data thus gets at least K instances
(more for classes that co-occur with rarer ones); the counts are returned so they can be reported.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

from domainmona.errors import UserError
from domainmona.io import atomic_dir


def _label_classes(path: Path) -> list[str]:
    """Class of every object line (mmrotate's annfile format: 8 coordinates, class, difficulty)."""
    return [tokens[8] for tokens in (line.split() for line in path.read_text().splitlines()) if len(tokens) >= 10]


def select_shots(subsets: list[tuple[Path, Path]], shots: int, out_dir: Path,
                 seed: int = 0) -> tuple[list[tuple[Path, Path]], Counter]:
    """Write K-shot annfile folders under `out_dir` for (images, annfiles) pairs; return the new pairs
    (same image folders) and the per-class instance counts of the subset."""
    if shots < 1:
        raise UserError(f"--shots must be at least 1, got {shots}")
    candidates = [(i, path, _label_classes(path)) for i, (_, ann) in enumerate(subsets)
                  for path in sorted(ann.glob('*.txt'))]
    random.Random(seed).shuffle(candidates)
    counts: Counter = Counter()
    chosen: dict[int, list[Path]] = {i: [] for i in range(len(subsets))}
    for index, path, classes in candidates:
        if any(counts[c] < shots for c in classes):
            chosen[index].append(path)
            counts.update(classes)
    if not counts:
        raise UserError(f"{subsets[0][1]}: no labelled objects to draw {shots}-shot subsets from")
    new_subsets = []
    for index, (images, _) in enumerate(subsets):
        if not chosen[index]:
            continue
        final = out_dir / f'subset{index}' / 'annfiles'
        with atomic_dir(final, 'few-shot subset') as tmp:
            for path in chosen[index]:
                shutil.copy2(path, tmp / path.name)
        new_subsets.append((images, final))
    return new_subsets, counts
