"""The backbone registry: every registered backbone gives the maps it declares, names are read without torch, a
backbone registered in a user's module trains through every 2D pipeline, and the package keeps one list."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from domainmona.adapters import inject
from domainmona.adapters.backbones import (BACKBONE_REGISTRY, backbone_names, backbones, build_backbone,
                                           check_backbone_name, get_backbone)
from domainmona.cli import app
from domainmona.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "domainmona"
TWO_D = backbone_names(dims=2)


def test_names_read_from_the_source_are_the_registry():
    assert backbone_names() == tuple(backbones())
    assert backbone_names(3) == tuple(backbones(3)) == ("swinunetr", "unetr", "segresnet")
    assert {"micro", "swin-t", "swin-s", "swin-b", "swin-l", "resnet50", "resnet101", "convnext-t", "convnext-s",
            "convnext-b", "efficientnet-b0", "efficientnet-lite0", "mobilenetv2", "vit-s-16", "vit-b-16", "vit-l-16",
            "prithvi-100m", "sam-vit-b", "micro-vit"} == set(TWO_D)


@pytest.mark.parametrize("name", TWO_D)
def test_every_2d_backbone_gives_the_maps_it_registers(name):
    torch.manual_seed(0)
    spec = get_backbone(name)
    model = build_backbone(name, in_chans=4)
    model.eval()  # mmdet's Swin returns None from train()/eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 4, 64, 96))  # non-square, a multiple of 32
    assert [tuple(m.shape[1:]) for m in maps] == [(c, 64 // s, 96 // s) for c, s in zip(spec.channels, spec.strides)]
    assert spec.strides == (4, 8, 16, 32) and len(spec.mean) == len(spec.std)  # per band: RGB, Prithvi's 6


def test_the_simple_pyramid_is_built_on_the_last_vit_block():
    """ViTDet's pyramid: the stride-16 level is the last block's map itself, the others derive from it."""
    import timm

    torch.manual_seed(0)
    features = build_backbone("vit-s-16").eval()
    vit = timm.create_model("vit_small_patch16_224", dynamic_img_size=True).eval()
    vit.load_state_dict(features.body.model.state_dict(), strict=False)
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        last = vit.forward_intermediates(image, indices=1, intermediates_only=True)[-1]
        maps = features(image)
    torch.testing.assert_close(maps[2], last, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps[3], torch.nn.functional.max_pool2d(last, 2), rtol=1e-5, atol=1e-5)


def test_timm_names_any_model_with_feature_maps():
    cnn, vit = get_backbone("timm:test_convnext"), get_backbone("timm:test_vit")
    assert (cnn.family, cnn.channels, cnn.pyramid) == ("cnn", (24, 32, 48, 64), "stages")
    assert (vit.family, vit.channels, vit.pyramid) == ("timm-vit", (16, 32, 64, 64), "simple")
    maps = inject(build_backbone("timm:test_vit"), "mona")(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (64, 2, 2)]
    with pytest.raises(UserError, match="timm:no_such_net: timm has no such model"):
        get_backbone("timm:no_such_net")


@pytest.mark.parametrize("name,dims", [("resnet-9000", 2), ("vit-s-16", 3), ("segresnet", 2), ("timm:", 2)])
def test_unknown_names_are_refused_in_one_line(name, dims):
    with pytest.raises(UserError, match=r"^unknown backbone .*\(choose from: [^\n]*\)$"):
        check_backbone_name(name, dims)


def test_a_method_the_family_does_not_define_is_refused_in_one_line():
    with pytest.raises(UserError, match="^method 'lora' needs attention qkv projections, which cnn blocks"):
        inject(build_backbone("resnet50"), "lora")


@pytest.mark.parametrize("backbone", ["resnet50", "convnext-t", "vit-b-16"])
@pytest.mark.parametrize("method", ["mona", "lora", "conv-adapter"])
def test_each_backbone_takes_each_method_or_refuses_it_in_one_line(backbone, method):
    """The matrix behind the end-to-end runs below: LoRA needs attention projections, which CNNs lack."""
    from domainmona.adapters.backbones import check_adapter

    if method == "lora" and get_backbone(backbone).family == "cnn":
        with pytest.raises(UserError, match=r"^method 'lora' needs attention qkv projections, which cnn blocks"):
            check_adapter(backbone, method)
    else:
        check_adapter(backbone, method)


def test_efficientnet_and_mobilenet_blocks_take_adapters_at_their_output_width():
    """Inverted residuals end in conv_pwl, not in the wider depthwise conv: the adapter must fit the output."""
    for name in ("efficientnet-b0", "mobilenetv2"):
        model = inject(build_backbone(name), "mona")
        maps = model(torch.randn(1, 3, 64, 64))
        assert [m.shape[1] for m in maps] == list(get_backbone(name).channels)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


def _lists_of_names(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines of literal collections (tuple, list, set, dict keys) holding two or more registered names."""
    found = []
    for node in ast.walk(tree):
        items = node.keys if isinstance(node, ast.Dict) else node.elts if isinstance(
            node, (ast.Tuple, ast.List, ast.Set)) else []
        if sum(isinstance(i, ast.Constant) and i.value in names for i in items) >= 2:
            found.append(node.lineno)
    return found


