"""End to end on real parts: tile → `train geo-seg` (smp + timm Swin + Mona) → `tile-predict` → GeoTIFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from domainmona.adapters.inject import is_adapter_parameter
from domainmona.cli import app
from domainmona.geo.synthetic import SceneSpec, write_scene

MICRO = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output.strip().splitlines()[-1]


@pytest.mark.slow
def test_tile_train_predict_segmentation(tmp_path):
    import timm

    torch.manual_seed(0)
    scene = write_scene(tmp_path / "scene.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=512, height=448, bands=4, dtype="uint16", kind="areas", objects=5, seed=4))
    # A local "pretrained" encoder file in timm's layout (generated, never downloaded).
    weights = tmp_path / "micro_timm.safetensors"
    save_file(timm.create_model("swin_tiny_patch4_window7_224", **MICRO).state_dict(), str(weights))

    chips = _cli("tile", scene.raster, "--labels", scene.labels, "--out", tmp_path / "chips", "--size", "224",
                 "--overlap", "64", "--bands", "3,2,1", "--task", "segmentation", "--shots", "3")
    checkpoint = _cli("train", "geo-seg", "--chips", chips, "--work-dir", tmp_path / "work", "--max-iters", "6",
                      "--encoder", "micro", "--arch", "FPN", "--batch-size", "2", "--pretrained", weights)
    assert checkpoint == str(tmp_path / "work" / "geo-seg.safetensors")
    assert (tmp_path / "work" / "adapter.safetensors").is_file()

    # Only the adapters (and the decoder) trained: the encoder's base weights are the pretrained file's.
    state, base = load_file(checkpoint), load_file(str(weights))
    encoder = {k[len("encoder.model."):].replace("layers_", "layers."): v  # smp's feature wrapper flattens names
               for k, v in state.items() if k.startswith("encoder.model.")}
    shared = [k for k in encoder if k in base]
    assert len(shared) > 50 and all(torch.equal(encoder[k], base[k]) for k in shared)
    adapter_file = load_file(str(tmp_path / "work" / "adapter.safetensors"))
    adapters = [k for k in state if is_adapter_parameter(k)]
    assert adapters and set(adapters) <= set(adapter_file)  # the adapter-only file holds every adapter tensor
    assert not any(k.startswith("encoder.") and not is_adapter_parameter(k) for k in adapter_file)
    assert all(torch.equal(adapter_file[k], state[k]) for k in adapters)

    out = _cli("tile-predict", scene.raster, "--checkpoint", checkpoint, "--out", tmp_path / "pred.tif",
               "--batch-size", "3")
    with rasterio.open(scene.raster) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        predicted, valid = dst.read(1), src.dataset_mask() > 0
    assert (predicted[~valid] == 255).all()
    assert set(np.unique(predicted[valid])) <= {0, 1, 2}


@pytest.mark.slow
def test_tile_train_predict_detection(tmp_path):
    import pyogrio
    from rasterio.crs import CRS

    scene = write_scene(tmp_path / "scene.tif", tmp_path / "labels.geojson",
                        SceneSpec(width=512, height=512, objects=18, seed=6))
    chips = _cli("tile", scene.raster, "--labels", scene.labels, "--out", tmp_path / "chips", "--size", "256",
                 "--overlap", "64")
    checkpoint = _cli("train", "geo-det", "--chips", chips, "--work-dir", tmp_path / "work", "--max-iters", "2",
                      "--backbone", "micro")
    assert Path(checkpoint).is_file() and Path(checkpoint).with_suffix(".geo.json").is_file()
    out = _cli("tile-predict", scene.raster, "--checkpoint", checkpoint, "--out", tmp_path / "dets.gpkg",
               "--score-thr", "0.0", "--batch-size", "2")
    info = pyogrio.read_info(out)
    assert CRS.from_user_input(info["crs"]) == scene.crs and list(info["fields"]) == ["class", "score"]
    _, _, wkb, _ = pyogrio.raw.read(out)
    centres = shapely.centroid(shapely.from_wkb(wkb))  # an untrained detector: only where it puts boxes
    with rasterio.open(scene.raster) as src:
        # within a millimetre: a box centred on the scene's edge has a centroid a rounding error outside
        assert shapely.covers(shapely.box(*src.bounds).buffer(1e-3), centres).all()
