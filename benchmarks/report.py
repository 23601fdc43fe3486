"""What every benchmark does with its results: name the machine, write the markdown file whole or not at all."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from domainmona.io import atomic_path


def machine() -> str:
    return f"{os.cpu_count()}-core {platform.processor() or platform.machine()} CPU"


def write_markdown(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
