"""Whole-scene prediction: `tile-predict` vs SAHI's sliced prediction, and peak memory vs raster size.

1. Speed: the same fused micro Mona-Swin Oriented R-CNN (mmrotate, untrained weights: timing only) on the
   same generated GeoTIFF, through `domainmona.geo.predict.detect_scene` and through SAHI's
   `get_sliced_prediction` (SAHI defaults, and SAHI with our batch size and no full-image pass). SAHI is
   in the `bench` extra; without it this part is skipped with a message.
2. Memory: `segment_scene` on a 4k² and a 16k² raster, each in a fresh process, peak RSS compared. The
   network is a 1x1 convolution (a real torch model, cheap enough to stream 268 Mpx on 2 CPU cores), so
   the number isolates what the streaming pipeline itself holds.

    .venv/bin/python benchmarks/bench_tile_predict.py [--work DIR] [--skip-sahi] [--skip-memory]

Results go to benchmarks/results/geo.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from domainmona.geo.predict import StreamOptions, Tile, detect_scene, segment_scene
from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.io import atomic_path

RESULTS = Path(__file__).parent / "results" / "geo.md"
CLASSES = ("plane", "ship", "storage-tank")
TILE, OVERLAP, BATCH, SCORE_THR = 512, 100, 4, 0.3
SPEED_SCENE = 2048


def scene(work: Path, size: int, objects: int) -> Path:
    raster = work / f"scene_{size}.tif"
    if not raster.exists():
        write_scene(raster, work / f"labels_{size}.gpkg", SceneSpec(width=size, height=size, objects=objects, seed=0))
    return raster


def build_detector():
    """The micro config's detector with Mona, fused, in eval mode (random weights: timing only)."""
    import torch
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401  (registers the Mona Swin backbone)
    from domainmona.adapters import fuse
    from domainmona.detection.config import build_config

    torch.manual_seed(0)
    register_all_modules()
    cfg = build_config("dota1.0", "micro", "mona", CLASSES, None, TILE)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return fuse(model.eval()), cfg


def time_ours(raster: Path, model, cfg, work: Path) -> tuple[float, int]:
    from domainmona.geo.models import detect_infer

    infer = detect_infer(model, cfg.pretty_text, None)
    start = time.perf_counter()
    out = detect_scene(raster, work / "ours.gpkg", infer, list(CLASSES), StreamOptions(TILE, OVERLAP, BATCH),
                       SCORE_THR)
    elapsed = time.perf_counter() - start
    import pyogrio

    return elapsed, pyogrio.read_info(out)["features"]


