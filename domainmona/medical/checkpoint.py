"""segment-ct checkpoints: one `.pt` holding weights, optimizer state and the settings that rebuild the model.

Only tensors and plain containers are stored, so they load through `domainmona.io.load_torch`
(`weights_only=True`, nothing allowed beyond torch's own safe types: no code runs from a user's file). The
`format` tag tells a segment-ct checkpoint from another model's; its settings pass the same checks as a
training run's, so a hand-edited file cannot smuggle in values training would have refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from domainmona.errors import UserError
from domainmona.io import atomic_path, load_torch

FORMAT = "domainmona.segment-ct/1"
REQUIRED = ("model", "settings", "num_classes", "label_names")  # what predict and resume read


def save_checkpoint(path: str | Path, **content: Any) -> Path:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **content}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a checkpoint written by `segment-ct train`."""
    from domainmona.medical.settings import check_settings, decoder_mode, fill_missing

    path = Path(path)
    if path.suffix == ".safetensors":
        raise UserError(f"{path}: a safetensors file (an adapter-only file?); segment-ct needs the best.pt or "
                        "last.pt that 'segment-ct train' wrote")
    content = load_torch(path, what="checkpoint")
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format", "no format tag") if isinstance(content, dict) else type(content).__name__
        raise UserError(f"{path}: not a segment-ct checkpoint ({found}); train one with 'domainmona segment-ct train'")
    missing = [key for key in REQUIRED if key not in content]
    if missing:
        raise UserError(f"{path}: segment-ct checkpoint without {', '.join(missing)}")
    if not isinstance(content["num_classes"], int) or content["num_classes"] < 2:
        raise UserError(f"{path}: num_classes {content['num_classes']!r} is not a class count")
    for key in ("model", "label_names"):
        if not isinstance(content[key], dict):
            raise UserError(f"{path}: '{key}' must be a mapping, not {type(content[key]).__name__}")
    try:
        check_settings(fill_missing(content["settings"]))
    except UserError as exc:
        raise UserError(f"{path}: its settings are invalid ({exc})") from None
    model = content["settings"]["model"]
    model["decoder"] = decoder_mode(model, None)  # null: saved before --decoder existed, its decoder trained whole
    return content


def load_state(path: str | Path, checkpoint: dict[str, Any], **targets: Any) -> None:
    """`target.load_state_dict(checkpoint[name])` for each named target (model, optimizer, ...); a state that
    does not fit is a one-line error naming the file, not a traceback."""
    for name, target in targets.items():
        try:
            target.load_state_dict(checkpoint[name])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()
            reason = (first[1] if len(first) > 1 else first[0]).strip() if first else type(exc).__name__
            raise UserError(f"{path}: its {name} state does not fit the model it describes ({reason})") from None
