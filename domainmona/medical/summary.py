"""The parameter report printed before training: encoder, its adapters, CNN decoder and its adapters counted
separately.

SwinUNETR is mostly CNN decoder (~87% at width 48), so "x% trainable" of the whole model hides where the
weights are; this table shows each part and what trains in it, for each network.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from torch import nn

from domainmona.adapters.backbones import get_backbone
from domainmona.console import console
from domainmona.medical.model import network_of, parameter_groups

MERGING_NOTES = {
    "legacy": "legacy (MONAI < 1.5 voxel order, as the public SSL weights were trained)",
    "merging": "MONAI >= 1.5 'merging' (corrected order; differs from the SSL weights' training)",
    "mergingv2": "MONAI 'mergingv2' (itertools order; differs from the SSL weights' training)",
}


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Group → (parameters, trainable parameters)."""
    return {group: (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))
            for group, params in parameter_groups(model).items()}


def _title(model_cfg: dict[str, Any]) -> str:
    return f"{_network(model_cfg)}; decoder {model_cfg['decoder']}"


def _network(model_cfg: dict[str, Any]) -> str:
    name, adapter = model_cfg["name"], model_cfg["adapter"]
    if name == "unetr":
        cfg = model_cfg["unetr"]
        return (f"UNETR + {adapter}: ViT width {cfg['hidden_size']} ({cfg['num_heads']} heads, MLP {cfg['mlp_dim']}), "
                f"decoder width {cfg['feature_size']}")
    if name == "segresnet":
        cfg = model_cfg["segresnet"]
        return f"SegResNet + {adapter}: width {cfg['init_filters']}, down blocks {cfg['blocks_down']}"
    decoder_size = model_cfg["decoder_size"] or model_cfg["feature_size"]
    return (f"SwinUNETR + {adapter}: Swin width {model_cfg['feature_size']}, decoder width {decoder_size}, "
            f"patch merging {model_cfg['merging']}")


def report_table(model: nn.Module, model_cfg: dict[str, Any]) -> Table:
    counts = parameter_counts(model)
    total = sum(n for n, _ in counts.values())
    table = Table(title=_title(model_cfg))
    for column in ("part", "parameters", "trainable", "share of model"):
        table.add_column(column, justify="left" if column == "part" else "right")
    labels = {"encoder": get_backbone(network_of(model)).options["encoder_label"], "adapter": "encoder adapters",
              "decoder": "CNN decoder", "decoder_adapter": "decoder adapters"}
    for group, (count, trainable) in counts.items():
        if not count:
            continue
        table.add_row(labels[group], f"{count:,}", f"{trainable:,}", f"{100 * count / total:.1f}%")
    trainable_total = sum(t for _, t in counts.values())
    table.add_row("total", f"{total:,}", f"{trainable_total:,}", f"{100 * trainable_total / total:.1f}% trains",
                  style="bold")
    return table


def print_report(model: nn.Module, model_cfg: dict[str, Any]) -> None:
    console.print(report_table(model, model_cfg))
    if model_cfg["name"] == "swinunetr":
        console.print(f"patch merging: {MERGING_NOTES[model_cfg['merging']]}", highlight=False)
