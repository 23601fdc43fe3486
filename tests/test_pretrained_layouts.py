"""Pretrained weights in the layouts users hold, into every registered 2D backbone family built by
`build_backbone` (domainmona.adapters.pretrained): each test writes a seeded backbone's weights in one layout,
loads them into a differently seeded one and asserts the counts and equal outputs; files for another
architecture are refused; RGB input filters load inflated for N bands (domainmona.adapters.bands)."""

from __future__ import annotations

import argparse
import functools

import pytest
import timm
import torch
from safetensors.torch import save_file

from domainmona.adapters import inject
from domainmona.adapters.backbones import build_backbone
from domainmona.adapters.backbones.cnn_weights import rename
from domainmona.adapters.bands import input_filters
from domainmona.adapters.pretrained import load_pretrained
from domainmona.adapters.weights import canonical_name
from domainmona.errors import UserError

IMAGE = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
# timm's names into mmpretrain's, as mmpretrain's ConvNeXt and VisionTransformer name them (the loader goes back)
TO_MMPRETRAIN_CONVNEXT = ((r"^stem\.", "downsample_layers.0."),
                          (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
                          (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."), (r"\.conv_dw\.", ".depthwise_conv."),
                          (r"\.mlp\.fc1\.", ".pointwise_conv1."), (r"\.mlp\.fc2\.", ".pointwise_conv2."))
TO_MMPRETRAIN_VIT = ((r"^patch_embed\.proj\.", "patch_embed.projection."), (r"^norm\.", "ln1."),
                     (r"^blocks\.(\d+)\.norm(\d)\.", r"layers.\1.ln\2."), (r"\.mlp\.fc1\.", ".ffn.layers.0.0."),
                     (r"\.mlp\.fc2\.", ".ffn.layers.1."), (r"^blocks\.", "layers."))


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every float tensor (norms, layer scales and BN statistics too, so that loading them shows)."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.02)
    model.eval()  # mmdet's ResNet.train returns None
    return model


def backbone(name: str, seed: int = 1, bands: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(name, in_chans=bands).eval()


@functools.cache
def source(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A seeded, perturbed backbone and its weights under the plain timm model's names."""
    model = randomise(backbone(name, seed=0))
    return model, {canonical_name(k).removeprefix("model."): v for k, v in model.body.state_dict().items()}


@functools.cache
def timm_file(name: str) -> dict[str, torch.Tensor]:
    """The whole timm model's state dict, head included: the source backbone's weights and, for the tensors
    the features leave out, zeros of the shapes timm gives (built on the meta device: shapes only)."""
    model, state = source(name)
    with torch.device("meta"):
        full = timm.create_model(model.body.pretrained_cfg["architecture"]).state_dict()
    assert set(state) < set(full)
    return {k: state[k] if k in state else torch.zeros(v.shape, dtype=v.dtype) for k, v in full.items()}


def shapes_only(name: str) -> dict[str, torch.Tensor]:
    """A registered backbone's tensors under timm's names, as zeros (enough for what the refusals read)."""
    with torch.device("meta"):
        state = build_backbone(name).body.state_dict()
    return {canonical_name(k).removeprefix("model."): torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}


def features(model: torch.nn.Module, image: torch.Tensor = IMAGE) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model.body(image))  # the pretrained part (a ViT's pyramid is new and trains)


def load_and_compare(name: str, path, layout: str, unexpected: int | None = None, method: str | None = None):
    """Load into a differently seeded backbone (with `method`'s adapters injected first): every tensor loads and
    the features are the source's."""
    target = backbone(name) if method is None else inject(backbone(name), method)
    report = load_pretrained(target, path)
    assert report.layout == layout
    assert (report.loaded, report.missing) == (len(source(name)[1]), [])
    if unexpected is not None:
        assert len(report.unexpected) == unexpected, report.unexpected
    for ours, theirs in zip(features(target), features(source(name)[0]), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    return report


@pytest.mark.parametrize("name", ["resnet50", "convnext-t", "efficientnet-b0", "mobilenetv2", "vit-s-16"])
def test_timm_state_dicts_load_with_their_heads_unused(tmp_path, name):
    path = tmp_path / "timm.safetensors"
    save_file(timm_file(name), str(path))
    report = load_and_compare(name, path, "timm")
    assert report.unexpected and all(k.split(".")[0] in ("fc", "head", "classifier", "conv_head", "bn2", "norm")
                                     for k in report.unexpected)


def _torchvision_features(model: torch.nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """Every intermediate map of a torchvision model (ResNet: its four layers; else each of `features`)."""
    with torch.no_grad():
        if hasattr(model, "layer1"):
            x = model.maxpool(model.relu(model.bn1(model.conv1(image))))
            return [x := layer(x) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)]
        return [image := layer(image) for layer in model.features]


@pytest.mark.parametrize("name, torchvision_name, layout", [
    ("resnet50", "resnet50", "timm"),  # torchvision's ResNet names are timm's
    ("convnext-t", "convnext_tiny", "torchvision"),
    ("efficientnet-b0", "efficientnet_b0", "torchvision"),
    ("mobilenetv2", "mobilenet_v2", "torchvision"),
])
def test_torchvision_weights_compute_what_torchvision_computes(tmp_path, name, torchvision_name, layout):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(2)
    reference = randomise(getattr(torchvision.models, torchvision_name)())
    path = tmp_path / "torchvision.pth"
    torch.save(reference.state_dict(), path)
    target = backbone(name)
    report = load_pretrained(target, path)
    assert report.layout == layout
    assert report.loaded == len(target.body.state_dict()) and not report.missing
    maps = _torchvision_features(reference, IMAGE)
    for ours in features(target):  # the torchvision map of the same shape at the end of the same stage
        torch.testing.assert_close(ours, [m for m in maps if m.shape == ours.shape][-1], rtol=1e-5, atol=1e-5)


def test_openmmlab_resnet_from_mmdet_computes_what_mmdet_computes(tmp_path):
    from mmdet.models.backbones import ResNet

    torch.manual_seed(2)
    reference = randomise(ResNet(depth=50, out_indices=(0, 1, 2, 3)))
    path = tmp_path / "mmpretrain_resnet50.pth"
    torch.save({"meta": {"epoch": 100}, "state_dict": {f"backbone.{k}": v for k, v in reference.state_dict().items()}
                | {"head.fc.weight": torch.zeros(1000, 2048)}}, path)
    target = backbone("resnet50")
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing, report.unexpected) == ("openmmlab", 318, [], [])
    with torch.no_grad():
        for ours, theirs in zip(features(target), reference(IMAGE), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, to_mmpretrain, output_norm", [
    ("convnext-t", TO_MMPRETRAIN_CONVNEXT, "norm3"),  # mmpretrain's norm after the last stage (timm's head norm)
    ("vit-s-16", TO_MMPRETRAIN_VIT, "ln1"),  # the final norm
])
def test_openmmlab_convnext_and_vit_names_load(tmp_path, name, to_mmpretrain, output_norm):
    state = {k: v for k, v in rename(timm_file(name), to_mmpretrain).items() if not k.startswith("head.")}
    state |= {f"{output_norm}.weight": torch.ones(768), f"{output_norm}.bias": torch.zeros(768)}
    path = tmp_path / "mmpretrain.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()} | {"head.fc.weight": torch.zeros(9, 768)}},
               path)
    load_and_compare(name, path, "openmmlab", unexpected=2)  # the output norm: no place in the features


def test_mae_checkpoint_with_its_decoder_and_options_into_an_adapted_vit(tmp_path):
    _, state = source("vit-s-16")
    path = tmp_path / "mae_pretrain_vit_small.pth"
    decoder = {"mask_token": torch.zeros(1, 1, 256), "decoder_embed.weight": torch.zeros(256, 384),
               "decoder_blocks.0.norm1.weight": torch.zeros(256), "norm.weight": torch.ones(384)}
    torch.save({"model": state | decoder, "epoch": 799, "args": argparse.Namespace(mask_ratio=0.75)}, path)
    load_and_compare("vit-s-16", path, "mae", unexpected=len(decoder), method="lora")  # LoRA starts at zero


@pytest.mark.parametrize("name, wrap", [("vit-s-16", "backbone."), ("resnet50", "module.backbone.")])
def test_dino_teacher_without_its_head(tmp_path, name, wrap):
    _, state = source(name)
    path = tmp_path / "dino.pth"
    teacher = {f"{wrap}{k}": v for k, v in state.items()} | {f"{wrap.removesuffix('backbone.')}head.mlp.0.weight":
                                                            torch.zeros(2048, 8)}
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}
    torch.save({"student": student, "teacher": teacher, "epoch": 100}, path)
    load_and_compare(name, path, "dino", unexpected=0)


