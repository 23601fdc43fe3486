"""Side networks (HST, ViT-CoMer) in the pipelines, end to end through the command line: detection on the demo
scenes (`train dota --backbone vit-b-16` with each of the simple pyramid, hst and vit-comer, then `test dota`),
geo-seg on 4-band chips then `tile-predict`, and `segment-ct train --model unetr --side hst` then `predict` in
the input's geometry; what trains and what the adapter files hold; the one-line refusals."""

import json
from pathlib import Path

import nibabel as nib
import pytest
import rasterio
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from domainmona.adapters.backbones import build_backbone, check_adapter, feature_channels
from domainmona.adapters.backbones.features import train_whole, trained_whole
from domainmona.adapters import inject
from domainmona.cli import app
from domainmona.errors import UserError


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def _adapter_file(path: Path) -> tuple[list[str], dict]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys()), dict(f.metadata())


# --- the features module with a side network ------------------------------------------------------------------

@pytest.mark.parametrize("side, channels", [("simple", (96, 192, 384, 384)), ("hst", (64, 128, 192, 256)),
                                            ("vit-comer", (384,) * 4)])
def test_channels_are_read_from_the_built_side_network(side, channels):
    """The FPN's and the decoder's inputs: the simple pyramid's registered channels, HST's dense-s widths (this
    project's default preset), ViT-CoMer's D at every level."""
    assert feature_channels("vit-s-16", side, {}) == channels
    assert feature_channels("vit-s-16", "hst", {"preset": "cls"}) == (32, 48, 64, 72)


def test_hst_trains_its_side_network_meta_tokens_and_the_vit_layernorms_only():
    """With the frozen-ViT method ('fixed'), what trains is exactly what trained_whole names: the side network
    (meta tokens included) and every block's norm1/norm2 (HST's 'ViT LayerNorms'); the patch embedding, attention
    and MLP weights stay frozen, and a forward/backward reaches every trainable tensor and no frozen one."""
    torch.manual_seed(0)
    model = build_backbone("vit-s-16", side="hst", side_cfg={"preset": "cls"})
    inject(model, "fixed")
    train_whole(model)
    whole = trained_whole(model)
    assert whole[0] == "pyramid" and len(whole) == 1 + 2 * 12
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if any(n.startswith(f"{w}.") for w in whole)}
    assert trainable == expected
    vit_trainable = {n for n in trainable if not n.startswith("pyramid.")}
    assert vit_trainable and all(".norm1." in n or ".norm2." in n for n in vit_trainable)
    sum(m.square().mean() for m in model(torch.randn(1, 3, 64, 80))).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable


def test_vit_comer_with_mona_trains_both_and_starts_at_the_adapted_vit():
    """`--adapter mona --side vit-comer` trains the Monas in the ViT and the side network; the zero gate keeps
    the adapted ViT's stream as it is at the start."""
    torch.manual_seed(0)
    model = build_backbone("vit-s-16", side="vit-comer", side_cfg={"deform_heads": 2, "n_points": 2})
    inject(model, "mona")
    train_whole(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("pyramid.") for n in trainable)
    assert any(".post_attn." in n for n in trainable)
    assert not any(n.startswith("body.") and ".post_" not in n for n in trainable)


@pytest.mark.parametrize("backbone, side, options, message", [
    ("swin-t", "hst", {}, "runs beside a plain ViT"),
    ("resnet50", "vit-comer", {}, "runs beside a plain ViT"),
    ("vit-s-16", "hst", {"preset": "huge"}, "unknown preset 'huge'"),
    ("sam-vit-b", "hst", {}, "windowed attention"),
    ("vit-s-16", "orbit", {}, "unknown side network 'orbit'"),
])
def test_side_networks_a_backbone_cannot_take_are_refused_in_one_line(backbone, side, options, message):
    with pytest.raises(UserError, match=message) as caught:
        check_adapter(backbone, "fixed", side, options)
    assert "\n" not in str(caught.value)


# --- detection ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dota_scenes(tmp_path_factory):
    from domainmona.detection.synthetic import DOTA_NAMES, generate_dota_scenes

    root = tmp_path_factory.mktemp("dota")
    generate_dota_scenes(root / "train", 2, 256, seed=0, objects_per_image=(4, 6), label_names=DOTA_NAMES)
    generate_dota_scenes(root / "test", 1, 256, seed=1, prefix="test", objects_per_image=(4, 6),
                         label_names=DOTA_NAMES)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("side, method", [("simple", "mona"), ("hst", "fixed"), ("vit-comer", "fixed")])
