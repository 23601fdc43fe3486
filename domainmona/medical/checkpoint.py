"""segment-ct checkpoints: one `.pt` holding weights, optimizer state and the settings that rebuild the model.

Only tensors and plain containers are stored, so they load with `torch.load(weights_only=True)` (no code
runs from a user's file). The `format` tag tells a segment-ct checkpoint from another model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from domainmona.errors import UserError
from domainmona.io import atomic_path

FORMAT = "domainmona.segment-ct/1"


def save_checkpoint(path: str | Path, **content: Any) -> Path:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **content}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a checkpoint written by `segment-ct train`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors, or objects weights_only refuses to build
        raise UserError(f"{path}: not a loadable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format", "no format tag") if isinstance(content, dict) else type(content).__name__
        raise UserError(f"{path}: not a segment-ct checkpoint ({found}); train one with 'domainmona segment-ct train'")
    return content