@pytest.mark.parametrize("name, encoder, head", [("vit-s-16", "base_encoder", "head.0.weight"),  # MoCo v3
                                                 ("resnet50", "encoder_q", "fc.0.weight")])  # MoCo v2, SSL4EO
def test_moco_base_encoder_without_its_projection_head(tmp_path, name, encoder, head):
    _, state = source(name)
    path = tmp_path / "moco.pth.tar"
    encoders = {f"module.{e}.{k}": v for e in (encoder, "momentum_encoder") for k, v in state.items()}
    torch.save({"arch": name, "state_dict": encoders | {f"module.{encoder}.{head}": torch.zeros(8, 8),
                                                        "module.predictor.0.weight": torch.zeros(8, 8)}}, path)
    load_and_compare(name, path, "moco", unexpected=0)


def test_position_embedding_for_another_grid_is_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    state = dict(source("vit-s-16")[1])
    state["pos_embed"] = torch.randn(1, 1 + 4 * 4, 384)  # a 4x4 grid: 64 px at patch 16 (SatMAE: 96 px at 8 ...)
    path = tmp_path / "vit_64px.safetensors"
    save_file(state, str(path))
    target = backbone("vit-s-16")
    report = load_pretrained(target, path)
    assert report.loaded == len(state) and not report.missing
    torch.testing.assert_close(target.body.model.pos_embed.data,
                               resample_abs_pos_embed(state["pos_embed"], [14, 14], [4, 4], num_prefix_tokens=1))


