"""The micro ViT, domainmona's CPU stand-in for a pretrained plain ViT: its shipped weights load whole and record
their recipe, every pyramid a plain ViT takes runs on it at the transfer study's 96 px, and the study's ViT rows
train."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from domainmona.adapters import load_pretrained
from domainmona.adapters.backbones import build_backbone, shipped_weights, sided
from domainmona.detection.pretrain_micro import default_settings, shipping_backbones

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VIT_ROWS = ["simple + full", "simple + fixed", "hst + fixed", "vit-comer + fixed", "simple + mona"]


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


@pytest.fixture
def transfer_study(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import transfer_study

    return transfer_study


def test_every_vit_row_of_the_transfer_study_trains_and_times(transfer_study, tmp_path):
    from transfer.data import scene_tensors
    from transfer.run import Budget, adapt, inference_ratios

    torch.set_num_threads(1)
    scenes = scene_tensors(tmp_path, 2, seed=0, side=96)
    runs = [adapt(arm, scenes, scenes, 5, 0, Budget(steps=2)) for arm in transfer_study.VIT_ARMS]
    assert [run["method"] for run in runs] == VIT_ROWS
    shares = {run["method"]: (run["trainable_pct"], run["trainable_with_pyramid"]) for run in runs}
    assert shares["simple + full"][0] == 100.0 and shares["simple + fixed"][0] == 0.0
    assert 0 < shares["hst + fixed"][0] < 1 and 0 < shares["simple + mona"][0] < 10
    assert shares["simple + fixed"][1] < shares["vit-comer + fixed"][1] < shares["hst + fixed"][1]
    assert all(0 <= run["miou"] <= 1 and run["final_loss"] > 0 for run in runs)
    ratios = inference_ratios(list(transfer_study.VIT_ARMS), 5, 96, rounds=1)
    assert list(ratios) == VIT_ROWS and all(r > 0 for r in ratios.values())
