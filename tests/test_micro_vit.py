"""The micro ViT, domainmona's CPU stand-in for a pretrained plain ViT: its shipped weights load whole and record
their recipe, and every pyramid a plain ViT takes runs on it at the transfer study's 96 px."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors import safe_open

from domainmona.adapters import load_pretrained
from domainmona.adapters.backbones import build_backbone, shipped_weights, sided
from domainmona.detection.pretrain_micro import default_settings, shipping_backbones


def _metadata(backbone: str) -> dict[str, str]:
    with safe_open(str(shipped_weights(backbone)), "pt") as weights:
        return weights.metadata()


def test_the_shipped_weights_load_whole_into_micro_vit():
    path = shipped_weights("micro-vit")
    assert path is not None and path.stat().st_size <= 6 * 2 ** 20
    backbone = build_backbone("micro-vit", side="hst", side_cfg={"preset": "cls"})  # the ViT's, not the side's
    report = load_pretrained(backbone, path)
    assert (report.layout, report.missing, report.unexpected, report.mismatched) == ("timm", [], [], [])
    assert report.loaded == 4 + 12 * 12  # class token, position and patch embeddings; 12 tensors a block


def test_both_shipped_files_record_the_recipe_that_made_them():
    assert {"micro", "micro-vit"} <= set(shipping_backbones())
    for backbone in ("micro", "micro-vit"):
        recipe = _metadata(backbone)
        assert json.loads(recipe["settings"]) == asdict(default_settings(backbone))
        assert json.loads(recipe["source_classes"]) == ["tank", "plane", "pool", "roof"]
        assert float(recipe["final_train_accuracy"]) >= 0.95
    vit = _metadata("micro-vit")
    assert vit["produced_by"] == "python -m domainmona.detection.pretrain_micro --backbone micro-vit"
    assert vit["format"] == "timm" and json.loads(vit["settings"])["tile"] == 96


@pytest.mark.parametrize("side,side_cfg,channels", [
    ("simple", None, (24, 48, 96, 96)),
    ("hst", {"preset": "cls"}, (32, 48, 64, 72)),
    ("vit-comer", {"deform_heads": 3, "base_width": 16}, (96, 96, 96, 96)),
])
def test_every_pyramid_runs_on_the_micro_vit_at_96_px(side, side_cfg, channels):
    torch.manual_seed(0)
    model = build_backbone("micro-vit", **sided(side, side_cfg)).eval()
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 96, 96))
    assert [tuple(m.shape) for m in maps] == [(2, c, 96 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))]
    assert tuple(model.out_channels) == channels