def test_no_second_list_of_backbone_names_or_sizes_in_the_package_configs_or_clis():
    """Outside the registry package no literal collection names two backbones, no code states a Swin's depths,
    and the YAML settings name one backbone at most (their default); the mmrotate-style config files keep
    their reference shapes, checked equal to the registry's in tests/test_detection_config.py. CT's settings
    hold one section per network (their sizes: the settings' structure, read by name)."""
    names, registry = set(backbone_names()), PACKAGE / "adapters" / "backbones"
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "configs").rglob("*.py")]:
        if registry in path.parents or path == PACKAGE / "medical" / "settings.py":
            continue
        text = path.read_text(encoding="utf-8")
        found += [(path.name, line) for line in _lists_of_names(ast.parse(text), names)]
        if path.is_relative_to(PACKAGE) and re.search(r"depths\s*[=:]\s*[\[(]\d", text):
            found.append((path.name, "a Swin's depths"))
    for path in (PACKAGE.parent / "configs").rglob("*.yaml"):
        values = [line.split("#")[0] for line in path.read_text().splitlines()]  # without the comments
        sections = {line.strip().rstrip(":") for line in values if line.strip().endswith(":")}
        mentioned = {n for n in names - sections if any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", line)
                                                        for line in values)}
        if len(mentioned) > 1:
            found.append((path.name, sorted(mentioned)))
    assert not found, found


TEMP_MODULE = '''
from domainmona.adapters.backbones import Backbone, register_backbone


@register_backbone
def tiny_convnext() -> Backbone:
    def build(in_chans: int = 3, **options):
        from domainmona.adapters.backbones.features import TimmFeatures

        return TimmFeatures("test_convnext", in_chans, (0, 1, 2, 3), **options)

    return Backbone(name="tiny-convnext", build=build, family="cnn", channels=(24, 32, 48, 64),
                    strides=(4, 8, 16, 32), layouts=("timm",))
'''


def _cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output.strip().splitlines()[-1]


