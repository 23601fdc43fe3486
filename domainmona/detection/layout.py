"""Recognise what a `--data` folder holds: raw DOTA/STAR scenes, or patches already split.

raw:   `images/` + `labelTxt/` (or `train/`, `val/` folders each holding them), as DOTA/STAR downloads.
split: `images/` + `annfiles/` (or `trainval/`, `train/`, `val/` holding them), as `domainmona split` writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from domainmona.errors import UserError

SUBSETS = ('.', 'trainval', 'train', 'val')


@dataclass
class DataLayout:
    kind: str  # 'raw' or 'split'
    dirs: list[Path]  # each holds images/ and labelTxt/ (raw) or annfiles/ (split)


def _has(folder: Path, labels: str) -> bool:
    return (folder / 'images').is_dir() and (folder / labels).is_dir()


def find_layout(data: Path) -> DataLayout:
    """The subsets of `data` to train on; split patches win over raw scenes when both exist."""
    if not data.is_dir():
        raise UserError(f"{data}: no such data folder")
    for kind, labels in (('split', 'annfiles'), ('raw', 'labelTxt')):
        dirs = [(data / s).resolve() for s in SUBSETS if _has(data / s, labels)]
        if 'trainval' in {d.name for d in dirs}:  # trainval already holds train and val
            dirs = [d for d in dirs if d.name == 'trainval']
        if dirs:
            return DataLayout(kind, dirs)
    raise UserError(f"{data}: expected images/ with labelTxt/ (raw scenes) or annfiles/ (split patches), "
                    f"directly or under train/, val/ or trainval/")


def find_test_scenes(data: Path) -> tuple[Path, Path | None]:
    """The folder of full scenes to test on (`data`, or `data/test|val`, holding images/) and its
    `labelTxt/` folder if present."""
    for sub in ('.', 'test', 'val'):
        folder = data / sub
        if (folder / 'images').is_dir():
            labels = folder / 'labelTxt'
            return folder.resolve(), labels.resolve() if labels.is_dir() else None
    raise UserError(f"{data}: expected an images/ folder (optionally with labelTxt/), directly or under test/ or val/")


def refuse_overlap(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """No output may be, hold or lie inside an input of the same command."""
    inputs = [(item, item.resolve()) for item in inputs]
    for output in outputs:
        target = output.resolve()
        for item, source in inputs:
            if target.is_relative_to(source) or source.is_relative_to(target):
                raise UserError(f"output {output} overlaps {item}, an input of this command; choose another folder")
