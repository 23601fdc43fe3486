"""From a checkpoint to a tile-batch inference function, and `tile_predict` which picks the right stream.

geo-seg checkpoints (domainmona.geo.segmodel) give blended class maps; detector checkpoints from any
`domainmona train` detection command (domainmona.detection.checkpoint) give rotated-box polygons.
Adapters are merged into the frozen weights (Mona fused) for inference in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainmona.errors import UserError
from domainmona.geo.predict import (ALONE, GEOTIFF_SUFFIXES, DetectInfer, Ranks, SegmentInfer, StreamOptions, Tile,
                                    check_numbers, check_stream_options, geotiff_is_ours, predict_class_map,
                                    predict_polygons)
from domainmona.geo.raster import open_raster, warn_nodata
from domainmona.geo.stats import normalise, scene_stats, stretch_to_uint8
from domainmona.io import claim_file


def segment_infer(model, stats: list[dict]) -> SegmentInfer:
    """Normalise like training (nodata pixels 0 after normalisation), softmax over classes, on the model's
    device."""
    import torch

    device = getattr(model, "device", None) or next(model.parameters()).device  # an OnnxNetwork has no parameters

    def infer(batch: list[Tile]) -> np.ndarray:
        images = np.stack([normalise(t.pixels, stats) * t.valid for t in batch])
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(images).to(device)), dim=1).cpu().numpy()

    return infer


def detect_infer(model, cfg, stats: list[dict] | None) -> DetectInfer:
    """mmdet's test pipeline on in-memory tiles, batched through the detector (`run_detector`: torch's
    `test_step`, or the exported detector of `--runtime onnx`).

    Tiles become the uint8 images the detector was trained on (domainmona.geo.chipload.detector_image);
    scenes other than uint8 are stretched with the chips' statistics. ``cfg`` is the detector's mmengine
    Config (from a checkpoint: `DetectorInfo.config`, which reads it as data, never as code).
    """
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope

    from domainmona.detection.predict import run_detector
    from domainmona.geo.chipload import detector_image

    init_default_scope("mmrotate")
    steps = [s for s in cfg.test_dataloader.dataset.pipeline if "LoadAnnotations" not in s["type"]]
    pipeline = Compose([dict(type="mmdet.LoadImageFromNDArray"), *steps[1:]])

    def infer(batch: list[Tile]) -> list:
        samples = []
        for i, tile in enumerate(batch):
            image = stretch_to_uint8(tile.pixels, stats) if stats else tile.pixels.astype(np.uint8)
            image = detector_image(image * tile.valid.astype(np.uint8))
            samples.append(pipeline(dict(img=image, img_id=str(i), img_path=None)))
        return [detections for _, detections in run_detector(model, pseudo_collate(samples))]

    return infer


def geo_sidecar(checkpoint: Path) -> Path:
    """`train geo-det` writes the chips' bands, dtypes and statistics beside the detector checkpoint."""
    return checkpoint.with_suffix(".geo.json")


def prediction_is_ours(path: Path) -> bool:
    """An existing `--out` that an earlier `tile-predict` wrote (and so may be replaced)."""
    from domainmona.geo.vectors import polygons_are_ours

    return geotiff_is_ours(path) if path.suffix.lower() in GEOTIFF_SUFFIXES else polygons_are_ours(path)


@dataclass
class PredictSettings:
    """`tile-predict`'s flags; ``size``/``overlap`` None take the training grid, ``nodata`` replaces the
    raster's own nodata value."""
    size: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    score_thr: float = 0.3
    iou_thr: float = 0.1
    cog: bool = False
    allow_no_crs: bool = False
    nodata: float | None = None
    runtime: str = "torch"
    onnx_model: Path | None = None  # with runtime onnx: the file `domainmona export` wrote from the checkpoint


