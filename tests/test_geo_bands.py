"""Any band count: the RGB patch-embedding inflation rule (domainmona.geo.bands), shared by geo-seg and
geo-det, and N-band detection chips from `tile` through `train geo-det` to `tile-predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from domainmona.cli import app
from domainmona.geo.bands import band_normalisation, inflate_rgb_filters
from domainmona.geo.synthetic import SceneSpec, write_scene


def _embed(weight: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv2d(image, weight, stride=4)


@pytest.mark.parametrize("bands", [4, 13])
def test_other_bands_equal_to_the_rgb_mean_embed_like_the_rgb_image(bands):
    torch.manual_seed(0)
    rgb_filters = torch.randn(32, 3, 4, 4, dtype=torch.float64)
    rgb = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    extra = rgb.mean(dim=1, keepdim=True).repeat(1, bands - 3, 1, 1)
    inflated = inflate_rgb_filters(rgb_filters, bands)
    assert inflated.shape == (32, bands, 4, 4)
    torch.testing.assert_close(_embed(inflated, torch.cat([rgb, extra], dim=1)), _embed(rgb_filters, rgb))
    # the rule is not a copy or a plain rescale: other extra-band content changes the output
    assert not torch.allclose(_embed(inflated, torch.cat([rgb, torch.rand_like(extra)], 1)), _embed(rgb_filters, rgb))


@pytest.mark.parametrize("bands", [1, 2, 4, 13])
def test_a_grey_image_keeps_its_activation_for_any_band_count(bands):
    torch.manual_seed(1)
    rgb_filters = torch.randn(16, 3, 4, 4, dtype=torch.float64)
    grey = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(_embed(inflate_rgb_filters(rgb_filters, bands), grey.repeat(1, bands, 1, 1)),
                               _embed(rgb_filters, grey.repeat(1, 3, 1, 1)))


def test_band_normalisation_gives_other_bands_the_rgb_mean():
    mean, std = band_normalisation([120.0, 110.0, 100.0], [60.0, 57.0, 54.0], 5)
    assert mean == [120.0, 110.0, 100.0, 110.0, 110.0] and std == [60.0, 57.0, 54.0, 57.0, 57.0]
    assert band_normalisation([120.0, 110.0, 100.0], [60.0, 57.0, 54.0], 2) == ([110.0] * 2, [57.0] * 2)


@pytest.mark.parametrize("backbone", ["micro", "convnext-t", "vit-s-16"])
def test_geo_seg_encoder_on_four_bands_starts_from_the_inflated_rgb_filters(tmp_path, backbone):
    """Every backbone through one rule: the input convolution's RGB filters are inflated as the weights load,
    and that convolution trains."""
    from domainmona.adapters.backbones import get_backbone
    from domainmona.adapters.backbones.features import SmpEncoder, input_convolution
    from domainmona.adapters.inject import adapter_parameter_names
    from domainmona.geo.segmodel import build_model
    from domainmona.geo.segtrain import _load_encoder_weights

    spec = {"arch": "FPN", "decoder_kwargs": {}, "backbone": backbone, "in_channels": 4, "classes": ["a"],
            "size": 64, "adapter": "mona", "adapter_cfg": {}}
    timm_name, timm_kwargs = get_backbone(backbone).timm or (None, {})
    spec.update(timm=timm_name, timm_kwargs=timm_kwargs)
    rgb = build_model({**spec, "in_channels": 3})
    weights = tmp_path / "rgb.safetensors"
    # the RGB encoder's own weights, as a pretrained file holds them (no adapters, no pyramid)
    inner = rgb.encoder.features.body.model if isinstance(rgb.encoder, SmpEncoder) else rgb.encoder.model
    added = adapter_parameter_names(inner)
    save_file({k: v for k, v in inner.state_dict().items() if k not in added}, str(weights))
    model = build_model(spec)
    _load_encoder_weights(model, weights)
    conv = input_convolution(model.encoder)
    torch.testing.assert_close(conv.weight.data, inflate_rgb_filters(input_convolution(rgb.encoder).weight.data, 4))
    assert conv.weight.requires_grad


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output.strip().splitlines()[-1]


def test_thirteen_band_detection_chips_are_uint8_geotiffs(tmp_path):
    scene = write_scene(tmp_path / "s2.tif", tmp_path / "l.gpkg",
                        SceneSpec(width=256, height=256, bands=13, dtype="uint16", objects=6, frame=8, seed=3))
    chips = Path(_cli("tile", scene.raster, "--labels", scene.labels, "--out", tmp_path / "chips", "--size", "128",
                      "--overlap", "32"))
    images = sorted((chips / "images").iterdir())
    assert images and all(p.suffix == ".tif" for p in images)
    with rasterio.open(images[0]) as src:
        assert (src.count, src.dtypes[0]) == (13, "uint8")
        assert src.read().max() == 255  # stretched like the PNG chips


@pytest.mark.slow
def test_four_band_scene_trains_geo_det_and_predicts_polygons(tmp_path):
    import pyogrio

    from domainmona.detection.train import MICRO_WEIGHTS

    scene = write_scene(tmp_path / "rgbn.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=384, height=384, bands=4, dtype="uint16", objects=12, seed=6))
    chips = _cli("tile", scene.raster, "--labels", scene.labels, "--out", tmp_path / "chips", "--size", "256",
                 "--overlap", "64")
    checkpoint = _cli("train", "geo-det", "--chips", chips, "--work-dir", tmp_path / "work", "--max-iters", "2",
                      "--backbone", "micro")
    from domainmona.detection.checkpoint import DetectorInfo

    with safe_open(checkpoint, "pt") as f:
        info = DetectorInfo.from_metadata(f.metadata(), Path(checkpoint))
    pipeline = info.config(Path(checkpoint)).train_dataloader.dataset.pipeline
    assert [s["type"] for s in pipeline[:2]] == ["LoadGeoChip", "NormaliseBands"]
    assert [tuple(s["scale"]) for s in pipeline if s["type"] == "mmdet.Resize"] == [(256, 256)]  # the chip size
    tensors = load_file(checkpoint)
    trained = tensors["backbone.patch_embed.projection.weight"]  # saved: it trains with 4 bands
    start = inflate_rgb_filters(load_file(str(MICRO_WEIGHTS))["patch_embed.projection.weight"], 4)
    assert trained.shape == start.shape == (32, 4, 4, 4)
    assert 0 < (trained - start).abs().max() < 0.1  # moved a little from the inflated start
    out = _cli("tile-predict", scene.raster, "--checkpoint", checkpoint, "--out", tmp_path / "dets.gpkg",
               "--score-thr", "0.0", "--batch-size", "2")
    info = pyogrio.read_info(out)
    assert info["features"] > 0 and list(info["fields"]) == ["class", "score"]