def test_train_dota_on_vit_b_with_each_pyramid_then_test(side, method, dota_scenes, tmp_path):
    """`train dota --backbone vit-b-16 --side S` (2 iterations; hst and vit-comer default to the frozen ViT),
    then `test dota` rebuilds the side network from the checkpoint and writes the Task1 submission; the adapter
    file holds the side network (and HST's LayerNorms) beside the neck and heads."""
    work = tmp_path / "work"
    result = _cli("train", "dota", "--data", dota_scenes / "train", "--work-dir", work, "--backbone", "vit-b-16",
                  "--side", side, "--max-iters", "2", "--patch-size", "256", "--patch-gap", "64")
    assert result.exit_code == 0, result.output
    final = work / "final.safetensors"
    from domainmona.detection.checkpoint import DetectorInfo

    keys, meta = _adapter_file(final)
    info = DetectorInfo.from_metadata(meta, final)
    backbone = info.config(final).model.backbone
    assert backbone["backbone"] == "vit-b-16" and backbone["adapter"]["type"] == method
    assert backbone.get("side", "simple") == side
    assert info.settings["side"] == side
    saved = json.loads(meta["modules_to_save"])
    assert "backbone.body.pyramid" in saved
    assert any(k.startswith("backbone.body.pyramid.") for k in keys)
    norms = [m for m in saved if m.endswith((".norm1", ".norm2"))]
    assert len(norms) == (24 if side == "hst" else 0)

    tested = _cli("test", "dota", "--checkpoint", final, "--data", dota_scenes / "test", "--out", tmp_path / "out")
    assert tested.exit_code == 0, tested.output
    assert (tmp_path / "out" / "task1.zip").is_file()


def test_train_dota_refuses_a_side_network_on_swin_before_writing(dota_scenes, tmp_path):
    result = _cli("train", "dota", "--data", dota_scenes / "train", "--work-dir", tmp_path / "work",
                  "--backbone", "swin-t", "--side", "hst", "--max-iters", "1")
    assert isinstance(result.exception, UserError) and "runs beside a plain ViT" in str(result.exception)
    assert not (tmp_path / "work").exists()


# --- geo-seg ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_geo_seg_with_hst_on_four_band_chips_then_tile_predict(tmp_path):
    """4-band uint16 chips: HST's stem takes the 4 bands, the ViT's patch embedding is inflated to them and
    trains; `tile-predict` rebuilds the model from the checkpoint's spec and writes the class map in the
    scene's grid."""
    from domainmona.geo.synthetic import SceneSpec, write_scene

    scene = write_scene(tmp_path / "scene.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=512, height=448, bands=4, dtype="uint16", kind="areas", objects=5, seed=4))
    chips = _cli("tile", scene.raster, "--labels", scene.labels, "--out", tmp_path / "chips", "--size", "224",
                 "--overlap", "64", "--task", "segmentation", "--shots", "3")
    assert chips.exit_code == 0, chips.output
    work = tmp_path / "work"
    result = _cli("train", "geo-seg", "--chips", tmp_path / "chips", "--work-dir", work, "--max-iters", "2",
                  "--backbone", "vit-s-16", "--side", "hst", "--side-opt", "preset=cls", "--arch", "FPN",
                  "--batch-size", "2")
    assert result.exit_code == 0, result.output
    from domainmona.geo.segmodel import read_spec

    spec = read_spec(work / "geo-seg.safetensors")
    assert (spec["side"], spec["side_cfg"], spec["adapter"], spec["in_channels"]) == ("hst", {"preset": "cls"},
                                                                                    "fixed", 4)
    keys, meta = _adapter_file(work / "adapter.safetensors")
    saved = json.loads(meta["modules_to_save"])
    assert "encoder.features.pyramid" in saved and "encoder.features.body.model.patch_embed.proj" in saved
    assert sum(m.endswith((".norm1", ".norm2")) for m in saved) == 24
    out = _cli("tile-predict", scene.raster, "--checkpoint", work / "geo-seg.safetensors", "--out",
               tmp_path / "pred.tif")
    assert out.exit_code == 0, out.output
    with rasterio.open(scene.raster) as src, rasterio.open(tmp_path / "pred.tif") as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)


# --- segment-ct -----------------------------------------------------------------------------------------------

