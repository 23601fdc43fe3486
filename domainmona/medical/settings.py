"""The segment-ct settings: `configs/monai/swinunetr_ct.yaml`, an optional user YAML over it, CLI flags last.

Every value is checked here, whichever layer it came from (a flag, a `--config` YAML, a recipe, a
checkpoint): `check_settings` is the one place that knows what SwinUNETR training can run with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml

from domainmona.errors import UserError
from domainmona.options import finite, fraction, positive, probability
from domainmona.recipes import CONFIGS_DIR

DEFAULTS_PATH = CONFIGS_DIR / "monai" / "swinunetr_ct.yaml"
SECTIONS = ("preprocess", "augment", "model", "train")
SWIN_MULTIPLE = 32  # SwinUNETR: patch size 2 then four 2x downsamplings
MERGING_CHOICES = ("legacy", "merging", "mergingv2")  # see domainmona.medical.model
MIN_ROI = 64  # at 32 the bottleneck is 1x1x1, which InstanceNorm refuses to normalise
WIDTH_MULTIPLE = 12  # MONAI's SwinUNETR refuses other widths (its stages have 3, 6, 12, 24 heads)
FLAGS = {"roi", "max_epochs", "hu_min", "hu_max", "feature_size", "decoder_size", "merging", "adapter"}

# (section, key) -> (int or float, range check); `bool` is never accepted as a number.
NUMBERS: dict[tuple[str, str], tuple[type, Callable]] = {
    ("preprocess", "hu_min"): (float, finite()),
    ("preprocess", "hu_max"): (float, finite()),
    ("preprocess", "crop_margin"): (int, finite(0)),
    ("augment", "samples_per_volume"): (int, finite(1)),
    ("augment", "pos"): (float, finite(0)),
    ("augment", "neg"): (float, finite(0)),
    ("augment", "flip_prob"): (float, probability),
    ("augment", "rotate90_prob"): (float, probability),
    ("augment", "intensity_scale"): (float, finite(0)),
    ("augment", "intensity_shift"): (float, finite(0)),
    ("augment", "intensity_prob"): (float, probability),
    ("model", "dropout_path_rate"): (float, fraction),
    ("train", "roi"): (int, finite()),  # its rule is SwinUNETR's, below
    ("train", "max_epochs"): (int, finite(1)),
    ("train", "val_every"): (int, finite(1)),
    ("train", "batch_size"): (int, finite(1)),
    ("train", "lr"): (float, positive),
    ("train", "adapter_lr"): (float, positive),
    ("train", "weight_decay"): (float, finite(0)),
    ("train", "grad_clip"): (float, positive),
    ("train", "val_max"): (int, finite(0)),
    ("train", "cache_rate"): (float, probability),
    ("train", "num_workers"): (int, finite(0)),
    ("train", "sw_batch_size"): (int, finite(1)),
    ("train", "overlap"): (float, fraction),
    ("train", "seed"): (int, finite(0, 2**32 - 1)),  # numpy's seed range
}
SWITCHES = (("model", "use_checkpoint"), ("train", "amp"), ("train", "adapter_recompute"))


def _read(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UserError(f"{path}: not a readable YAML settings file ({reason})") from None
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
    check_settings(settings)
    return settings


def _name(section: str, key: str) -> str:
    """How the user set it: the flag when there is one, else the YAML key."""
    return f"--{key.replace('_', '-')}" if key in FLAGS else f"{section}.{key}"


def _number(section: str, key: str, value: Any, kind: type, check: Callable) -> int | float:
    name = _name(section, key)
    if isinstance(value, str) and kind is float:  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise UserError(f"{name} {value!r}: must be {'an integer' if kind is int else 'a number'}")
    try:
        check(value)
    except typer.BadParameter as exc:
        raise UserError(f"{name}: {exc.message}") from None
    return value


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse, in one line, any value training or prediction could not run with or would silently misuse.
    Numbers YAML left as strings (`1e-4`) are converted in place."""
    for section in SECTIONS:
        if not isinstance(settings, dict) or not isinstance(settings.get(section), dict):
            raise UserError(f"settings: section '{section}' is missing or not a mapping")
    for (section, key), (kind, check) in NUMBERS.items():
        settings[section][key] = _number(section, key, settings[section].get(key), kind, check)
    for section, key in SWITCHES:
        if not isinstance(settings[section].get(key), bool):
            raise UserError(f"{_name(section, key)} {settings[section].get(key)!r}: must be true or false")
    pre, model, train = settings["preprocess"], settings["model"], settings["train"]
    if train["roi"] % SWIN_MULTIPLE or train["roi"] < MIN_ROI:
        raise UserError(f"--roi {train['roi']}: SwinUNETR needs a multiple of {SWIN_MULTIPLE}, at least "
                        f"{MIN_ROI} (e.g. 64, 96, 128)")
    for key in ("feature_size", "decoder_size"):
        size = model.get(key)
        if size is None and key == "decoder_size":
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % WIDTH_MULTIPLE:
            raise UserError(f"--{key.replace('_', '-')} {size}: must be a positive multiple of {WIDTH_MULTIPLE}")
    if model.get("merging") not in MERGING_CHOICES:
        raise UserError(f"--merging {model.get('merging')}: choose from {', '.join(MERGING_CHOICES)}")
    _check_adapter(model)
    if pre["hu_min"] >= pre["hu_max"]:
        raise UserError(f"--hu-min {pre['hu_min']} must be below --hu-max {pre['hu_max']}")
    spacing = pre.get("spacing")
    if not (isinstance(spacing, list) and len(spacing) == 3):
        raise UserError(f"preprocess.spacing {spacing!r}: must be three voxel sizes in mm")
    pre["spacing"] = [_number("preprocess", "spacing", s, float, positive) for s in spacing]
    _check_orientation(pre.get("orientation"))
    if settings["augment"]["pos"] + settings["augment"]["neg"] <= 0:
        raise UserError("augment.pos and augment.neg: at least one must be above 0")


def _check_adapter(model: dict[str, Any]) -> None:
    """The adapter method and its options, as the adapters core will read them (before any model is built)."""
    from domainmona.adapters.methods import get_method

    if not isinstance(model.get("adapter_cfg"), dict):
        raise UserError("model.adapter_cfg: must be a mapping of the adapter method's options")
    if model.get("adapter") != "none":
        get_method(str(model.get("adapter"))).make_config(**model["adapter_cfg"])


def _check_orientation(codes: Any) -> None:
    from nibabel.orientations import axcodes2ornt

    try:
        axes = axcodes2ornt(tuple(codes))[:, 0] if isinstance(codes, str) and len(codes) == 3 else [math.nan]
    except ValueError:
        axes = [math.nan]
    if any(math.isnan(a) for a in axes) or len(set(axes)) != 3:  # unknown letters give NaN; RRS repeats an axis
        raise UserError(f"preprocess.orientation {codes!r}: must be three axis codes such as RAS or LPS")