class Predictor:
    """A geo-seg or detector checkpoint, checked on creation, its model built once (`load`) for any number
    of scenes, each checked (`check`) before the model is built."""

    def __init__(self, checkpoint: Path, settings: PredictSettings):
        self.checkpoint, self.settings = Path(checkpoint), settings
        s = settings
        check_numbers(s.size, s.overlap, s.batch_size, s.score_thr, s.iou_thr)
        if self.checkpoint.is_dir():
            raise UserError(f"{checkpoint}: a folder, not a checkpoint file")
        if not self.checkpoint.is_file():
            raise UserError(f"{checkpoint}: no such checkpoint")
        from domainmona.geo.segmodel import read_spec

        self.spec = read_spec(self.checkpoint)
        self.trained = self.spec if self.spec is not None else detector_trained(self.checkpoint)
        self.model = self.info = None
        if self.segmentation:
            size = self.spec["size"] if s.size is None else s.size
            if size % 32:
                raise UserError(f"--size {size}: segmentation tiles must be a multiple of 32")
            self.opts = StreamOptions(size, self.spec["overlap"] if s.overlap is None else s.overlap, s.batch_size,
                                      tuple(self.spec["bands"]), s.allow_no_crs, s.nodata)
            check_stream_options(self.opts, half_overlap=True)
        self.network = self._onnx_network()

    def _onnx_network(self):
        """The ONNX network of `--runtime onnx`, checked against the checkpoint and the tile size (a detector's
        against the input its test pipeline resizes tiles to); else None."""
        from domainmona.detection.predict import onnx_detector
        from domainmona.export import GEO_SEG, runtime_network

        s = self.settings
        if not self.segmentation:
            network, self.info = onnx_detector(s.runtime, s.onnx_model, self.checkpoint)
            return network
        network = runtime_network(s.runtime, s.onnx_model, self.checkpoint, GEO_SEG)
        if network is not None and int(network.metadata["tile_size"]) != self.opts.size:
            raise UserError(f"--model {s.onnx_model}: takes {network.metadata['tile_size']}-pixel tiles, not "
                            f"{self.opts.size}; export with --size {self.opts.size} or leave --size out")
        return network

    @property
    def segmentation(self) -> bool:
        return self.spec is not None

    @property
    def suffix(self) -> str:
        """The output of a scene: a class map or a GeoPackage."""
        return ".tif" if self.segmentation else ".gpkg"

    def inputs(self) -> list[Path]:
        """The files an output must never replace, besides the scene."""
        from domainmona.export import onnx_files

        return [self.checkpoint, geo_sidecar(self.checkpoint), *onnx_files(self.settings.onnx_model)]

    def check(self, raster: Path, out: Path) -> None:
        """Refuse, before any work, an output of the wrong kind or one that may not be written (an input, a
        file domainmona did not write), and a scene unlike the training scenes."""
        from domainmona.geo.vectors import DRIVERS

        if out.suffix.lower() not in (*GEOTIFF_SUFFIXES, *DRIVERS):
            raise UserError(f"--out {out}: must end in .tif (a class map) or .gpkg/.geojson (polygons)")
        if self.segmentation and out.suffix.lower() not in GEOTIFF_SUFFIXES:
            raise UserError(f"{out}: a segmentation checkpoint writes a GeoTIFF (.tif)")
        if not self.segmentation and out.suffix.lower() in GEOTIFF_SUFFIXES:
            raise UserError(f"{out}: a detector checkpoint writes polygons (.gpkg or .geojson)")
        claim_file(out, [raster, *self.inputs()], is_ours=prediction_is_ours, what="--out")
        check_scene(raster, self.trained, self.checkpoint, self.settings.allow_no_crs, self.settings.nodata)

    def load(self) -> None:
        from domainmona.adapters import prepare_for_inference
        from domainmona.detection.checkpoint import load_detector
        from domainmona.geo.segmodel import load_segmenter

        if self.network is not None:
            self.model = self.network  # a detector's info came with it
        elif self.segmentation:
            self.model, self.spec = load_segmenter(self.checkpoint, self.opts.size)
        else:
            self.model, self.info = load_detector(self.checkpoint)
            prepare_for_inference(self.model)

    def predict(self, raster: Path, out: Path, ranks: Ranks = ALONE) -> int:
        """Predict ``raster`` into ``out`` (shared by ``ranks``); the pixels labelled or objects written."""
        s = self.settings
        if self.segmentation:
            return predict_class_map(raster, out, segment_infer(self.model, self.spec["stats"]),
                                     self.spec["classes"], self.opts, s.cog, ranks)
        bands, stats = _detection_inputs(raster, self.trained, s.allow_no_crs, s.nodata)
        info = self.info
        opts = StreamOptions(info.patch_size if s.size is None else s.size,
                             info.patch_gap if s.overlap is None else s.overlap, s.batch_size, bands,
                             s.allow_no_crs, s.nodata)
        infer = detect_infer(self.model, info.config(self.checkpoint), stats)
        return predict_polygons(raster, out, infer, list(info.classes), opts, s.score_thr, s.iou_thr, ranks)


