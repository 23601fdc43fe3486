"""What every benchmark does with its results: name the machine, write the markdown file whole or not at all."""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
from collections.abc import Callable, Hashable
from pathlib import Path

from domainmona.io import atomic_path


def machine() -> str:
    return f"{os.cpu_count()}-core {platform.processor() or platform.machine()} CPU"


class Journal:
    """Finished runs of a study, one JSON line each, appended as they finish: a study stopped midway (Ctrl-C, a
    session's end) resumes with the runs it has, those of the same budget (`budget`) only; `key(run)` names a
    run's cell and seed, so that the study skips what is in `keys`."""

    def __init__(self, path: Path, budget: dict, key: Callable[[dict], Hashable]):
        self.path, self.budget, self.lock = path, budget, threading.Lock()
        lines = path.read_text().splitlines() if path.exists() else []
        self.done = [run for run in map(json.loads, lines) if run.get("budget") == budget]
        self.keys = {key(run) for run in self.done}

    def add(self, runs: list[dict]) -> list[dict]:
        with self.lock, self.path.open("a") as stream:
            for run in runs:
                stream.write(json.dumps({**run, "budget": self.budget}) + "\n")
        return runs


def write_markdown(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def study_arguments(parser: argparse.ArgumentParser,
                    render: Callable[[Path, dict], None]) -> argparse.Namespace | None:
    """The command line of a seeded study, with the options every study takes (--seeds, --threads, --from-json);
    with --from-json, the saved run is re-rendered by `render(stem, saved)` and None returned."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--from-json", type=Path, help="only re-render the report of a saved run")
    args = parser.parse_args()
    if args.from_json:
        render(args.from_json.with_suffix(""), json.loads(args.from_json.read_text()))
        return None
    return args
