"""How much of a model trains: backbone size, trainable backbone share, trainable share of the whole model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from domainmona.adapters.families import find_backbone
from domainmona.adapters.inject import STATE_ATTR, adapter_parameter_names, inject
from domainmona.errors import UserError


@dataclass(frozen=True)
class TrainableReport:
    """Counts as in the Mona paper: shares relative to the original backbone (adapters excluded)."""

    method: str
    backbone_params: int  # the backbone's own parameters, adapters excluded
    adapter_params: int
    trainable_backbone_params: int  # adapters plus any backbone weight the method trains
    model_params: int
    trainable_model_params: int

    @property
    def percent_of_backbone(self) -> float:
        return 100.0 * self.trainable_backbone_params / max(self.backbone_params, 1)

    @property
    def percent_of_model(self) -> float:
        return 100.0 * self.trainable_model_params / max(self.model_params, 1)

    def rows(self) -> list[tuple[str, str]]:
        return [("backbone params", f"{self.backbone_params:,}"),
                ("trainable backbone params", f"{self.trainable_backbone_params:,}"),
                ("% of backbone", f"{self.percent_of_backbone:.2f}%"),
                ("model params", f"{self.model_params:,}"),
                ("trainable model params", f"{self.trainable_model_params:,}"),
                ("% of whole model", f"{self.percent_of_model:.2f}%")]


def trainable_report(model: nn.Module, backbone: nn.Module | None = None) -> TrainableReport:
    """Parameter counts of `model` and of its backbone (found automatically unless given)."""
    root = backbone if backbone is not None else find_backbone(model)[1]
    named = list(root.named_parameters())
    added = adapter_parameter_names(root)
    state = getattr(root, STATE_ATTR, None)
    return TrainableReport(
        method=state.method if state else "none",
        backbone_params=sum(p.numel() for n, p in named if n not in added),
        adapter_params=sum(p.numel() for n, p in named if n in added),
        trainable_backbone_params=sum(p.numel() for _, p in named if p.requires_grad),
        model_params=sum(p.numel() for p in model.parameters()),
        trainable_model_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def method_reports(backbone: str, methods: list[str], side: str | None = None, side_cfg: dict | None = None,
                   **config) -> list[tuple[str, TrainableReport | str]]:
    """(method, its counts on the named `backbone` built with random weights, with a plain ViT's `side`
    network beside it) for each method; with several methods, one the backbone's family does not define gets
    the reason instead (e.g. vpt-shallow off plain ViTs), with one its error is raised. `adapters report` and
    benchmarks/adapter_counts.py print these. The side network counts in the whole model's shares."""
    from domainmona.adapters.backbones import build_backbone, check_side, sided
    from domainmona.adapters.backbones.features import train_whole

    check_side(backbone, side)
    rows: list[tuple[str, TrainableReport | str]] = []
    for name in methods:
        try:
            model = inject(build_backbone(backbone, **sided(side, side_cfg)), name, **config)
            train_whole(model)
        except UserError as exc:
            if len(methods) == 1:
                raise
            rows.append((name, str(exc)))
            continue
        rows.append((name, trainable_report(model)))
    return rows