UNETR_TINY = {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
CT_TINY = {"model": {"unetr": UNETR_TINY}, "augment": {"samples_per_volume": 1},
           "train": {"roi": 32, "max_epochs": 1, "val_every": 1, "num_workers": 0, "sw_batch_size": 1, "val_max": 1}}


@pytest.mark.slow
def test_segment_ct_unetr_with_hst_then_predict_in_the_input_geometry(tmp_path):
    """`segment-ct train --model unetr --side hst`: the ViT frozen but for its LayerNorms, HST and its skip
    projections and the decoder train and are saved in the adapter file; predict writes the input's geometry."""
    from domainmona.medical import synthetic
    from domainmona.medical.data import load_split

    dataset = synthetic.write_dataset(tmp_path / "task", cases=3, shape=(40, 40, 20), seed=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CT_TINY))
    result = _cli("segment-ct", "train", "--model", "unetr", "--side", "hst", "--data", dataset, "--work-dir",
                  tmp_path / "run", "--shots", "2", "--config", config, "--gpus", "0")
    assert result.exit_code == 0, result.output
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    model_cfg = state["settings"]["model"]
    assert (model_cfg["side"], model_cfg["adapter"]) == ("hst", "fixed")
    keys, meta = _adapter_file(tmp_path / "run" / "checkpoints" / "best_adapter.safetensors")
    saved = json.loads(meta["modules_to_save"])
    assert {"hst", "hst_skips"} <= set(saved) and sum(m.startswith("vit.blocks.") for m in saved) == 24
    assert not any(k.startswith("vit.") and ".norm" not in k for k in keys)

    image = load_split(dataset, shots=2).val[0]["image"]
    result = _cli("segment-ct", "predict", image, "--checkpoint", best, "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    written, original = nib.load(result.stdout.strip().splitlines()[-1]), nib.load(image)
    assert written.shape == original.shape


def test_segment_ct_refuses_hst_beside_a_hierarchical_network(tmp_path):
    result = _cli("segment-ct", "train", "--model", "swinunetr", "--side", "hst", "--data", tmp_path,
                  "--work-dir", tmp_path / "run")
    assert isinstance(result.exception, UserError) and "--model unetr" in str(result.exception)


# --- adapters report / probe ----------------------------------------------------------------------------------

def test_report_counts_hst_as_the_paper_does():
    """HST on ViT-B/16 with the released widths trains 764,840 parameters (the paper's 0.78 M without a head):
    36,864 of them the ViT's LayerNorms, the rest the side network and meta tokens."""
    from domainmona.adapters.report import method_reports

    (_, counts), = method_reports("vit-b-16", ["fixed"], "hst", {"preset": "cls"})
    assert counts.trainable_backbone_params == 2 * 2 * 768 * 12
    assert counts.trainable_model_params == 764_840
    result = _cli("adapters", "report", "--backbone", "vit-b-16", "--side", "hst", "--side-opt", "preset=cls",
                  "--method", "fixed")
    assert result.exit_code == 0 and "764,840" in result.output


def test_probe_measures_a_step_with_a_side_network():
    """One training step with HST beside a frozen ViT-S: what trains is what the report counts, and the adapter
    file holds it (float32)."""
    from domainmona.adapters import probe as p
    from domainmona.adapters.report import method_reports

    setting, = p.settings("vit-s-16", 64, 1, ["fixed"], "on", False, False, steps=1, side="hst",
                          side_cfg={"preset": "cls"})
    row = p.measure(setting)
    (_, counts), = method_reports("vit-s-16", ["fixed"], "hst", {"preset": "cls"})
    assert row.trainable_params == counts.trainable_model_params
    assert row.step_s is not None and row.adapter_file_bytes > 4 * row.trainable_params
    assert "side network hst" in p.table([row], None).title


@pytest.mark.parametrize("side, option", [("hst", "n_metas=2"), ("vit-comer", "deform_head=4"), ("simple", "dim=8")])
def test_an_option_the_side_network_does_not_take_is_refused_by_name(side, option):
    """Checked against the constructor's signature: the line names the option and what the network takes (a
    TypeError raised while building is a bug, and stays one)."""
    import timm

    from domainmona.adapters.side import build_side
    from domainmona.adapters.side.host import host_vit

    with torch.device("meta"):
        host = host_vit(timm.create_model("vit_small_patch16_224", dynamic_img_size=True))
    name = option.split("=")[0]
    with pytest.raises(UserError, match=rf"^{side}: unknown option\(s\) {name}; it takes \w"):
        build_side(side, host, 3, {name: 2})