@pytest.mark.parametrize("weights, into, message", [
    ("resnet50", "convnext-t", "no tensor fits this cnn backbone"),
    ("vit-b-16", "vit-s-16", r"'blocks\.0\.attn\.proj\.bias' is \(768,\) in the file, \(384,\) here"),
    ("resnet50", "resnet101", r"it fills only 318 of the backbone's 624 tensors"),
    ("resnet101", "resnet50", r"holds 306 tensors of blocks this backbone lacks, e\.g\. 'layer3\.\d+\."),
])
def test_weights_of_another_architecture_are_refused_and_load_nothing(tmp_path, weights, into, message):
    path = tmp_path / f"{weights}.safetensors"
    save_file(shapes_only(weights), str(path))
    target = backbone(into)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=message) as refused:
        load_pretrained(target, path)
    assert "\n" not in str(refused.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


@pytest.mark.parametrize("bands", [4, 1])
@pytest.mark.parametrize("name", ["resnet50", "convnext-t", "vit-s-16"])
def test_rgb_input_filters_load_inflated_for_other_band_counts(tmp_path, name, bands):
    """The rule's exact property on the whole backbone: 4 bands whose 4th is the mean of R, G, B (1 band: a grey
    image) give the features the RGB model gives the RGB (grey) image."""
    rgb_model, state = source(name)
    path = tmp_path / "rgb.safetensors"
    save_file(state, str(path))
    target = backbone(name, bands=bands)
    report = load_pretrained(target, path)
    assert report.inflated == [canonical_name(input_filters(target.body)).removeprefix("model.")]
    assert (report.loaded, report.missing, report.unexpected) == (len(state), [], [])
    assert "(1 inflated from RGB)" in str(report)
    rgb = IMAGE if bands > 1 else IMAGE.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1)
    image = torch.cat([IMAGE, IMAGE.mean(dim=1, keepdim=True)], dim=1) if bands == 4 else rgb[:, :1]
    for ours, theirs in zip(features(target, image), features(rgb_model, rgb), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
