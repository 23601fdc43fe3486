"""segment-ct: SSL weights into the Mona model, legacy patch merging, geometry round trip, metrics, bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from domainmona.errors import UserError
from domainmona.io import RECORD
from domainmona.medical import synthetic, transforms
from domainmona.medical.checkpoint import save_checkpoint
from domainmona.medical.data import check_pair, load_split
from domainmona.medical.evaluate import evaluate_dirs, score_case
from domainmona.medical.model import LegacyPatchMerging, assemble, build_swinunetr
from domainmona.medical.settings import load_settings
from domainmona.medical.summary import parameter_counts

TINY = {"model": {"feature_size": 12, "adapter_cfg": {"inner_dim": 8}},
        "augment": {"samples_per_volume": 1},
        "train": {"roi": 64, "max_epochs": 1, "val_every": 1, "num_workers": 0, "sw_batch_size": 1, "val_max": 1}}


def tiny_settings(**model):
    settings = load_settings(None, **{k: dict(v) for k, v in TINY.items()})
    settings["model"].update(model)
    return settings


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("ct") / "task", cases=3, shape=(40, 40, 20), seed=3)


# --- synthetic data ---------------------------------------------------------------------------------------

def test_synthetic_cases_are_oblique_non_ras_with_ct_hu(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    image = nib.load(dataset / meta["training"][0]["image"])
    label = np.asarray(nib.load(dataset / meta["training"][0]["label"]).dataobj)
    hu = np.asarray(image.dataobj)
    assert nib.aff2axcodes(image.affine) != ("R", "A", "S")
    direction = image.affine[:3, :3] / np.linalg.norm(image.affine[:3, :3], axis=0)
    assert not np.allclose(np.abs(direction), np.eye(3), atol=0.05), "affine should be oblique"
    assert hu.min() < -900 and hu.max() > 300  # air and bone
    for index, organ in enumerate(synthetic.ORGANS, start=1):
        assert (label == index).sum() > 20
        assert abs(np.median(hu[label == index]) - organ.hu) < 10
    assert meta["labels"] == synthetic.LABEL_NAMES


# --- model ------------------------------------------------------------------------------------------------

def test_legacy_merging_uses_the_pre_1_5_sub_voxels():
    torch.manual_seed(0)
    merge = LegacyPatchMerging(dim=4).eval()
    x = torch.randn(1, 4, 4, 4, 4)
    changed_unused = x.clone()
    changed_unused[:, 1::2, 1::2, 0::2] += 5.0  # offset (1,1,0): never read by the old order
    changed_used = x.clone()
    changed_used[:, 1::2, 0::2, 0::2] += 5.0  # offset (1,0,0): read once
    with torch.no_grad():
        out = merge(x)
        torch.testing.assert_close(merge(changed_unused), out)
        assert not torch.allclose(merge(changed_used), out)


def test_legacy_merging_differs_from_monai_merging():
    from monai.networks.nets.swin_unetr import PatchMerging

    torch.manual_seed(0)
    legacy, current = LegacyPatchMerging(dim=4), PatchMerging(dim=4)
    current.load_state_dict(legacy.state_dict())
    x = torch.randn(1, 4, 4, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(legacy(x), current(x))


def _swinvit_checkpoint(reference, path):
    """A reference SwinUNETR's encoder in model_swinvit.pt's layout (DataParallel prefix, fc1/fc2, SSL heads)."""
    state = {}
    for key, value in reference.state_dict().items():
        if key.startswith("swinViT."):
            key = "module." + key.removeprefix("swinViT.")
            state[key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")] = value
    state["module.rotation_head.weight"] = torch.zeros(4, 8)
    torch.save({"epoch": 3, "state_dict": state}, path)
    return sum(1 for k in reference.state_dict() if k.startswith("swinViT."))


def _encoder_state(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith("swinViT.") and "post_" not in k}


def test_model_swinvit_weights_load_into_the_mona_model_like_monai_load_from(tmp_path):
    torch.manual_seed(0)
    settings = tiny_settings()
    reference = build_swinunetr(settings["model"], 4)
    expected = _swinvit_checkpoint(reference, tmp_path / "model_swinvit.pt")
    plain = build_swinunetr(settings["model"], 4)
    plain.load_from(torch.load(tmp_path / "model_swinvit.pt", weights_only=True))  # MONAI's own loader
    from domainmona.medical.weights import load_ssl_weights

    assert load_ssl_weights(build_swinunetr(settings["model"], 4), tmp_path / "model_swinvit.pt") == expected
    mona = assemble(settings["model"], 4, pretrained=tmp_path / "model_swinvit.pt")
    loaded = _encoder_state(mona)
    assert loaded.keys() == _encoder_state(plain).keys()
    for key, value in _encoder_state(plain).items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    counts = parameter_counts(mona)
    assert counts["encoder"][1] == 0 and counts["adapter"][0] == counts["adapter"][1] > 0
    assert counts["decoder"][0] == counts["decoder"][1] > 0


def test_ssl_pretrained_weights_format_loads_into_slim_decoder_model(tmp_path):
    torch.manual_seed(0)
    settings = tiny_settings(feature_size=24, decoder_size=12)
    reference = build_swinunetr(dict(settings["model"], decoder_size=None), 4)
    model_dict = {"encoder.mask_token": torch.zeros(1, 1, 24)}
    for key, value in reference.state_dict().items():
        if key.startswith("swinViT.layers"):  # swinViT.layers1.0.x -> encoder.layers1.0.0.x
            model_dict["encoder." + key[len("swinViT."):len("swinViT.layers1.0.")] + "0." +
                       key[len("swinViT.layers1.0."):]] = value
        elif key.startswith("swinViT."):
            model_dict["encoder." + key[len("swinViT."):]] = value
    torch.save({"model": model_dict}, tmp_path / "ssl_pretrained_weights.pth")
    slim = assemble(settings["model"], 4, pretrained=tmp_path / "ssl_pretrained_weights.pth")
    for key, value in _encoder_state(reference).items():
        torch.testing.assert_close(slim.state_dict()[key], value, msg=key)
    full = parameter_counts(assemble(dict(settings["model"], decoder_size=None), 4))
    assert parameter_counts(slim)["decoder"][0] < full["decoder"][0] / 2
    with torch.no_grad():
        assert slim.eval()(torch.randn(1, 1, 64, 64, 64)).shape == (1, 4, 64, 64, 64)


def test_weights_for_another_model_are_refused(tmp_path):
    torch.save({"state_dict": {"backbone.layers.0.blocks.0.attn.w_msa.qkv.weight": torch.zeros(3, 3)}},
               tmp_path / "mmdet_swin.pth")
    with pytest.raises(UserError, match="no tensor fits"):
        assemble(tiny_settings()["model"], 4, pretrained=tmp_path / "mmdet_swin.pth")


def test_fused_mona_swinunetr_matches_unfused():
    from domainmona.adapters import fuse
    from domainmona.adapters.modules.mona import FusedMonaConv

    torch.manual_seed(0)
    model = assemble(tiny_settings()["model"], 4).eval()
    for name, param in model.named_parameters():
        if "gamma" in name:  # away from the near-identity init so the adapters matter
            param.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 1, 32, 32, 32)  # the adapters live in the Swin encoder: compare its five outputs
    with torch.no_grad():
        before = model.swinViT(x)
        after = fuse(model).swinViT(x)
    assert sum(isinstance(m, FusedMonaConv) for m in model.modules()) == 16  # 2 per block, 8 blocks
    for fused, unfused in zip(after, before):
        torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=1e-4)


# --- geometry ---------------------------------------------------------------------------------------------

def test_preprocessing_inverse_puts_labels_back_on_the_scanner_grid(dataset):
    from monai.data import MetaTensor

    case = load_split(dataset).train[0]
    settings = tiny_settings()
    chain = transforms.inference(settings["preprocess"])
    data = chain({"image": case["image"]})
    processed_label = transforms.validation(settings["preprocess"])(case)["label"]
    assert nib.aff2axcodes(data["image"].affine.numpy()) == ("R", "A", "S")
    assert processed_label.shape == data["image"].shape
    data["pred"] = MetaTensor(processed_label.as_tensor().float())
    restored = transforms.inverse_to_original(chain)(data)["pred"][0].numpy().round()
    original = np.asarray(nib.load(case["label"]).dataobj)
    assert restored.shape == original.shape
    assert (restored == original).mean() > 0.98  # resampling there and back loses only boundary voxels
    for index in range(1, 4):
        overlap = ((restored == index) & (original == index)).sum() * 2
        assert overlap / ((restored == index).sum() + (original == index).sum()) > 0.8


def test_predict_writes_uint8_labels_in_the_input_geometry(dataset, tmp_path):
    from domainmona.medical.predict import predict_volumes

    torch.manual_seed(0)
    settings = tiny_settings()
    model = assemble(settings["model"], 4)
    checkpoint = save_checkpoint(tmp_path / "untrained.pt", model=model.state_dict(), settings=settings,
                                 num_classes=4, label_names={"1": "liver", "2": "spleen", "3": "kidney"})
    source = Path(load_split(dataset).val[0]["image"])
    [written] = predict_volumes([source], checkpoint, tmp_path / "out", device="cpu")
    original, result = nib.load(source), nib.load(written)
    assert result.shape == original.shape
    np.testing.assert_allclose(result.affine, original.affine, atol=1e-4)
    assert result.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 1, 2, 3}
    assert (tmp_path / "out" / source.name.replace(".nii.gz", ".png")).stat().st_size > 1000
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".") and p.name != RECORD]


# --- metrics ----------------------------------------------------------------------------------------------

def test_dice_and_hd95_on_constructed_masks():
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[5:15, 5:15, 5:15] = 1
    pred[7:17, 5:15, 5:15] = 1  # shifted by 2 voxels: overlap 8/10
    gt[:, :, 2] = 2  # one-voxel slabs 15 slices apart: every surface distance is 15 voxels
    pred[:, :, 17] = 2
    spacing = (1.0, 1.0, 2.5)
    scores = score_case(pred, gt, [1, 2, 3], spacing)
    assert scores[1][0] == pytest.approx(2 * 800 / 2000)
    assert scores[2][0] == 0.0
    assert scores[2][1] == pytest.approx(15 * 2.5)
    assert all(math.isnan(v) for v in scores[3])  # absent from both: no score


def test_false_positive_on_empty_ground_truth_scores_zero_dice():
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = gt.copy()
    pred[2:4, 2:4, 2:4] = 1
    assert score_case(pred, gt, [1], (1, 1, 1))[1][0] == 0.0


def _save(array, affine, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), path)


def test_evaluate_dirs_pairs_by_name_and_averages_cases(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[2:8, 2:8, 2:8] = 1
    _save(gt, affine, tmp_path / "gt" / "a.nii.gz")
    _save(gt, affine, tmp_path / "pred" / "a.nii.gz")  # perfect
    _save(gt, affine, tmp_path / "gt" / "b.nii.gz")
    _save(np.zeros_like(gt), affine, tmp_path / "pred" / "b.nii.gz")  # missed entirely
    _save(gt, affine, tmp_path / "pred" / "extra.nii.gz")  # no ground truth: skipped
    (tmp_path / "pred" / "labels.json").write_text(json.dumps({"1": "liver"}))
    evaluation = evaluate_dirs(tmp_path / "pred", tmp_path / "gt")
    assert evaluation.names == {1: "liver"}
    assert evaluation.unmatched == ["extra.nii.gz"]
    assert evaluation.mean(1, 0) == pytest.approx(0.5)
    assert evaluation.to_json()["classes"]["liver"]["dice"] == pytest.approx(0.5)
    _save(gt, np.diag([1.0, 2.0, 3.0, 1.0]), tmp_path / "pred" / "a.nii.gz")
    with pytest.raises(UserError, match="shape/affine differ"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "gt")


# --- bad input --------------------------------------------------------------------------------------------

def test_bad_volumes_are_named_in_one_line_errors(tmp_path):
    affine = np.eye(4)
    _save(np.zeros((8, 8, 8)), affine, tmp_path / "img.nii.gz")
    _save(np.zeros((8, 8, 6)), affine, tmp_path / "short.nii.gz")
    _save(np.zeros((8, 8, 8)), np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "moved.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), affine), tmp_path / "flat.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    cases = [("short.nii.gz", "shape"), ("moved.nii.gz", "affine"), ("flat.nii.gz", "3-D"),
             ("notes.txt", "not a NIfTI"), ("missing.nii.gz", "no such file")]
    for name, message in cases:
        with pytest.raises(UserError, match=message) as info:
            check_pair(tmp_path / "img.nii.gz", tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_datalists_without_labels_or_classes_are_refused(tmp_path, dataset):
    (tmp_path / "no_label.json").write_text(json.dumps({"training": [{"image": "x.nii.gz"}]}))
    with pytest.raises(UserError, match="needs both 'image' and 'label'"):
        load_split(tmp_path / "no_label.json")
    folder = tmp_path / "pairs"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    (folder / "images" / "a.nii.gz").write_bytes((dataset / "imagesTr" / "case_000.nii.gz").read_bytes())
    with pytest.raises(UserError, match="missing label"):
        load_split(folder)
    with pytest.raises(UserError, match="only 2 labelled"):
        load_split(dataset, shots=5)


def test_settings_refuse_rois_swinunetr_cannot_train():
    for roi in (32, 80):
        with pytest.raises(UserError, match="multiple of 32"):
            load_settings(None, train={"roi": roi})


def test_cli_refuses_an_adapter_file_as_checkpoint_in_one_line(tmp_path, dataset):
    from safetensors.torch import save_file

    save_file({"backbone.layers.0.blocks.0.post_attn.gamma": torch.ones(4)}, str(tmp_path / "det.safetensors"),
              metadata={"format": "domainmona-adapter", "method": "mona"})
    exe = Path(sys.executable).with_name("domainmona")
    image = dataset / "imagesTr" / "case_000.nii.gz"
    result = subprocess.run([str(exe), "segment-ct", "predict", str(image), "--checkpoint",
                             str(tmp_path / "det.safetensors"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "adapter-only file" in result.stderr
    assert not (tmp_path / "out").exists()


# --- end to end -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_resume_predict_evaluate_end_to_end(dataset, tmp_path):
    import yaml
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from domainmona.adapters import load_adapter
    from domainmona.cli import app

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    runner = CliRunner()
    train = ["segment-ct", "train", "--data", str(dataset), "--work-dir", str(tmp_path / "run"), "--shots", "2",
             "--config", str(config), "--gpus", "0"]
    result = runner.invoke(app, train)
    assert result.exit_code == 0, result.output
    checkpoints = tmp_path / "run" / "checkpoints"
    assert Path(result.stdout.strip().splitlines()[-1]) == checkpoints / "best.pt"
    adapters = load_file(checkpoints / "best_adapter.safetensors")
    best = torch.load(checkpoints / "best.pt", weights_only=True)["model"]
    # The adapter tensors, and the decoder outside the encoder (modules_to_save, as in every pipeline)
    encoder = [k for k in adapters if k.startswith("swinViT.")]
    assert encoder and all(".post_attn." in k or ".post_mlp." in k for k in encoder)
    assert set(adapters) - set(encoder) == {k for k in best if not k.startswith("swinViT.")}
    fresh = assemble(tiny_settings()["model"], 4)
    fresh.load_state_dict(best)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            if "post_" in name or not name.startswith("swinViT."):
                param.zero_()
    load_adapter(fresh, checkpoints / "best_adapter.safetensors")  # the core's format and checks
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, best[key])
    after_one = torch.load(checkpoints / "last.pt", weights_only=True)

    assert isinstance(runner.invoke(app, train).exception, UserError)  # an existing run needs --resume
    result = runner.invoke(app, train + ["--resume", "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    after_two = torch.load(checkpoints / "last.pt", weights_only=True)
    assert [m["epoch"] for m in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [1, 2]
    assert after_two["epoch"] == 2 and math.isfinite(after_two["history"][-1]["loss"])
    for key, value in after_one["model"].items():  # frozen Swin unchanged; adapters and decoder trained
        changed = not torch.equal(value, after_two["model"][key])
        if key.startswith("swinViT.") and "post_" not in key:
            assert not changed, key
    for key in ("swinViT.layers1.0.blocks.0.post_attn.project1.weight", "decoder1.conv_block.conv1.conv.weight"):
        assert not torch.equal(after_one["model"][key], after_two["model"][key]), key

    image = load_split(dataset, shots=2).val[0]["image"]
    result = runner.invoke(app, ["segment-ct", "predict", image, "--checkpoint", str(checkpoints / "best.pt"),
                                 "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    written = nib.load(result.stdout.strip().splitlines()[-1])
    assert written.shape == nib.load(image).shape
    result = runner.invoke(app, ["segment-ct", "evaluate", "--pred", str(tmp_path / "pred"), "--gt",
                                 str(dataset / "labelsTr"), "--json", str(tmp_path / "scores.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert list(scores["classes"]) == ["liver", "spleen", "kidney"]
    assert list(scores["cases"]) == [Path(image).name]
    assert all(0.0 <= c["dice"] <= 1.0 for c in scores["classes"].values())


@pytest.mark.slow
def test_train_gpus_2_relaunches_under_torchrun_and_rank_0_reports(dataset, tmp_path):
    """`--gpus 2` on a CPU machine: the real torchrun relaunch, DDP over gloo, one data shard per process."""
    import os

    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    exe = Path(sys.executable).with_name("domainmona")
    work = tmp_path / "ddp"
    result = subprocess.run([str(exe), "segment-ct", "train", "--data", str(dataset), "--work-dir", str(work),
                             "--shots", "2", "--config", str(config), "--gpus", "2"],
                            capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    best = work / "checkpoints" / "best.pt"
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str(best) and lines.count(str(best)) == 1  # printed by rank 0 only
    state = torch.load(best, weights_only=True)
    assert not any(key.startswith("module.") for key in state["model"])  # saved unwrapped from DDP
    assert [m["epoch"] for m in json.loads((work / "metrics.json").read_text())] == [1]


def test_every_registered_method_is_a_valid_adapter_with_the_default_settings():
    """`segment-ct train --adapter M` with no config file: the defaults carry no options of one method."""
    from domainmona.adapters import METHOD_NAMES
    from domainmona.medical.settings import load_settings

    for method in METHOD_NAMES:
        assert load_settings(model=dict(adapter=method))["model"]["adapter"] == method
