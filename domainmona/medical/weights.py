"""Pretrained weights into the segment-ct networks, counted; and the adapter file of a trained model.

A whole network (SwinUNETR, UNETR or SegResNet as MONAI names its tensors: a bundle's `models/model.pt` or a plain
`torch.save(model.state_dict())`, under `state_dict`/`model` containers or DataParallel's `module.` or not) loads
encoder, decoder and head by name; a head for another class count stays freshly initialised, counted apart. A
whole network of another kind is refused in one line, loading nothing.

Encoder weights load into the encoder alone. SwinUNETR takes MONAI's self-supervised Swin weights, in two public
formats (Tang et al. 2022; Valanarasu et al. 2023):
- `model_swinvit.pt`: {"state_dict": {"module.layers1.0.blocks.0.mlp.fc1.weight", ...}} plus SSL heads —
  the core's `load_pretrained` knows it;
- `ssl_pretrained_weights.pth`: {"model": {"encoder.layers1.0.0.blocks.0.mlp.linear1.weight", ...}} — mapped
  here with MONAI's own `filter_swinunetr`, then loaded by the core's name-and-shape matcher.
`load_state_dict(strict=False)` on either raw file loads nothing without a word: the count is reported and
zero is an error. UNETR takes a plain MONAI 3D-ViT state dict (`patch_embedding.…`, `blocks.N.…`, as MONAI's
self-supervised ViTs save their encoder) into its ViT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets.swin_unetr import filter_swinunetr
from torch import nn

from domainmona.adapters.weights import LoadReport
from domainmona.console import console
from domainmona.errors import UserError

SSL_PRETRAINED_PREFIX = "encoder."


@dataclass
class WholeNetworkReport(LoadReport):
    """A whole network's load: the output head's tensors for another class count (`reinitialised`) keep the
    model's fresh initialisation and count as neither missing nor unexpected."""

    reinitialised: list[str] = field(default_factory=list)
    classes: tuple[int, int] = (0, 0)  # the head's class count in the file, in the model

    def __str__(self) -> str:
        head = (f" (output head: {self.classes[0]} classes in the file, {self.classes[1]} here)"
                if self.reinitialised else "")
        return f"{super().__str__()}, {len(self.reinitialised)} re-initialised{head}"


def load_ssl_weights(model: nn.Module, path: str | Path, verbose: bool = True) -> int:
    """Load either SSL format into `model.swinViT`; return how many tensors were loaded."""
    from domainmona.adapters import load_pretrained
    from domainmona.adapters.weights import load_matching, read_state_dict

    tensors = read_state_dict(path)
    if any(k.startswith(SSL_PRETRAINED_PREFIX) for k in tensors):
        pairs = (filter_swinunetr(k, v) for k, v in tensors.items())
        mapped = {k.removeprefix("swinViT."): v for k, v in (p for p in pairs if p is not None)}
        report = load_matching(model.swinViT, mapped, LoadReport(str(path), "monai-ssl_pretrained_weights"))
        if not report.loaded:
            raise UserError(f"{path}: no tensor fits SwinUNETR's Swin encoder (ssl_pretrained_weights layout; "
                            f"SSL weights need --feature-size 48)")
    else:
        report = load_pretrained(model, path)
    if verbose:
        console.print(f"pretrained: {report}", highlight=False)
    return report.loaded


def whole_network_of(tensors: dict[str, torch.Tensor]) -> str | None:
    """The segment-ct network whose whole state dict `tensors` is (its encoder's and its output head's tensors
    there, under MONAI's names); None for anything else, encoder weights among them."""
    from domainmona.adapters.backbones import backbone_names
    from domainmona.medical.model import HEAD_NAMES, encoder_modules

    top = {key.partition(".")[0] for key in tensors}
    if not top & set(HEAD_NAMES):
        return None
    return next((name for name in backbone_names(dims=3) if encoder_modules(name)[0] in top), None)


def _network_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from domainmona.adapters.weights import read_state_dict, strip_prefix

    return strip_prefix(read_state_dict(path), "module.")  # saved from DistributedDataParallel


def _whole(tensors: dict[str, torch.Tensor], name: str, path: str | Path) -> bool:
    """Whether `tensors` are a whole `name` network; a whole network of another kind is refused."""
    from domainmona.adapters.backbones import get_backbone

    found = whole_network_of(tensors)
    if found not in (None, name):
        theirs, ours = (get_backbone(n).options["monai_class"] for n in (found, name))
        raise UserError(f"{path}: a whole {theirs} (e.g. '{next(iter(tensors))}'), not a {ours} or its encoder: "
                        f"train it with --model {found}")
    return found == name


