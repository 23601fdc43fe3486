"""`domainmona export`: a geo-seg or segment-ct checkpoint as one self-describing ONNX file, and `OnnxNetwork`,
which runs such a file with onnxruntime wherever the pipelines call the torch network.

Adapters are merged and Mona fused first (`prepare_for_inference`), so the graph is the plain network. The
file's `metadata_props` carry what a consumer needs besides the pixels (classes, bands, normalisation, tile or
ROI size and overlap, CT spacing and orientation, the input shape) and the SHA-256 of the checkpoint it came
from, which `--runtime onnx` compares with `--checkpoint`: an ONNX file from another model is refused.

Exporter: torch's dynamo exporter (`torch.export`, the default since torch 2.9). The TorchScript exporter
cannot export UPerNet's pyramid pooling (adaptive pooling of a tensor whose size its tracer loses after a
permute). Batch is dynamic; the spatial axes are fixed at the tile or ROI the pipelines feed: timm's Swin
builds its shifted-window masks and UNETR its position embeddings for one size, and the dynamo graphs with
symbolic spatial sizes disagreed with torch (the micro Swin + UPerNet) or failed in onnxruntime (SegResNet's
fused Mona3d reshape), while at fixed sizes every network matches torch to ~1e-5.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainmona import __version__
from domainmona.errors import UserError
from domainmona.io import PRODUCER, atomic_path, claim_file
from domainmona.options import check_memory, window_bytes

FORMAT = "domainmona.onnx/1"
OPSET = 18
INPUT, OUTPUT = "image", "logits"
GEO_SEG, CT = "geo-seg", "ct"
DETECTOR = "detector"


def sha256(path: Path) -> str:
    """The file's fingerprint, read in 1 MiB chunks (CT checkpoints hold hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Exportable:
    """A network in its inference form with the metadata its ONNX file carries."""

    network: Any  # torch.nn.Module on the CPU, in eval mode, adapters merged and fused
    input_shape: tuple[int, ...]  # one sample: (channels, *spatial)
    metadata: dict[str, str]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def geo_exportable(checkpoint: Path, spec: dict, size: int | None) -> Exportable:
    """A geo-seg checkpoint (domainmona.geo.segmodel) rebuilt for ``size``-pixel tiles (default: training's)."""
    from domainmona.geo.segmodel import load_segmenter

    size = spec["size"] if size is None else size
    if size < 32 or size % 32:
        raise UserError(f"--size {size}: geo-seg tiles must be a positive multiple of 32")
    check_memory("--size", size, window_bytes(size, bands=spec["in_channels"], batch=2),
                 f"the example batch of 2 {size}x{size} tiles the exporter traces")
    network, spec = load_segmenter(checkpoint, size)
    metadata = {"kind": GEO_SEG, "classes": _json(["background", *spec["classes"]]), "bands": _json(spec["bands"]),
                "normalisation": _json({"rule": "clip each band to [p_low, p_high], then (x - mean) / std; "
                                                "nodata pixels 0 after normalising", "bands": spec["stats"]}),
                "tile_size": str(size), "tile_overlap": str(spec["overlap"]), "input_multiple": "32",
                "network": f"{spec['arch']} on {spec['backbone']} ({spec['adapter']})"}
    return Exportable(network.cpu(), (spec["in_channels"], size, size), metadata)


def ct_exportable(checkpoint: Path) -> Exportable:
    """A segment-ct checkpoint (SwinUNETR, UNETR or SegResNet) at its training ROI."""
    import torch

    from domainmona.medical.checkpoint import load_checkpoint
    from domainmona.medical.predict import model_from_checkpoint
    from domainmona.medical.settings import roi_rule

    content = load_checkpoint(checkpoint)
    settings = content["settings"]
    roi, pre = settings["train"]["roi"], settings["preprocess"]
    names = {int(k): v for k, v in content["label_names"].items()}
    classes = ["background", *(names.get(i, f"class {i}") for i in range(1, content["num_classes"]))]
    metadata = {"kind": CT, "classes": _json(classes), "bands": _json(["CT (HU)"]),
                "normalisation": _json({"rule": "clip HU to [hu_min, hu_max], scale to [0, 1]",
                                        "hu_min": pre["hu_min"], "hu_max": pre["hu_max"]}),
                "roi_size": str(roi), "roi_overlap": str(settings["train"]["overlap"]),
                "spacing": _json(pre["spacing"]), "orientation": pre["orientation"],
                "input_multiple": str(roi_rule(settings["model"])[0]),
                "network": f"{settings['model']['name']} ({settings['model']['adapter']})"}
    network = model_from_checkpoint(content, torch.device("cpu"), checkpoint)
    return Exportable(network, (1, roi, roi, roi), metadata)


