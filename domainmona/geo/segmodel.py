"""The geo-seg model: a segmentation-models-pytorch decoder on a timm Swin (`tu-` encoder) with adapters.

The checkpoint is one safetensors file with the whole state and, as metadata, the spec needed to rebuild
the model (encoder, decoder, bands, classes, normalisation), so `tile-predict` needs nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainmona.errors import UserError
from domainmona.io import atomic_path, load_safetensors, read_metadata, read_yaml
from domainmona.recipes import CONFIGS_DIR

FORMAT = "domainmona.geo-seg/1"
SETTINGS = CONFIGS_DIR / "geo" / "geo-seg.yaml"


@dataclass
class GeoSegSettings:
    """The settings of `train geo-seg`: every value comes from `configs/geo/geo-seg.yaml` (their one home),
    then `--config`, then the flags (`domainmona.settings.resolve`); checked here, saved whole in the
    checkpoint (`save_segmenter`'s `settings` metadata). `encoder` is read as `backbone`."""

    arch: str  # an smp architecture that accepts transformer features: UPerNet, FPN, ...
    decoder_kwargs: dict
    backbone: str  # a registered 2D backbone (domainmona.adapters.backbones) or timm:NAME
    adapter: str
    adapter_cfg: dict
    side: str  # what makes a plain ViT's pyramid (domainmona.adapters.side)
    side_cfg: dict
    batch_size: int
    lr: float
    weight_decay: float
    max_iters: int
    seed: int
    log_every: int
    save_every: int
    amp: bool
    adapter_recompute: bool
    checkpoint_blocks: bool

    def __post_init__(self) -> None:
        from domainmona.adapters.backbones import check_backbone_name, check_side
        from domainmona.settings import check_adapter_options

        for key in ("max_iters", "batch_size", "log_every", "save_every"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be a whole number >= 1, got {getattr(self, key)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not 0 <= self.seed <= 2**32 - 1:
            raise UserError(f"seed must be a whole number in 0..{2**32 - 1}, got {self.seed!r}")
        check_backbone_name(self.backbone)
        check_adapter_options(self.adapter, self.adapter_cfg)
        check_side(self.backbone, self.side)


ALIASES = {"encoder": "backbone"}  # the setting's name before the backbone registry


def packaged_settings() -> dict[str, Any]:
    """configs/geo/geo-seg.yaml: the settings' defaults."""
    return read_yaml(SETTINGS, "settings file")


def resolve_settings(config: dict[str, Any] | None = None, where: str = "--config",
                     **flags: Any) -> GeoSegSettings:
    """The packaged defaults, then ``config`` (a `--config` YAML's mapping), then the non-None ``flags``."""
    from domainmona.settings import given, resolve

    return resolve(GeoSegSettings, (str(SETTINGS), packaged_settings()), (where, config or {}),
                   ("flags", given(**flags)), aliases=ALIASES)


def settings_dict(settings: GeoSegSettings) -> dict[str, Any]:
    """The settings as the model spec reads them: plain values, the backbone also as `encoder` (its name in
    scripts from before the backbone registry)."""
    from domainmona.settings import plain

    return {**plain(settings), "encoder": settings.backbone}


def load_settings(**overrides: Any) -> dict[str, Any]:
    """configs/geo/geo-seg.yaml with the non-None overrides applied, checked (`GeoSegSettings`), as a dict."""
    return settings_dict(resolve_settings(**overrides))


def build_model(spec: dict[str, Any]):
    """smp model from a spec (arch, decoder_kwargs, backbone, timm, timm_kwargs, in_channels, classes, size,
    adapter, adapter_cfg, side, side_cfg).

    The encoder is smp's timm universal encoder (`tu-`) where the backbone registers a timm model smp takes
    (Swin, CNNs; every checkpoint from before the registry), else the registry's features module
    (`SmpEncoder`: plain ViTs through the simple pyramid or a side network, `timm:NAME`). Output channels:
    background + one per class. The adapter goes into the encoder's backbone only; the decoder and what
    `trained_whole` names (a ViT's pyramid or side network, the input convolution on other than 3 bands:
    pretrained RGB filters are only its starting point, domainmona.adapters.bands) train fully.
    """
    import segmentation_models_pytorch as smp

    from domainmona.adapters import inject
    from domainmona.adapters.backbones.features import SmpEncoder, train_whole

    common = dict(encoder_weights=None, in_channels=spec["in_channels"], classes=len(spec["classes"]) + 1,
                  **spec["decoder_kwargs"])
    if spec.get("timm"):
        # timm's Swin is built for the tile size (not a fixed 224) and takes other sizes
        sized = {"img_size": spec["size"], "strict_img_size": False} if "swin" in spec["timm"] else {}
        encoder = dict(encoder_name=f"tu-{spec['timm']}", **sized, **spec["timm_kwargs"])
    else:
        encoder = dict(encoder_name=SmpEncoder.register(spec["backbone"], spec["in_channels"], spec.get("side"),
                                                        spec.get("side_cfg")))
    try:
        model = smp.create_model(spec["arch"], **encoder, **common)
    except KeyError as exc:
        raise UserError(f"unknown segmentation architecture '{spec['arch']}' ({exc})") from None
    inject(model.encoder, spec["adapter"], **spec["adapter_cfg"])
    train_whole(model.encoder)
    return model


def model_spec(settings: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything `tile-predict` needs to rebuild the model and feed it scenes like the training ones."""
    from domainmona.geo.tiling import scene_record

    from domainmona.adapters.backbones import get_backbone, sided

    backbone = get_backbone(settings["backbone"])
    side = sided(settings.get("side"), settings.get("side_cfg"))
    timm_name, timm_kwargs = backbone.timm or (None, {})
    return {"arch": settings["arch"], "decoder_kwargs": settings["decoder_kwargs"], "backbone": backbone.name,
            "encoder": backbone.name, "family": backbone.family, "timm": timm_name, "timm_kwargs": timm_kwargs,
            "in_channels": len(manifest["rasters"][0]["bands"]), **scene_record(manifest),
            "classes": manifest["classes"], "size": manifest["size"], "overlap": manifest["overlap"],
            "stats": manifest["stats"], "adapter": settings["adapter"], "adapter_cfg": settings["adapter_cfg"],
            **side}


def save_segmenter(model, spec: dict[str, Any], path: Path, settings: dict[str, Any] | None = None) -> Path:
    """The checkpoint: the weights, the spec and ``settings`` (the run's `GeoSegSettings` as plain data, what
    `--print-config` printed)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "spec": json.dumps(spec)}
    if settings is not None:
        metadata["settings"] = json.dumps(settings)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


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