def holds_whole_network(path: str | Path, name: str) -> bool:
    """Whether `path` holds a whole `name` network (encoder, decoder and head); another network's is refused."""
    return _whole(_network_tensors(path), name, path)


def _load_whole(model: nn.Module, name: str, path: str | Path,
                tensors: dict[str, torch.Tensor]) -> WholeNetworkReport:
    """Every tensor by name; the head's for another class count left to the model's fresh initialisation. Any
    other tensor of another shape (another width or depth), or less than the core's minimum share of the model
    filled, refuses the file and loads nothing."""
    from domainmona.adapters.pretrained import MIN_COVERAGE
    from domainmona.adapters.weights import load_matching
    from domainmona.medical.model import head_of

    own = model.state_dict()
    head = f"{head_of(model)}."
    reinitialised = sorted(k for k, v in tensors.items() if k.startswith(head) and k in own and own[k].shape != v.shape)
    classes = (tensors[reinitialised[0]].shape[0], own[reinitialised[0]].shape[0]) if reinitialised else (0, 0)
    report = WholeNetworkReport(str(path), f"monai-{name}", reinitialised=reinitialised, classes=classes)
    network = type(model).__name__

    def check(report: WholeNetworkReport) -> None:
        report.missing = [k for k in report.missing if k not in reinitialised]  # re-initialised, not missing
        if report.mismatched:
            key = report.mismatched[0]
            raise UserError(f"{path}: not weights for this {network}: '{key}' is {tuple(tensors[key].shape)} in the "
                            f"file, {tuple(own[key].shape)} here ({len(report.mismatched)} such tensors; build it "
                            "with the file's sizes)")
        if report.loaded < MIN_COVERAGE * (report.loaded + len(report.missing)):
            raise UserError(f"{path}: not weights for this {network}: it fills only {report.loaded} of its "
                            f"{report.loaded + len(report.missing)} tensors, e.g. '{report.missing[0]}' stays missing")

    kept = {k: v for k, v in tensors.items() if k not in reinitialised}
    return load_matching(model, kept, report, check=check)


def load_network_weights(model: nn.Module, name: str, path: str | Path, verbose: bool = True) -> int:
    """Load `path` into network `name` (see the module docstring); return how many tensors were loaded."""
    from domainmona.adapters import load_pretrained
    from domainmona.adapters.weights import load_matching

    tensors = _network_tensors(path)
    if _whole(tensors, name, path):
        report = _load_whole(model, name, path, tensors)
    elif name == "swinunetr":
        return load_ssl_weights(model, path, verbose=verbose)
    elif name == "unetr" and not any(k.startswith("vit.") for k in tensors):
        # a bare 3D-ViT file: the core's loader, which also converts between MONAI's perceptron and conv patch
        # embeddings and resamples position embeddings of another patch grid
        report = load_pretrained(model, path)
    else:
        report = load_matching(model, tensors, LoadReport(str(path), f"monai-{name}"))
    if not report.loaded:
        example = next(iter(tensors))
        raise UserError(f"{path}: no tensor fits {type(model).__name__} ({report.layout} layout, e.g. '{example}')")
    if verbose:
        console.print(f"pretrained: {report}", highlight=False)
    return report.loaded


def save_adapter_file(model: nn.Module, model_cfg: dict[str, Any], path: str | Path,
                      checkpoint: Path | None = None) -> Path | None:
    """The core's adapter file, holding exactly what trains: the adapter tensors of every adapted part (the
    encoder, and with --decoder adapt each decoder stage) and, as `modules_to_save`, the top-level modules outside
    them that train (the decoder with --decoder train, else the output head alone; a side network) and the
    encoder's modules a side network tunes. With `checkpoint`, prints its size against that whole-model file."""
    from domainmona.adapters import adapted_backbones, save_adapter
    from domainmona.medical.model import tuned_vit_modules

    if model_cfg["adapter"] == "none":
        return None
    parts = {where.partition(".")[0] for where, _, _ in adapted_backbones(model)}
    trained = [name for name, module in model.named_children()
               if name not in parts and any(p.requires_grad for p in module.parameters())]
    path = save_adapter(model, path, trained + tuned_vit_modules(model))
    if checkpoint is not None:
        size, whole = path.stat().st_size, checkpoint.stat().st_size
        console.print(f"adapter file {path.name}: {size / 1e6:.2f} MB, {100 * size / whole:.1f}% of {checkpoint.name} "
                      f"({whole / 1e6:.2f} MB)", highlight=False)
    return path