def exportable(checkpoint: Path, size: int | None = None) -> Exportable:
    """The checkpoint's network and metadata, whatever pipeline wrote it; one line for anything else."""
    from domainmona.detection.checkpoint import DETECTOR_KEYS
    from domainmona.geo.segmodel import read_spec
    from domainmona.io import read_metadata

    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: no such checkpoint file")
    if checkpoint.suffix == ".safetensors":
        spec = read_spec(checkpoint)
        if spec is not None:
            return geo_exportable(checkpoint, spec, size)
        raise UserError(f"{checkpoint}: not a geo-seg, detector or segment-ct checkpoint of domainmona's")
    if size is not None:
        raise UserError("--size is for geo-seg checkpoints; a CT network is exported at its training ROI")
    return ct_exportable(checkpoint)


def onnx_metadata(path: Path) -> dict[str, str] | None:
    """The `metadata_props` of an ONNX file domainmona exported, or None for any other file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, truncated, or another format: not ours, whatever onnx's reason
        return None
    props = {p.key: p.value for p in model.metadata_props}
    return props if props.get("format") == FORMAT else None


def onnx_is_ours(path: Path) -> bool:
    return onnx_metadata(path) is not None


def export_checkpoint(checkpoint: Path, out: Path, size: int | None = None) -> dict[str, str]:
    """Write ``checkpoint``'s network to ``out`` (replacing only an ONNX file domainmona exported); returns the
    file's metadata."""
    import torch

    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: must end in .onnx")
    claim_file(out, [checkpoint], is_ours=onnx_is_ours, what="--out")
    if is_detector(checkpoint):
        if size is not None:
            raise UserError("--size is for geo-seg checkpoints; a detector is exported at its network input")
        return export_detector(checkpoint, out)
    source = exportable(checkpoint, size)
    metadata = {"format": FORMAT, "producer": f"{PRODUCER} {__version__}", **source.metadata,
                "input_name": INPUT, "output_name": OUTPUT, "input_shape": _json(["batch", *source.input_shape]),
                "source_checkpoint": checkpoint.name, "source_sha256": sha256(checkpoint)}
    torch.manual_seed(0)
    example = torch.zeros(2, *source.input_shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(source.network, (example,), dynamo=True, verbose=False, opset_version=OPSET,
                                    input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},))
    program.model.metadata_props.update(metadata)
    with atomic_path(out) as tmp:
        program.save(tmp, external_data=False)
    return metadata


def is_detector(checkpoint: Path) -> bool:
    from domainmona.detection.checkpoint import DETECTOR_KEYS
    from domainmona.io import read_metadata

    return (checkpoint.is_file() and checkpoint.suffix == ".safetensors"
            and all(key in read_metadata(checkpoint) for key in DETECTOR_KEYS))


def roi_head_path(out: Path) -> Path:
    """The RoI head graph written beside a detector's MODEL.onnx: MODEL.roi_head.onnx."""
    return out.with_name(f"{out.stem}.roi_head.onnx")


