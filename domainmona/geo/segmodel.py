"""The geo-seg model: a segmentation-models-pytorch decoder on a timm Swin (`tu-` encoder) with adapters.

The checkpoint is one safetensors file with the whole state and, as metadata, the spec needed to rebuild
the model (encoder, decoder, bands, classes, normalisation), so `tile-predict` needs nothing else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from domainmona.errors import UserError
from domainmona.io import atomic_path, load_safetensors
from domainmona.recipes import CONFIGS_DIR

FORMAT = "domainmona.geo-seg/1"
SETTINGS = CONFIGS_DIR / "geo" / "geo-seg.yaml"


COUNTS = ("max_iters", "batch_size", "log_every", "save_every")  # settings that are whole numbers >= 1


def load_settings(**overrides: Any) -> dict[str, Any]:
    """configs/geo/geo-seg.yaml with the non-None overrides applied, its numbers checked."""
    settings = yaml.safe_load(SETTINGS.read_text())
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["encoder"] not in settings["encoders"]:
        raise UserError(f"unknown encoder '{settings['encoder']}' (choose from {', '.join(settings['encoders'])})")
    for key in COUNTS:
        if not _is_number(settings[key], int) or settings[key] < 1:
            raise UserError(f"{key} must be a whole number >= 1, got {settings[key]!r}")
    for key, zero_allowed in (("lr", False), ("weight_decay", True)):
        value = settings[key]
        if (not _is_number(value, (int, float)) or not math.isfinite(value) or value < 0
                or (value == 0 and not zero_allowed)):
            raise UserError(f"{key} must be a finite number {'>= 0' if zero_allowed else '> 0'}, got {value!r}")
    if not _is_number(settings["seed"], int):
        raise UserError(f"seed must be a whole number, got {settings['seed']!r}")
    for key in ("amp", "adapter_recompute", "checkpoint_blocks"):
        if not isinstance(settings[key], bool):
            raise UserError(f"{key} must be true or false, got {settings[key]!r}")
    return settings


def _is_number(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def build_model(spec: dict[str, Any]):
    """smp model from a spec (arch, decoder_kwargs, timm, timm_kwargs, in_channels, classes, size, adapter,
    adapter_cfg).

    Output channels: background + one per class. The adapter goes into the encoder only, so the decoder
    stays fully trainable. With other than 3 bands the patch embedding trains (pretrained RGB filters are
    only its starting point, domainmona.geo.bands).
    """
    import segmentation_models_pytorch as smp

    from domainmona.adapters import inject

    try:
        model = smp.create_model(spec["arch"], encoder_name=f"tu-{spec['timm']}", encoder_weights=None,
                                 in_channels=spec["in_channels"], classes=len(spec["classes"]) + 1,
                                 img_size=spec["size"], strict_img_size=False, **spec["decoder_kwargs"],
                                 **spec["timm_kwargs"])
    except KeyError as exc:
        raise UserError(f"unknown segmentation architecture '{spec['arch']}' ({exc})") from None
    inject(model.encoder, spec["adapter"], **spec["adapter_cfg"])
    if spec["in_channels"] != 3:
        for param in patch_embedding(model).parameters():
            param.requires_grad_(True)
    return model


def patch_embedding(model):
    return model.encoder.model.patch_embed


def model_spec(settings: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything `tile-predict` needs to rebuild the model and feed it scenes like the training ones."""
    from domainmona.geo.tiling import scene_record

    encoder = settings["encoders"][settings["encoder"]]
    return {"arch": settings["arch"], "decoder_kwargs": settings["decoder_kwargs"], "encoder": settings["encoder"],
            "timm": encoder["timm"], "timm_kwargs": encoder["kwargs"],
            "in_channels": len(manifest["rasters"][0]["bands"]), **scene_record(manifest),
            "classes": manifest["classes"], "size": manifest["size"], "overlap": manifest["overlap"],
            "stats": manifest["stats"], "adapter": settings["adapter"], "adapter_cfg": settings["adapter_cfg"]}


def save_segmenter(model, spec: dict[str, Any], path: Path) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "spec": json.dumps(spec)})
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata in a safetensors checkpoint's header (its tensors are not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a non-safetensors file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a safetensors checkpoint ({reason})") from None


def read_spec(path: Path) -> dict[str, Any] | None:
    """The spec of a geo-seg checkpoint, or None for any other safetensors file."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        return None
    try:
        return json.loads(meta["spec"])
    except (KeyError, ValueError):
        raise UserError(f"{path}: a geo-seg checkpoint without a readable model spec") from None


def load_segmenter(path: Path, size: int | None = None):
    """(merged/fused model in eval mode on the default device, spec) from a geo-seg checkpoint; ``size`` rebuilds it
    for other tiles."""
    from domainmona.adapters import prepare_for_inference
    from domainmona.devices import default_device

    spec = read_spec(path)
    if spec is None:
        raise UserError(f"{path}: not a geo-seg checkpoint (no '{FORMAT}' metadata)")
    model = build_model({**spec, "size": spec["size"] if size is None else size})
    state, _ = load_safetensors(path)
    own = model.state_dict()
    mismatched = sorted(set(own) ^ set(state)) + [k for k in state if k in own and own[k].shape != state[k].shape]
    if mismatched:
        raise UserError(f"{path}: weights do not fit the model they describe ({len(mismatched)} keys, "
                        f"e.g. '{mismatched[0]}')")
    model.load_state_dict(state)
    return prepare_for_inference(model.eval()).to(default_device()), spec