def tile_predict(raster: Path, checkpoint: Path, out: Path, size: int | None, overlap: int | None,
                 batch_size: int, score_thr: float, iou_thr: float = 0.1, cog: bool = False,
                 allow_no_crs: bool = False, nodata: float | None = None) -> Path:
    """Predict ``raster`` with a geo-seg or detector checkpoint into ``out`` (see `PredictSettings`).
    Everything is checked before the model is built: the numbers, that ``out`` may be written (not an
    input, not a file domainmona did not write) and that the scene is like the training scenes (band count,
    dtype) with a usable nodata value."""
    raster, out = Path(raster), Path(out)
    predictor = Predictor(checkpoint, PredictSettings(size, overlap, batch_size, score_thr, iou_thr, cog,
                                                      allow_no_crs, nodata))
    predictor.check(raster, out)
    predictor.load()
    predictor.predict(raster, out)
    return out


def detector_trained(checkpoint: Path) -> dict:
    """What a detector checkpoint was trained on: its own record (`DetectorInfo.scenes`); for one written
    before the record existed, the sidecar of `train geo-det`, else DOTA/STAR's RGB patches, noted so."""
    from domainmona.detection.checkpoint import detector_scenes
    from domainmona.io import read_metadata

    scenes = detector_scenes(read_metadata(checkpoint), checkpoint)
    return (read_sidecar(checkpoint) or scenes) if "note" in scenes else scenes


def read_sidecar(checkpoint: Path) -> dict:
    """The geo sidecar of a detector checkpoint (empty for detectors trained on DOTA/STAR patches)."""
    sidecar = geo_sidecar(checkpoint)
    if not sidecar.is_file():
        return {}
    try:
        geo = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        geo = None
    if not isinstance(geo, dict):
        raise UserError(f"{sidecar}: not the JSON that 'train geo-det' writes; train again or remove it")
    return geo


def check_scene(raster: Path, trained: dict, checkpoint: Path, allow_no_crs: bool,
                nodata: float | None = None) -> None:
    """Refuse a scene unlike the training scenes: other band count or dtype (a model fed other bands or
    another radiometric range predicts garbage without a word), or a ``nodata`` its pixels cannot hold.
    Checkpoints from before these were recorded are checked for the bands they use only."""
    bands = tuple(trained["bands"]) if trained.get("bands") else None
    with open_raster(raster, bands, allow_no_crs, nodata) as src:
        warn_nodata(src)
        counts, dtypes = trained.get("scene_bands"), trained.get("dtypes")
        note = f" ({trained['note']})" if trained.get("note") else ""
        if counts and src.count not in counts:
            raise UserError(f"{raster}: {src.count} band(s), but {checkpoint} was trained on scenes with "
                            f"{' or '.join(map(str, counts))} band(s){note}")
        if dtypes and src.dtypes[0] not in dtypes:
            raise UserError(f"{raster}: {src.dtypes[0]} pixels, but {checkpoint} was trained on "
                            f"{' or '.join(dtypes)} scenes{note}")


def _detection_inputs(raster: Path, geo: dict, allow_no_crs: bool,
                      nodata: float | None) -> tuple[tuple[int, ...], list | None]:
    """Bands and uint8 stretch of the chips the detector saw (its record, `detector_trained`); a sidecar
    without them gives the first three bands and, for scenes other than uint8, the scene's own statistics."""
    bands = tuple(geo["bands"]) if geo.get("bands") else None
    with open_raster(raster, bands, allow_no_crs, nodata) as src:
        bands = bands or tuple(range(1, min(src.count, 3) + 1))
        stats = geo.get("stats")
        if stats is None and src.dtypes[0] != "uint8":
            stats = scene_stats(src, bands)
    return bands, stats
