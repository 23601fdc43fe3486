"""The segment-ct settings: `configs/monai/swinunetr_ct.yaml`, an optional user YAML over it, CLI flags last.

Every value is checked here, whichever layer it came from (a flag, a `--config` YAML, a recipe, a
checkpoint): `check_settings` is the one place that knows what SwinUNETR, UNETR and SegResNet training can
run with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from domainmona.adapters.backbones import backbone_names, get_backbone
from domainmona.errors import UserError
from domainmona.io import read_yaml
from domainmona.options import check_memory, finite, fraction, positive, probability, shown,\
    window_bytes
from domainmona.recipes import CONFIGS_DIR

DEFAULTS_PATH = CONFIGS_DIR / "monai" / "swinunetr_ct.yaml"
SECTIONS = ("preprocess", "augment", "model", "train")
NETWORKS = backbone_names(dims=3)  # model.name (--model): the registry's 3D networks
SWIN_MULTIPLE = 32  # SwinUNETR: patch size 2 then four 2x downsamplings
UNETR_PATCH = 16  # UNETR's ViT patch size (fixed by MONAI)
MERGING_CHOICES = ("legacy", "merging", "mergingv2")  # see domainmona.medical.model
MIN_ROI = 64  # at 32 the bottleneck is 1x1x1, which InstanceNorm refuses to normalise
SEGRESNET_GROUPS = 8  # SegResNet's GroupNorm groups: every level's width must be a multiple
WIDTH_MULTIPLE = 12  # MONAI's SwinUNETR refuses other widths (its stages have 3, 6, 12, 24 heads)
FLAGS = {"roi", "max_epochs", "hu_min", "hu_max", "feature_size", "decoder_size", "merging", "adapter", "name",
         "decoder"}
FLAG_OF_KEY = {"name": "model"}  # keys whose flag has another name
SWIN_ONLY_FLAGS = ("feature_size", "decoder_size", "merging", "use_checkpoint")  # model keys only SwinUNETR reads
NESTED = ("unetr", "segresnet")  # model keys holding one network's own mapping, merged key by key
DECODER_CHOICES = ("train", "adapt", "frozen")  # model.decoder (--decoder); null resolves by `decoder_mode`
# The methods --decoder adapt puts into the decoder's conv blocks (Mona after each, LoRA on their convolutions,
# Conv-Adapter beside the last; full and fixed train or freeze them whole).
DECODER_METHODS = ("mona", "lora", "conv-adapter", "full", "fixed")

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
# model.<network>.<key> -> (int, range check)
NETWORK_NUMBERS: dict[tuple[str, str], Callable] = {
    ("unetr", "feature_size"): finite(1),
    ("unetr", "hidden_size"): finite(1),
    ("unetr", "mlp_dim"): finite(1),
    ("unetr", "num_heads"): finite(1),
    ("segresnet", "init_filters"): finite(1),
}


@dataclass
class CTSettings:
    """The settings of `segment-ct train`: the sections of configs/monai/swinunetr_ct.yaml (the defaults' one
    home), filled by `resolve_settings` from the defaults, `--config` and the flags, every value checked
    (`check_settings`); saved whole, as plain data, in every checkpoint (`settings`)."""

    preprocess: dict
    augment: dict
    model: dict
    train: dict

    def __post_init__(self) -> None:
        check_settings({section: getattr(self, section) for section in SECTIONS})  # converts in place


def _read(path: Path) -> dict[str, Any]:
    from domainmona.settings import read_config

    return read_config(path)


def resolve_settings(user_config: str | Path | None = None, adapter_opt: Iterable[str] | None = None,
                     side_opt: Iterable[str] | None = None, **overrides: dict[str, Any]) -> CTSettings:
    """Defaults, then the user's YAML (same sections), then `overrides[section][key]` that are not None,
    `adapter_opt` (`--adapter-opt KEY=VALUE`, over the YAML's model.adapter_cfg key by key) and `side_opt`
    (`--side-opt`, over model.side_cfg; with a side network and no method named, the ViT stays frozen)."""
    from domainmona.settings import adapter_layer, side_layer

    settings = copy.deepcopy(_read(DEFAULTS_PATH))
    layers = [_read(Path(user_config))] if user_config else []
    user_model = layers[0].get("model") if layers else None
    user_model = user_model if isinstance(user_model, dict) else {}
    extra = {**adapter_layer(user_model, adapter_opt),
             **side_layer(user_model, overrides.get("model", {}), side_opt)}
    overrides = {**overrides, "model": {**overrides.get("model", {}), **extra}} if extra else overrides
    layers.append({section: {k: v for k, v in values.items() if v is not None}
                   for section, values in overrides.items()})
    for layer in layers:
        for section, values in layer.items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise UserError(f"settings: unknown section '{shown(section, plain=True)}' "
                                f"(known: {', '.join(SECTIONS)})")
            _merge(settings[section], values, section)
    return CTSettings(**settings)


def load_settings(user_config: str | Path | None = None, **overrides: dict[str, Any]) -> dict[str, Any]:
    """`resolve_settings` as plain data (the form training and the checkpoints use)."""
    from domainmona.settings import plain

    return plain(resolve_settings(user_config, **overrides))


def _merge(target: dict[str, Any], values: dict[str, Any], where: str) -> None:
    """`target.update(values)`, refusing unknown keys; a network's own mapping (`model.unetr`) merges key by key."""
    unknown = set(values) - set(target)
    if unknown:
        names = ", ".join(map(str, sorted(unknown, key=str)))
        raise UserError(f"settings: unknown key(s) {shown(names, 200, plain=True)} in '{where}'")
    for key, value in values.items():
        if where == "model" and key in NESTED and isinstance(value, dict):
            _merge(target[key], value, f"model.{key}")
        else:
            target[key] = value


def fill_missing(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings saved before a key existed (a checkpoint from an earlier version) get that key's default, so
    such a checkpoint still predicts and resumes (a SwinUNETR one as SwinUNETR). Returns `settings`."""
    defaults = _read(DEFAULTS_PATH)
    for section, values in defaults.items():
        current = settings.get(section) if isinstance(settings, dict) else None
        if isinstance(current, dict):
            for key, value in values.items():
                current.setdefault(key, copy.deepcopy(value))
    return settings


def _name(section: str, key: str) -> str:
    """How the user set it: the flag when there is one, else the YAML key."""
    return f"--{FLAG_OF_KEY.get(key, key).replace('_', '-')}" if key in FLAGS else f"{section}.{key}"


def _number(section: str, key: str, value: Any, kind: type, check: Callable) -> int | float:
    name = _name(section, key)
    if isinstance(value, str) and kind is float:  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise UserError(f"{name} {shown(value)}: must be {'an integer' if kind is int else 'a number'}")
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
            raise UserError(f"{_name(section, key)} {shown(settings[section].get(key))}: must be true or false")
    pre, model, train = settings["preprocess"], settings["model"], settings["train"]
    if model.get("name") not in NETWORKS:
        raise UserError(f"--model {shown(model.get('name'), plain=True)}: choose from {', '.join(NETWORKS)}")
    _check_networks(model)
    _check_roi(model, train["roi"])
    for key in ("feature_size", "decoder_size"):
        size = model.get(key)
        if size is None and key == "decoder_size":
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % WIDTH_MULTIPLE:
            raise UserError(f"--{key.replace('_', '-')} {shown(size, plain=True)}: must be a positive multiple of "
                            f"{WIDTH_MULTIPLE}")
    _check_roi_memory(model, train)
    if model.get("merging") not in MERGING_CHOICES:
        raise UserError(f"--merging {shown(model.get('merging'), plain=True)}: choose from "
                        f"{', '.join(MERGING_CHOICES)}")
    _check_adapter(model)
    _check_decoder(model)
    _check_side(model)
    if pre["hu_min"] >= pre["hu_max"]:
        raise UserError(f"--hu-min {pre['hu_min']} must be below --hu-max {pre['hu_max']}")
    spacing = pre.get("spacing")
    if not (isinstance(spacing, list) and len(spacing) == 3):
        raise UserError(f"preprocess.spacing {shown(spacing)}: must be three voxel sizes in mm")
    pre["spacing"] = [_number("preprocess", "spacing", s, float, positive) for s in spacing]
    _check_orientation(pre.get("orientation"))
    if settings["augment"]["pos"] + settings["augment"]["neg"] <= 0:
        raise UserError("augment.pos and augment.neg: at least one must be above 0")


def _check_networks(model: dict[str, Any]) -> None:
    """The UNETR and SegResNet mappings, whichever network runs (a checkpoint carries both)."""
    for network in NESTED:
        values = model.get(network)
        expected = set(_read(DEFAULTS_PATH)["model"][network])
        if not isinstance(values, dict) or set(values) != expected:
            raise UserError(f"model.{network}: must be a mapping of {', '.join(sorted(expected))}")
    for (network, key), check in NETWORK_NUMBERS.items():
        model[network][key] = _number("model", f"{network}.{key}", model[network][key], int, check)
    unetr, segresnet = model["unetr"], model["segresnet"]
    if unetr["hidden_size"] % unetr["num_heads"]:
        raise UserError(f"model.unetr.hidden_size {unetr['hidden_size']}: must be a multiple of num_heads "
                        f"{unetr['num_heads']}")
    if segresnet["init_filters"] % SEGRESNET_GROUPS:
        raise UserError(f"model.segresnet.init_filters {segresnet['init_filters']}: must be a multiple of "
                        f"{SEGRESNET_GROUPS} (SegResNet's group norm)")
    down, up = segresnet["blocks_down"], segresnet["blocks_up"]
    counts_ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in [*down, *up]) \
        if isinstance(down, list) and isinstance(up, list) else False
    if not counts_ok or not down or len(up) != len(down) - 1:
        raise UserError(f"model.segresnet.blocks_down {shown(down)} / blocks_up {shown(up)}: lists of block counts "
                        ">= 1, blocks_up one shorter than blocks_down")
    if model["name"] != "swinunetr" and model.get("use_checkpoint") is True:
        raise UserError(f"--checkpoint-blocks: SwinUNETR only (MONAI's {model['name']} has no block checkpointing)")


def refuse_swin_only_flags(network: str, given: dict[str, Any]) -> None:
    """Flags that only SwinUNETR reads, given for another network: refused rather than silently ignored."""
    used = [key for key, value in given.items() if value is not None]
    if network != "swinunetr" and used:
        flag = "--checkpoint-blocks" if used[0] == "use_checkpoint" else _name("model", used[0])
        raise UserError(f"{flag}: a SwinUNETR option; --model {network} takes its sizes from model.{network} "
                        "in a --config YAML")


def roi_rule(model: dict[str, Any]) -> tuple[int, int]:
    """(multiple, minimum) of the patch size the network can take: SwinUNETR's five 2x levels with a bottleneck
    InstanceNorm can normalise; UNETR's 16^3 patches, at least 2 per side for the same norm; SegResNet's
    downsamplings."""
    if model["name"] == "unetr":
        return UNETR_PATCH, 2 * UNETR_PATCH
    if model["name"] == "segresnet":
        multiple = 2 ** (len(model["segresnet"]["blocks_down"]) - 1)
        return multiple, max(2 * multiple, 16)
    return SWIN_MULTIPLE, MIN_ROI


def _check_roi(model: dict[str, Any], roi: int) -> None:
    multiple, least = roi_rule(model)
    if roi % multiple or roi < least:
        examples = ", ".join(str(least + i * multiple) for i in range(3))
        network = get_backbone(model["name"]).options["monai_class"]
        raise UserError(f"--roi {roi}: {network} needs a multiple of {multiple}, at least {least} (e.g. {examples})")


def _check_roi_memory(model: dict[str, Any], train: dict[str, Any]) -> None:
    """Refuse a patch whose first full-resolution feature map alone (the network's first width, per patch of
    a batch) cannot fit in memory."""
    width = {"unetr": model["unetr"]["feature_size"], "segresnet": model["segresnet"]["init_filters"]}.get(
        model["name"], model["feature_size"])
    batch = max(train["batch_size"], train["sw_batch_size"])
    check_memory("--roi", train["roi"], window_bytes(train["roi"], bands=width, batch=batch, dims=3),
                 f"the first feature map of {batch} {train['roi']}^3 patch(es) at width {width}")


def _check_adapter(model: dict[str, Any]) -> None:
    """The adapter method and its options, as the adapters core will read them (before any model is built)."""
    from domainmona.adapters.methods import get_method

    if not isinstance(model.get("adapter_cfg"), dict):
        raise UserError("model.adapter_cfg: must be a mapping of the adapter method's options")
    if model.get("adapter") != "none":
        get_method(str(model.get("adapter"))).make_config(**model["adapter_cfg"])


def _check_decoder(model: dict[str, Any], resolved: bool = False) -> None:
    """`--decoder` and the method it needs: adapt and frozen keep the decoder's pretrained weights beside an
    adapted encoder, and adapt puts the method into its conv blocks, where only DECODER_METHODS are defined
    (`resolved`: the value is null's default, which the message says)."""
    decoder, method = model.get("decoder"), model["adapter"]
    if decoder is None:
        return
    if decoder not in DECODER_CHOICES:
        raise UserError(f"--decoder {shown(decoder, plain=True)}: choose from {', '.join(DECODER_CHOICES)}")
    if decoder != "train" and method == "none":
        raise UserError(f"--decoder {decoder}: needs an --adapter method (--adapter none trains the whole network)")
    if decoder == "adapt" and method not in DECODER_METHODS:
        flag = "--decoder adapt (the default over whole-network weights)" if resolved else "--decoder adapt"
        raise UserError(f"{flag}: --adapter {method} is not defined for the decoder's conv blocks (choose from "
                        f"{', '.join(DECODER_METHODS)}), or pass --decoder train or frozen")


def decoder_mode(model: dict[str, Any], pretrained: str | Path | None) -> str:
    """`model.decoder`, or where it is null: adapt over whole-network weights (their decoder is kept and
    adapted, not retrained), train otherwise (encoder weights, or none: the decoder has nothing to keep). A whole
    network of another kind is refused here, reading the file."""
    if model["decoder"] is not None:
        return model["decoder"]
    from domainmona.medical.weights import holds_whole_network

    whole = pretrained is not None and holds_whole_network(pretrained, model["name"])
    mode = "adapt" if whole and model["adapter"] != "none" else "train"
    _check_decoder({**model, "decoder": mode}, resolved=True)
    return mode


def _check_side(model: dict[str, Any]) -> None:
    """A side network runs beside UNETR's plain ViT only, and HST is the one built in 3D."""
    from domainmona.adapters.side import get_side

    side = model.get("side")
    if not isinstance(model.get("side_cfg"), dict):
        raise UserError("model.side_cfg: must be a mapping of the side network's options")
    if side is None:
        if model["side_cfg"]:
            raise UserError("model.side_cfg given without a side network (--side hst)")
        return
    get_side(str(side))
    if side != "hst":
        raise UserError(f"--side {shown(side, plain=True)}: segment-ct builds hst only (3D ViT-CoMer is not built)")
    if model["name"] != "unetr":
        raise UserError(f"--side hst: runs beside UNETR's plain ViT (--model unetr); {model['name']} is "
                        "hierarchical already")


def _check_orientation(codes: Any) -> None:
    from nibabel.orientations import axcodes2ornt

    try:
        axes = axcodes2ornt(tuple(codes))[:, 0] if isinstance(codes, str) and len(codes) == 3 else [math.nan]
    except ValueError:
        axes = [math.nan]
    if any(math.isnan(a) for a in axes) or len(set(axes)) != 3:  # unknown letters give NaN; RRS repeats an axis
        raise UserError(f"preprocess.orientation {shown(codes)}: must be three axis codes such as RAS or LPS")
