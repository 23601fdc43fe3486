"""The segment-ct settings: `configs/monai/swinunetr_ct.yaml`, an optional user YAML over it, CLI flags last."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from domainmona.errors import UserError
from domainmona.recipes import CONFIGS_DIR

DEFAULTS_PATH = CONFIGS_DIR / "monai" / "swinunetr_ct.yaml"
SECTIONS = ("preprocess", "augment", "model", "train")
SWIN_MULTIPLE = 32  # SwinUNETR: patch size 2 then four 2x downsamplings
MERGING_CHOICES = ("legacy", "merging", "mergingv2")  # see domainmona.medical.model
MIN_ROI = 64  # at 32 the bottleneck is 1x1x1, which InstanceNorm refuses to normalise


def _read(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not a readable YAML settings file ({exc})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: settings must be a YAML mapping")
    return content


def load_settings(user_config: str | Path | None = None, **overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the user's YAML (same sections), then `overrides[section][key]` that are not None."""
    settings = copy.deepcopy(_read(DEFAULTS_PATH))
    layers = [_read(Path(user_config))] if user_config else []
    layers.append({section: {k: v for k, v in values.items() if v is not None}
                   for section, values in overrides.items()})
    for layer in layers:
        for section, values in layer.items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise UserError(f"settings: unknown section '{section}' (known: {', '.join(SECTIONS)})")
            unknown = set(values) - set(settings[section])
            if unknown:
                raise UserError(f"settings: unknown key(s) {', '.join(sorted(unknown))} in '{section}'")
            settings[section].update(values)
    _check(settings)
    return settings


def _check(settings: dict[str, Any]) -> None:
    roi = settings["train"]["roi"]
    if roi % SWIN_MULTIPLE or roi < MIN_ROI:
        raise UserError(f"--roi {roi}: SwinUNETR needs a multiple of {SWIN_MULTIPLE}, at least "
                        f"{MIN_ROI} (e.g. 64, 96, 128)")
    for key in ("feature_size", "decoder_size"):
        size = settings["model"][key]
        if size is not None and (size <= 0 or size % 12):
            raise UserError(f"--{key.replace('_', '-')} {size}: must be a positive multiple of 12")
    if settings["model"]["merging"] not in MERGING_CHOICES:
        raise UserError(f"--merging {settings['model']['merging']}: choose from {', '.join(MERGING_CHOICES)}")
    if settings["preprocess"]["hu_min"] >= settings["preprocess"]["hu_max"]:
        raise UserError("--hu-min must be below --hu-max")
