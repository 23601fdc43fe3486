"""K-shot training subsets of split patches for `train dota|star --shots K` (the rule: domainmona.tiling).

The sampler picks patches and, per patch, the classes it labels; a picked patch's annfile is rewritten with
the object lines of those classes only (the others left out, as in TFA's few-shot splits).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from domainmona.errors import UserError
from domainmona.io import atomic_dir
from domainmona.tiling import select_shots as select_objects


def _object_lines(path: Path) -> list[tuple[str, str]]:
    """(line, class) of every object line (mmrotate's annfile format: 8 coordinates, class, difficulty)."""
    return [(line, tokens[8]) for line in path.read_text().splitlines() if len(tokens := line.split()) >= 10]


def select_shots(subsets: list[tuple[Path, Path]], shots: int, out_dir: Path,
                 seed: int = 0) -> tuple[list[tuple[Path, Path]], Counter]:
    """Write K-shot annfile folders under `out_dir` for (images, annfiles) pairs; return the new pairs
    (same image folders) and the per-class object counts of the subset."""
    if shots < 1:
        raise UserError(f"--shots must be at least 1, got {shots}")
    patches = [(i, path, _object_lines(path)) for i, (_, ann) in enumerate(subsets)
               for path in sorted(ann.glob('*.txt'))]
    selection = select_objects([Counter(cls for _, cls in lines) for _, _, lines in patches], shots, seed)
    if not selection.totals:
        raise UserError(f"{subsets[0][1]}: no labelled objects to draw {shots}-shot subsets from")
    new_subsets = []
    for index, (images, _) in enumerate(subsets):
        chosen = [p for p in selection.chosen if patches[p][0] == index]
        if not chosen:
            continue
        final = out_dir / f'subset{index}' / 'annfiles'
        with atomic_dir(final, 'few-shot subset') as tmp:
            for p in chosen:
                _, path, lines = patches[p]
                kept = "".join(f"{line}\n" for line, cls in lines if cls in selection.labelled[p])
                (tmp / path.name).write_text(kept, encoding="utf-8")
        new_subsets.append((images, final))
    return new_subsets, selection.totals