def time_sahi(raster: Path, model, cfg, batch_size: int, standard_pred: bool) -> tuple[float, int]:
    """SAHI reads the whole scene into memory, slices it, predicts, and merges (GREEDYNMM on boxes)."""
    import rasterio
    from sahi.models.base import DetectionModel
    from sahi.predict import get_sliced_prediction
    from sahi.prediction import ObjectPrediction
    from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

    from domainmona.detection.dota.geometry import obb_to_poly
    from domainmona.geo.models import detect_infer

    infer = detect_infer(model, cfg.pretty_text, None)

    class MonaRotatedDetector(DetectionModel):
        def load_model(self):
            self.set_model(model)

        def set_model(self, detector, **kwargs):
            self.model = detector

        def perform_inference(self, image):
            self.perform_batch_inference([image])

        def perform_batch_inference(self, images):
            tiles = [Tile(0, 0, 0, 0, np.ascontiguousarray(im.transpose(2, 0, 1)), np.ones(im.shape[:2], bool))
                     for im in images]
            self._original_predictions = infer(tiles)

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=None,
                                                                     full_shape_list=None):
            per_image = []
            shifts, shapes = fix_shift_amount_list(shift_amount_list), fix_full_shape_list(full_shape_list)
            for dets, shift, full in zip(self._original_predictions, shifts, shapes):
                predictions = []
                for quad, score, label in zip(obb_to_poly(dets.boxes), dets.scores, dets.labels):
                    if score < self.confidence_threshold:
                        continue
                    (x0, y0), (x1, y1) = quad.min(0), quad.max(0)
                    predictions.append(ObjectPrediction(bbox=[x0, y0, x1, y1], category_id=int(label),
                                                        category_name=CLASSES[label], score=float(score),
                                                        segmentation=[quad.reshape(-1).tolist()],
                                                        shift_amount=shift, full_shape=full))
                per_image.append(predictions)
            self._object_prediction_list_per_image = per_image

    detector = MonaRotatedDetector(confidence_threshold=SCORE_THR, load_at_init=True, device="cpu")
    start = time.perf_counter()
    with rasterio.open(raster) as src:
        image = np.ascontiguousarray(src.read([1, 2, 3]).transpose(1, 2, 0))
    result = get_sliced_prediction(image, detector, slice_height=TILE, slice_width=TILE,
                                   overlap_height_ratio=OVERLAP / TILE, overlap_width_ratio=OVERLAP / TILE,
                                   perform_standard_pred=standard_pred, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start, len(result.object_prediction_list)


def peak_memory_child(raster: str, out: str) -> None:
    """Runs in a fresh process: stream a scene through a 1x1-conv segmenter, print peak RSS (MiB)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1).eval()

    def infer(batch: list[Tile]) -> np.ndarray:
        x = torch.from_numpy(np.stack([t.pixels for t in batch]).astype(np.float32) / 255.0)
        with torch.inference_mode():
            return torch.softmax(model(x), 1).numpy()

    before = peak_rss_mib()
    start = time.perf_counter()
    segment_scene(Path(raster), Path(out), infer, ["a", "b"], StreamOptions(1024, 200, BATCH))
    print(json.dumps({"before_mib": before, "peak_mib": peak_rss_mib(), "seconds": time.perf_counter() - start}))


def peak_rss_mib() -> float:
    """VmHWM of this process (unlike ru_maxrss, it does not inherit the parent's peak across fork+exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def measure_memory(work: Path) -> dict[int, dict]:
    results = {}
    for size in (4096, 16384):
        raster = scene(work, size, objects=size // 64)
        child = subprocess.run([sys.executable, __file__, "--memory-child", str(raster), str(work / f"seg_{size}.tif")],
                               capture_output=True, text=True, check=True)
        results[size] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{size}²: {results[size]}", flush=True)
    return results


def write_report(speed: dict | None, memory: dict | None, sahi_note: str) -> None:
    lines = ["# tile-predict benchmark", "", f"Machine: {platform.processor() or platform.machine()}, "
             f"{platform.python_version()}; shared CPU, timings are indicative.", ""]
    if speed:
        ours = next(iter(speed.values()))[0]
        lines += [f"## Speed: {SPEED_SCENE}² RGB GeoTIFF, micro Mona-Swin Oriented R-CNN (fused), tiles {TILE}/{OVERLAP}, "
                  f"score ≥ {SCORE_THR}", "", "| pipeline | seconds | detections | tile-predict speed-up |",
                  "| --- | ---: | ---: | ---: |"]
        for name, (seconds, count) in speed.items():
            lines.append(f"| {name} | {seconds:.1f} | {count} | {seconds / ours:.2f}× |")
        lines.append("")
    else:
        lines += ["## Speed", "", sahi_note, ""]
    if memory:
        small, large = memory[4096], memory[16384]
        growth = large["peak_mib"] / small["peak_mib"] - 1
        lines += ["## Peak memory: segment_scene, tiles 1024/200, batch 4, 1x1-conv network", "",
                  "| raster | RSS before predict (MiB) | peak RSS (MiB) | seconds |", "| --- | ---: | ---: | ---: |"]
        for size, row in memory.items():
            lines.append(f"| {size}² | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | {row['seconds']:.1f} |")
        lines += ["", f"Peak grows by {growth * 100:.1f}% for 16× the pixels (goal ≤ 10%).", ""]
    with atomic_path(RESULTS) as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Folder for generated rasters (kept).")
    parser.add_argument("--skip-sahi", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(*args.memory_child)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-geo-"))
    work.mkdir(parents=True, exist_ok=True)
    speed, sahi_note = None, ""
    if not args.skip_sahi:
        try:
            import sahi  # noqa: F401
        except ImportError:
            sahi_note = "SAHI is not installed (`pip install -e .[bench]`): speed comparison skipped."
            print(sahi_note)
        else:
            raster = scene(work, SPEED_SCENE, objects=SPEED_SCENE // 20)
            model, cfg = build_detector()
            speed = {"tile-predict (batch 4)": time_ours(raster, model, cfg, work)}
            print(speed, flush=True)
            speed["SAHI defaults (batch 1, + full-image pass)"] = time_sahi(raster, model, cfg, 1, True)
            speed["SAHI batch 4, no full-image pass"] = time_sahi(raster, model, cfg, BATCH, False)
            print(speed, flush=True)
    memory = None if args.skip_memory else measure_memory(work)
    write_report(speed, memory, sahi_note)


if __name__ == "__main__":
    main()