def export_detector(checkpoint: Path, out: Path) -> dict[str, str]:
    """A detector checkpoint as two ONNX files (``out`` and `roi_head_path`; see domainmona.detection.export
    for the split and domainmona.onnx_detector for the glue that runs them); returns ``out``'s metadata."""
    import torch

    from domainmona.detection.export import detector_metadata, export_graphs, load_for_export, network_size

    second = roi_head_path(out)
    claim_file(second, [checkpoint], is_ours=onnx_is_ours, what="--out's RoI head file")
    model, info, cfg = load_for_export(checkpoint)
    size = network_size(cfg, info)
    common = {"format": FORMAT, "producer": f"{PRODUCER} {__version__}", "source_checkpoint": checkpoint.name,
              "source_sha256": sha256(checkpoint)}
    metadata = {**common, **detector_metadata(model, cfg, info, size, second.name), "input_name": INPUT}
    channels = json.loads(metadata["input_shape"])[1]

    def export(module, args, input_names, output_names, dynamic_shapes):
        with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter():
            warnings.simplefilter("ignore")
            return torch.onnx.export(module, args, dynamo=True, verbose=False, opset_version=OPSET,
                                     input_names=input_names, output_names=output_names,
                                     dynamic_shapes=dynamic_shapes)

    network, roi_head = export_graphs(model, size, channels, export)
    network.model.metadata_props.update(metadata)
    roi_head.model.metadata_props.update({**common, "kind": f"{DETECTOR} roi_head", "network_file": out.name})
    with atomic_path(second) as tmp:
        roi_head.save(tmp, external_data=False)
    with atomic_path(out) as tmp:
        network.save(tmp, external_data=False)
    return metadata


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporter's optimiser notes (onnxscript logs a warning per LayerNormalization it leaves unfolded)
    off the terminal: the command's output is its summary and the file's path."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class OnnxNetwork:
    """An exported network run by onnxruntime (its CUDA provider when present): called like the torch network
    on a batch tensor, it returns the logits as a CPU tensor, so the pipelines' inferers take it unchanged."""

    def __init__(self, path: Path, metadata: dict[str, str]):
        import onnxruntime as ort
        import torch

        from domainmona.onnx_detector import execution_providers

        self.session = ort.InferenceSession(str(path), providers=execution_providers())
        self.metadata = metadata
        self.device = torch.device("cpu")  # where inputs are gathered and outputs returned

    def __call__(self, batch):
        import numpy as np
        import torch

        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: images})[0])


def load_onnx_network(path: Path, checkpoint: Path, kind: str):
    """``path`` exported by `domainmona export` from ``checkpoint`` (its SHA-256) for ``kind``, ready to run (an
    `OnnxNetwork`, or for detectors a domainmona.onnx_detector.OnnxDetector); anything else is one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--model {path}: no such ONNX file")
    metadata = onnx_metadata(path)
    if metadata is None:
        raise UserError(f"--model {path}: not an ONNX file that 'domainmona export' wrote")
    if metadata.get("kind") != kind:
        raise UserError(f"--model {path}: a {metadata.get('kind')} model, this command runs {kind} models")
    fingerprint = sha256(Path(checkpoint))
    if metadata.get("source_sha256") != fingerprint:
        raise UserError(f"--model {path}: exported from another checkpoint ({metadata.get('source_checkpoint')}) "
                        f"than {checkpoint}; run 'domainmona export {checkpoint} --out MODEL.onnx'")
    if kind != DETECTOR:
        return OnnxNetwork(path, metadata)
    from domainmona.onnx_detector import OnnxDetector

    head = path.with_name(json.loads(metadata["graphs"])["roi_head"])  # the one OnnxDetector opens
    # the second graph must come from the same export, or the boxes would mix two models
    head_meta = onnx_metadata(head) if head.is_file() else None
    if head_meta is None or head_meta.get("source_sha256") != fingerprint:
        raise UserError(f"--model {path}: its RoI head {head} is missing or from another export; export again")
    return OnnxDetector(path)


def onnx_files(model: Path | None) -> list[Path]:
    """The files `--model` reads (a detector's RoI head graph too): inputs that no output may replace."""
    if model is None:
        return []
    metadata = onnx_metadata(Path(model)) if Path(model).is_file() else None
    graphs = json.loads(metadata.get("graphs", "{}")) if metadata else {}
    return [Path(model), *([Path(model).with_name(graphs["roi_head"])] if "roi_head" in graphs else [])]


def runtime_network(runtime: str, model: Path | None, checkpoint: Path, kind: str):
    """`--runtime onnx --model FILE` checked against ``checkpoint``; None for the torch runtime."""
    if runtime == "torch":
        if model is not None:
            raise UserError("--model goes with --runtime onnx")
        return None
    if model is None:
        raise UserError("--runtime onnx needs --model MODEL.onnx (from 'domainmona export')")
    return load_onnx_network(model, checkpoint, kind)
