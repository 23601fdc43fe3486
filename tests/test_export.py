"""`domainmona export` to ONNX and `--runtime onnx`: onnxruntime (CPU) against torch on the same inputs, the
predict commands' outputs against the torch runtime's, and one-line refusals of foreign files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch

from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.medical import synthetic

LOGIT_TOLERANCE = 1e-4
ARGMAX_AGREEMENT = 0.9999


def _cli(*args) -> tuple[int, str, str]:
    """`domainmona ARGS` in this process, as `main` runs it: (exit code, stdout, stderr)."""
    from domainmona.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _refused(args, needle: str) -> None:
    code, _, err = _cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


def _perturb_trainable(model: torch.nn.Module, seed: int) -> None:
    """Move every adapter tensor off its initial value (LoRA's zero B, Mona's identity scales), so that merging
    and fusing have something to fold."""
    from domainmona.adapters.inject import is_adapter_parameter

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_adapter_parameter(name):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def _onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images.numpy()})[0]


def _assert_parity(reference: np.ndarray, exported: np.ndarray) -> None:
    assert reference.shape == exported.shape
    assert np.abs(reference - exported).max() <= LOGIT_TOLERANCE
    assert (reference.argmax(1) == exported.argmax(1)).mean() >= ARGMAX_AGREEMENT


# --- geo-seg ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def geo_root(tmp_path_factory) -> Path:
    """Segmentation chips of a small 3-band scene (tiles 64/16) and a scene to predict."""
    from test_geo_predict_many import training_chips

    root = tmp_path_factory.mktemp("geo")
    training_chips(root)
    write_scene(root / "scene.tif", root / "scene.gpkg", SceneSpec(width=200, height=170, objects=3, frame=16,
                                                                    seed=2, block=64))
    return root


def geo_checkpoint(root: Path, adapter: str, seed: int = 0) -> Path:
    """A geo-seg checkpoint on the micro Swin with ``adapter``, its trainable tensors perturbed (seeded)."""
    from domainmona.geo.segmodel import build_model, load_settings, model_spec, save_segmenter

    path = root / f"seg-{adapter}-{seed}.safetensors"
    if not path.exists():
        spec = model_spec(load_settings(encoder="micro", adapter=adapter),
                          json.loads((root / "chips" / "manifest.json").read_text()))
        torch.manual_seed(seed)
        model = build_model(spec)
        _perturb_trainable(model, seed)
        save_segmenter(model, spec, path)
    return path


def _check_geo_export(root: Path, adapter: str, tmp_path: Path) -> None:
    from domainmona.export import export_checkpoint
    from domainmona.geo.segmodel import load_segmenter

    checkpoint = geo_checkpoint(root, adapter)
    metadata = export_checkpoint(checkpoint, tmp_path / "model.onnx")
    assert metadata["kind"] == "geo-seg" and metadata["tile_size"] == "64" and metadata["input_multiple"] == "32"
    model, _ = load_segmenter(checkpoint)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.cpu()(images).numpy()
    _assert_parity(reference, _onnx_logits(tmp_path / "model.onnx", images))


def test_geo_seg_mona_export_matches_torch_and_carries_its_metadata(geo_root, tmp_path):
    import onnx

    from domainmona import __version__
    from domainmona.export import sha256

    _check_geo_export(geo_root, "mona", tmp_path)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["producer"] == f"domainmona {__version__}"
    assert props["source_sha256"] == sha256(geo_checkpoint(geo_root, "mona"))
    assert json.loads(props["classes"]) == ["background", "plane", "ship", "storage-tank"]
    assert json.loads(props["bands"]) == [1, 2, 3] and props["tile_overlap"] == "16"
    assert len(json.loads(props["normalisation"])["bands"]) == 3
    assert json.loads(props["input_shape"]) == ["batch", 3, 64, 64]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lora", "ssf", "vpt-deep", "conv-adapter"])
def test_geo_seg_export_matches_torch_for_each_method_family(geo_root, tmp_path, adapter):
    _check_geo_export(geo_root, adapter, tmp_path)


def test_tile_predict_onnx_runtime_writes_the_torch_runtime_class_map(geo_root, tmp_path):
    checkpoint = geo_checkpoint(geo_root, "lora")
    code, _, err = _cli("export", checkpoint, "--out", tmp_path / "model.onnx")
    assert code == 0, err
    scene = geo_root / "scene.tif"
    outputs = {}
    for runtime in ("torch", "onnx"):
        extra = ["--model", tmp_path / "model.onnx"] if runtime == "onnx" else []
        code, _, err = _cli("tile-predict", scene, "--checkpoint", checkpoint, "--out", tmp_path / f"{runtime}.tif",
                            "--runtime", runtime, *extra)
        assert code == 0, err
        with rasterio.open(tmp_path / f"{runtime}.tif") as dst:
            outputs[runtime] = dst.read(1)
    assert (outputs["torch"] == outputs["onnx"]).mean() >= ARGMAX_AGREEMENT
    assert len(np.unique(outputs["torch"])) > 1  # a real class map, not one constant


def test_bad_inputs_are_refused_in_one_line_and_nothing_is_written(geo_root, tmp_path):
    from safetensors.torch import save_file

    from domainmona.detection.checkpoint import DETECTOR_KEYS

    checkpoint = geo_checkpoint(geo_root, "mona")
    out = tmp_path / "model.onnx"
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    _refused(["export", foreign, "--out", out], "not a readable PyTorch file")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    _refused(["export", plain, "--out", out], "not a geo-seg, detector or segment-ct checkpoint")
    detector = tmp_path / "detector.safetensors"
    save_file({"w": torch.zeros(2)}, str(detector), metadata={key: "x" for key in DETECTOR_KEYS})
    _refused(["export", detector, "--out", out], "not a domainmona adapter")
    assert not out.exists()

    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"a user's file")
    _refused(["export", checkpoint, "--out", taken], "was not written by domainmona")
    assert taken.read_bytes() == b"a user's file"

    other = geo_checkpoint(geo_root, "mona", seed=1)
    assert _cli("export", other, "--out", out)[0] == 0
    assert _cli("export", other, "--out", out)[0] == 0  # its own earlier export is replaced
    scene, pred = geo_root / "scene.tif", tmp_path / "pred.tif"
    _refused(["tile-predict", scene, "--checkpoint", checkpoint, "--out", pred, "--runtime", "onnx", "--model", out],
             "exported from another checkpoint")
    _refused(["tile-predict", scene, "--checkpoint", checkpoint, "--out", pred, "--runtime", "onnx", "--model",
              taken], "not an ONNX file that 'domainmona export' wrote")
    _refused(["tile-predict", scene, "--checkpoint", checkpoint, "--out", pred, "--runtime", "onnx"],
             "--runtime onnx needs --model")
    _refused(["tile-predict", scene, "--checkpoint", other, "--out", pred, "--runtime", "onnx", "--model", out,
              "--size", "96"], "takes 64-pixel tiles")
    assert not pred.exists()


# --- CT -------------------------------------------------------------------------------------------------------

UNETR_TINY = {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SEGRESNET_TINY = {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}


def ct_checkpoint(root: Path, name: str, roi: int, seed: int = 0) -> Path:
    """A segment-ct checkpoint of a tiny ``name`` network with Mona-3D, its trainable tensors perturbed."""
    from domainmona.medical.checkpoint import save_checkpoint
    from domainmona.medical.model import assemble
    from domainmona.medical.settings import load_settings

    path = root / f"{name}-{seed}.pt"
    if not path.exists():
        settings = load_settings(None, model={"name": name, "feature_size": 12, "adapter_cfg": {"inner_dim": 8},
                                              "unetr": UNETR_TINY, "segresnet": SEGRESNET_TINY},
                                 train={"roi": roi, "sw_batch_size": 2})
        torch.manual_seed(seed)
        model = assemble(settings["model"], 4, roi=roi)
        _perturb_trainable(model, seed)
        save_checkpoint(path, model=model.state_dict(), settings=settings, num_classes=4,
                        label_names={"1": "liver", "2": "spleen", "3": "kidney"})
    return path


def _check_ct_export(root: Path, name: str, roi: int) -> Path:
    from domainmona.export import export_checkpoint
    from domainmona.medical.checkpoint import load_checkpoint
    from domainmona.medical.predict import model_from_checkpoint

    checkpoint = ct_checkpoint(root, name, roi)
    out = root / f"{name}.onnx"
    metadata = export_checkpoint(checkpoint, out)
    assert metadata["kind"] == "ct" and metadata["roi_size"] == str(roi) and metadata["orientation"] == "RAS"
    assert json.loads(metadata["spacing"]) == [1.5, 1.5, 2.0]
    assert json.loads(metadata["normalisation"])["hu_min"] == -175.0
    model = model_from_checkpoint(load_checkpoint(checkpoint), torch.device("cpu"), checkpoint)
    images = torch.rand(2, 1, roi, roi, roi, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(images).numpy()
    _assert_parity(reference, _onnx_logits(out, images))
    return checkpoint


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ct-export")


@pytest.mark.parametrize("name", ["segresnet", "unetr"])
def test_ct_export_matches_torch(ct_root, name):
    _check_ct_export(ct_root, name, 32)


@pytest.mark.slow
def test_swinunetr_export_matches_torch(ct_root):
    _check_ct_export(ct_root, "swinunetr", 64)


def test_segment_ct_predict_onnx_runtime_matches_torch_runtime(ct_root, tmp_path):
    dataset = synthetic.write_dataset(tmp_path / "task", cases=1, shape=(40, 40, 20), seed=3)
    image = sorted((dataset / "imagesTr").iterdir())[0]
    checkpoint = ct_checkpoint(ct_root, "segresnet", 32)
    model = tmp_path / "segresnet.onnx"
    assert _cli("export", checkpoint, "--out", model)[0] == 0
    labels = {}
    for runtime in ("torch", "onnx"):
        extra = ["--model", model] if runtime == "onnx" else []
        code, _, err = _cli("segment-ct", "predict", image, "--checkpoint", checkpoint, "--out", tmp_path / runtime,
                            "--runtime", runtime, *extra)
        assert code == 0, err
        labels[runtime] = np.asarray(nib.load(tmp_path / runtime / image.name).dataobj)
    torch_labels, onnx_labels = labels["torch"], labels["onnx"]
    assert torch_labels.shape == onnx_labels.shape and (torch_labels > 0).any()
    for label in (set(np.unique(torch_labels)) | set(np.unique(onnx_labels))) - {0}:
        a, b = torch_labels == label, onnx_labels == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, label
    assert (torch_labels == onnx_labels).mean() >= ARGMAX_AGREEMENT

    other = ct_checkpoint(ct_root, "segresnet", 32, seed=1)
    _refused(["segment-ct", "predict", image, "--checkpoint", other, "--out", tmp_path / "refused", "--runtime",
              "onnx", "--model", model], "exported from another checkpoint")
    _refused(["segment-ct", "predict", image, "--checkpoint", checkpoint, "--out", tmp_path / "refused",
              "--model", model], "--model goes with --runtime onnx")
    assert not (tmp_path / "refused").exists()