@pytest.fixture
def tiny_backbone(tmp_path, monkeypatch):
    """One registration in a module of the user's, no file of the package touched."""
    (tmp_path / "my_backbones.py").write_text(TEMP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_backbones  # noqa: F401

    yield "tiny-convnext"
    BACKBONE_REGISTRY._entries.pop("tiny-convnext", None)
    sys.modules.pop("my_backbones", None)


@pytest.mark.slow
def test_a_backbone_registered_in_a_temporary_module_trains_in_geo_seg_and_geo_det(tmp_path, tiny_backbone):
    import pyogrio
    import rasterio

    from domainmona.geo.synthetic import SceneSpec, write_scene

    assert check_backbone_name(tiny_backbone) == tiny_backbone and tiny_backbone not in backbone_names()
    seg = write_scene(tmp_path / "seg.tif", tmp_path / "seg.gpkg",
                      SceneSpec(width=512, height=448, bands=4, dtype="uint16", kind="areas", objects=5, seed=4))
    chips = _cli("tile", seg.raster, "--labels", seg.labels, "--out", tmp_path / "seg-chips", "--size", "128",
                 "--overlap", "32", "--task", "segmentation")
    checkpoint = _cli("train", "geo-seg", "--chips", chips, "--work-dir", tmp_path / "seg-work", "--max-iters", "2",
                      "--backbone", tiny_backbone, "--arch", "FPN", "--batch-size", "2")
    out = _cli("tile-predict", seg.raster, "--checkpoint", checkpoint, "--out", tmp_path / "seg.tif.out.tif")
    with rasterio.open(out) as dst, rasterio.open(seg.raster) as src:
        assert (dst.crs, dst.shape) == (src.crs, src.shape)

    det = write_scene(tmp_path / "det.tif", tmp_path / "det.geojson", SceneSpec(width=384, height=384, objects=12,
                                                                                 seed=6))
    chips = _cli("tile", det.raster, "--labels", det.labels, "--out", tmp_path / "det-chips", "--size", "128",
                 "--overlap", "32")
    checkpoint = _cli("train", "geo-det", "--chips", chips, "--work-dir", tmp_path / "det-work", "--max-iters", "2",
                      "--backbone", tiny_backbone)
    out = _cli("tile-predict", det.raster, "--checkpoint", checkpoint, "--out", tmp_path / "det.gpkg",
               "--score-thr", "0.0", "--batch-size", "2")
    assert list(pyogrio.read_info(out)["fields"]) == ["class", "score"]


def _dota_scenes(root: Path) -> Path:
    """Generated scenes labelled with DOTA classes (the synthetic classes renamed)."""
    from domainmona.detection.synthetic import generate_dota_scenes

    generate_dota_scenes(root / "train", 2, 256, seed=0, objects_per_image=(4, 6))
    generate_dota_scenes(root / "test", 1, 256, seed=1, prefix="test", objects_per_image=(4, 6))
    names = {"vehicle": "small-vehicle", "court": "tennis-court", "container": "storage-tank"}
    for labels in (root / "train" / "labelTxt", root / "test" / "labelTxt"):
        for file in labels.glob("*.txt"):
            file.write_text(re.sub(r" (vehicle|court|container) ", lambda m: f" {names[m[1]]} ", file.read_text()))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("backbone,adapter", [("resnet50", "mona"), ("convnext-t", "conv-adapter"),
                                              ("vit-b-16", "lora")])
def test_train_dota_then_test_with_other_backbones(tmp_path, backbone, adapter):
    from safetensors import safe_open

    data = _dota_scenes(tmp_path)
    checkpoint = _cli("train", "dota", "--data", data / "train", "--work-dir", tmp_path / "work", "--backbone",
                      backbone, "--adapter", adapter, "--max-iters", "2", "--patch-size", "128", "--patch-gap", "32")
    with safe_open(checkpoint, "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("neck.") for k in keys) and not any(k.startswith("backbone.body.body.stem") for k in keys)
    assert any(k.startswith("backbone.body.pyramid.") for k in keys) == (backbone == "vit-b-16")
    zipped = _cli("test", "dota", "--checkpoint", checkpoint, "--data", data / "test", "--out", tmp_path / "out")
    assert Path(zipped).name == "task1.zip" and Path(zipped).is_file()


def test_a_method_undefined_for_the_backbone_is_refused_in_one_line_by_train(tmp_path):
    import subprocess

    command = [Path(sys.executable).parent / "domainmona", "train", "dota", "--data", _dota_scenes(tmp_path) / "train",
               "--work-dir", tmp_path / "work", "--backbone", "resnet50", "--adapter", "lora", "--max-iters", "1",
               "--patch-size", "128", "--patch-gap", "32"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "error: method 'lora' needs attention qkv projections, which cnn blocks do not have (try 'mona')"]
    assert not (tmp_path / "work").exists()  # refused before the split or anything else was written


def test_the_registry_package_imports_no_domain():
    for path in (PACKAGE / "adapters" / "backbones").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("domainmona.detection", "domainmona.geo", "domainmona.medical"))


@pytest.mark.slow
def test_geo_seg_trains_convnext_on_four_bands_straight_from_a_scene(tmp_path):
    from safetensors.torch import load_file

    from domainmona.geo.synthetic import SceneSpec, write_scene

    scene = write_scene(tmp_path / "rgbn.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=512, height=448, bands=4, dtype="uint16", kind="areas", objects=5, seed=4))
    checkpoint = _cli("train", "geo-seg", "--scenes", scene.raster, "--labels", scene.labels, "--bands", "1,2,3,4",
                      "--size", "128", "--overlap", "32", "--work-dir", tmp_path / "work", "--backbone", "convnext-t",
                      "--max-iters", "2", "--batch-size", "2", "--arch", "FPN")
    stem = load_file(checkpoint)["encoder.model.stem_0.weight"]
    assert stem.shape == (96, 4, 4, 4)  # ConvNeXt-T's stem takes the four bands
    assert "encoder.model.stem_0.weight" in load_file(str(tmp_path / "work" / "adapter.safetensors"))  # it trained
    out = _cli("tile-predict", scene.raster, "--checkpoint", checkpoint, "--out", tmp_path / "classes.tif")
    assert Path(out).is_file()
