"""Whole-scene prediction: `tile-predict` vs SAHI's sliced prediction, and peak memory vs raster size.

1. Speed: the same fused micro Mona-Swin Oriented R-CNN (mmrotate, untrained weights: timing only) on the
   same generated GeoTIFF, through `domainmona.geo.predict.detect_scene` and through SAHI's
   `get_sliced_prediction` (SAHI defaults, and SAHI with our batch size and no full-image pass). SAHI is
   in the `bench` extra; without it this part is skipped with a message.
2. Memory: `segment_scene` on a 4k² and a 16k² raster, each in a fresh process, peak RSS compared. The
   network is a 1x1 convolution (a real torch model, cheap enough to stream 268 Mpx on 2 CPU cores), so
   the number isolates what the streaming pipeline itself holds.
3. Scaling: the `domainmona tile-predict` command with a micro Mona-Swin geo-seg checkpoint (untrained,
   seeded: timing only) on 1 process and on 2 (`--gpus 2`: torchrun, gloo, one thread each), on four
   scenes (whole scenes per process) and on one scene (bands of its tile rows), wall time of the command.

    .venv/bin/python benchmarks/bench_tile_predict.py [--work DIR] [--skip-sahi] [--skip-memory] [--skip-scaling]

Results go to benchmarks/results/geo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import machine

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
    """The micro config's detector with Mona in its training form, eval mode (random weights: timing only)."""
    import torch
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401  (registers the Mona Swin backbone)
    from domainmona.detection.config import build_config

    torch.manual_seed(0)
    register_all_modules()
    cfg = build_config("dota1.0", "micro", "mona", CLASSES, None, TILE)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval(), cfg


def run_ours(raster: Path, model, cfg, work: Path) -> int:
    import pyogrio

    from domainmona.geo.models import detect_infer

    infer = detect_infer(model, cfg, None)
    out = detect_scene(raster, work / "ours.gpkg", infer, list(CLASSES), StreamOptions(TILE, OVERLAP, BATCH),
                       SCORE_THR)
    return pyogrio.read_info(out)["features"]


def run_sahi(raster: Path, model, cfg, batch_size: int, standard_pred: bool) -> int:
    """SAHI reads the whole scene into memory, slices it, predicts, and merges (GREEDYNMM on boxes)."""
    import rasterio
    from sahi.models.base import DetectionModel
    from sahi.predict import get_sliced_prediction
    from sahi.prediction import ObjectPrediction
    from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

    from domainmona.detection.dota.geometry import obb_to_poly
    from domainmona.geo.models import detect_infer

    infer = detect_infer(model, cfg, None)

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
    with rasterio.open(raster) as src:
        image = np.ascontiguousarray(src.read([1, 2, 3]).transpose(1, 2, 0))
    result = get_sliced_prediction(image, detector, slice_height=TILE, slice_width=TILE,
                                   overlap_height_ratio=OVERLAP / TILE, overlap_width_ratio=OVERLAP / TILE,
                                   perform_standard_pred=standard_pred, batch_size=batch_size, verbose=0)
    return len(result.object_prediction_list)


def measure_speed(work: Path, repeats: int) -> dict[str, tuple[list[float], int]]:
    """Every pipeline once to warm up (oneDNN primitives, allocator), then `repeats` interleaved timed runs."""
    import copy

    from domainmona.adapters import fuse

    raster = scene(work, SPEED_SCENE, objects=SPEED_SCENE // 20)
    model, cfg = build_detector()
    fused = fuse(copy.deepcopy(model))
    runs = {
        "tile-predict (batch 4, fused Mona)": lambda: run_ours(raster, fused, cfg, work),
        "SAHI defaults (batch 1, + full-image pass), fused Mona": lambda: run_sahi(raster, fused, cfg, 1, True),
        "SAHI batch 4, no full-image pass, fused Mona": lambda: run_sahi(raster, fused, cfg, BATCH, False),
        "SAHI batch 4, no full-image pass, Mona as trained (unfused)":
            lambda: run_sahi(raster, model, cfg, BATCH, False),
    }
    counts = {name: run() for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], counts[name]) for name in runs}


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


SCALING_TILE, SCALING_OVERLAP = 256, 64
SCALING_RUNS = {"four 768² scenes": (4, 768), "one 1536² scene": (1, 1536)}


def scaling_checkpoint(work: Path) -> Path:
    """An untrained micro Mona-Swin geo-seg checkpoint for 3-band uint8 scenes, seeded."""
    import torch

    from domainmona.geo.segmodel import build_model, load_settings, model_spec, save_segmenter
    from domainmona.geo.tiling import TileOptions, tile_scenes

    checkpoint = work / "seg-micro.safetensors"
    if not checkpoint.exists():
        raster = scene(work, 256, objects=4)
        tile_scenes([raster], work / "labels_256.gpkg", work / "chips",
                    TileOptions(size=SCALING_TILE, overlap=SCALING_OVERLAP, task="segmentation"))
        spec = model_spec(load_settings(encoder="micro"), json.loads((work / "chips" / "manifest.json").read_text()))
        torch.manual_seed(0)
        save_segmenter(build_model(spec), spec, checkpoint)
    return checkpoint


def measure_scaling(work: Path, repeats: int) -> dict[str, dict[int, list[tuple[float, float, float]]]]:
    """(wall s, CPU s, 1-minute load average before) of `domainmona tile-predict --out-dir` runs on 1 and 2
    processes, interleaved, each into a new folder; one thread per process (torchrun's default for several), so
    2 processes may use the core one leaves idle. CPU seconds (all processes) show what sharing adds: the tile
    row above each band, assembly, start-up."""
    import resource
    import shutil

    checkpoint = scaling_checkpoint(work)
    exe = Path(sys.executable).with_name("domainmona")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    times: dict[str, dict[int, list[tuple[float, float, float]]]] = {}
    for name, (count, size) in SCALING_RUNS.items():
        rasters = []
        for i in range(count):
            raster = work / f"scaling_{size}_{i}.tif"
            if not raster.exists():
                write_scene(raster, work / f"scaling_{size}_{i}.gpkg",
                            SceneSpec(width=size, height=size, objects=size // 64, seed=10 + i))
            rasters.append(str(raster))
        times[name] = {1: [], 2: []}
        for _ in range(repeats):
            for processes in (1, 2):
                out = work / f"scaling_out_{processes}"
                shutil.rmtree(out, ignore_errors=True)
                load, start, cpu = os.getloadavg()[0], time.perf_counter(), _children_cpu(resource)
                subprocess.run([str(exe), "tile-predict", *rasters, "--checkpoint", str(checkpoint), "--out-dir",
                                str(out), "--size", str(SCALING_TILE), "--overlap", str(SCALING_OVERLAP),
                                "--gpus", str(processes)], env=env, check=True, capture_output=True)
                times[name][processes].append((time.perf_counter() - start, _children_cpu(resource) - cpu, load))
                print(name, processes, times[name][processes][-1], flush=True)
    return times


def _children_cpu(resource) -> float:
    """User + system seconds of every finished (waited-for) descendant: torchrun's workers included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _previous_section(heading: str) -> list[str]:
    """The section of the existing report that starts with `heading`, kept when this run skips that part."""
    if not RESULTS.exists():
        return []
    text = RESULTS.read_text()
    start = text.find(heading)
    if start < 0:
        return []
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)].rstrip("\n").split("\n") + [""]


def write_report(speed: dict | None, memory: dict | None, scaling: dict | None) -> None:
    lines = ["# tile-predict benchmark", ""]
    measured = f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()} CPU"
    if speed:
        medians = {name: statistics.median(runs) for name, (runs, _) in speed.items()}
        ours = next(iter(medians.values()))
        lines += [f"## Speed: {SPEED_SCENE}² RGB GeoTIFF, micro Mona-Swin Oriented R-CNN, tiles {TILE}/{OVERLAP}, "
                  f"score ≥ {SCORE_THR}", "",
                  f"{measured}, {torch_threads()} torch threads. Same weights and scene; each pipeline warmed up once, then "
                  f"{len(next(iter(speed.values()))[0])} interleaved runs, median. SAHI's time includes reading the "
                  "scene into memory.", "",
                  "| pipeline | median s | runs | detections | tile-predict speed-up |",
                  "| --- | ---: | --- | ---: | ---: |"]
        for name, (runs, count) in speed.items():
            lines.append(f"| {name} | {medians[name]:.2f} | {', '.join(f'{t:.2f}' for t in runs)} | {count} | "
                         f"{medians[name] / ours:.2f}× |")
        lines.append("")
    else:
        lines += _previous_section("## Speed")
    if memory:
        small, large = memory[4096], memory[16384]
        growth = large["peak_mib"] / small["peak_mib"] - 1
        lines += ["## Peak memory: segment_scene, tiles 1024/200, batch 4, 1x1-conv network", "",
                  f"{measured}; each raster in a fresh process.", "",
                  "| raster | RSS before predict (MiB) | peak RSS (MiB) | seconds |", "| --- | ---: | ---: | ---: |"]
        for size, row in memory.items():
            lines.append(f"| {size}² | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | {row['seconds']:.1f} |")
        lines += ["", f"Peak grows by {growth * 100:.1f}% for 16× the pixels (goal ≤ 10%).", ""]
    else:
        lines += _previous_section("## Peak memory")
    if scaling:
        runs = len(next(iter(scaling.values()))[1])
        loads = [run[2] for by_count in scaling.values() for timed in by_count.values() for run in timed]
        lines += [f"## Scaling: 1 vs 2 processes, micro Mona-Swin geo-seg, tiles {SCALING_TILE}/{SCALING_OVERLAP}", "",
                  f"{time.strftime('%Y-%m-%d %H:%M')}, {machine()}; `domainmona tile-predict --out-dir` wall time "
                  f"(process start and model load included) and CPU time of all its processes, one thread per "
                  f"process, {runs} interleaved runs, medians. 1-minute load average before the runs "
                  f"{min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores (other jobs share the machine).", "",
                  "| input | 1 process: wall s (CPU s) | 2 processes: wall s (CPU s) | wall runs 1 / 2 | speed-up |",
                  "| --- | ---: | ---: | --- | ---: |"]
        for name, by_count in scaling.items():
            (one, one_cpu, _), (two, two_cpu, _) = (tuple(map(statistics.median, zip(*by_count[n]))) for n in (1, 2))
            lines.append(f"| {name} | {one:.1f} ({one_cpu:.1f}) | {two:.1f} ({two_cpu:.1f}) | "
                         f"{', '.join(f'{run[0]:.1f}' for run in by_count[1])} / "
                         f"{', '.join(f'{run[0]:.1f}' for run in by_count[2])} | {one / two:.2f}× |")
        lines.append("")
    else:
        lines += _previous_section("## Scaling")
    with atomic_path(RESULTS) as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Folder for generated rasters (kept).")
    parser.add_argument("--skip-sahi", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per pipeline (after a warm-up).")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(*args.memory_child)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-geo-"))
    work.mkdir(parents=True, exist_ok=True)
    speed = None
    if not args.skip_sahi:
        try:
            import sahi  # noqa: F401
        except ImportError:
            sys.exit("SAHI is not installed: `.venv/bin/pip install -e .[bench]`, or pass --skip-sahi")
        speed = measure_speed(work, args.repeats)
        print(speed, flush=True)
    memory = None if args.skip_memory else measure_memory(work)
    scaling = None if args.skip_scaling else measure_scaling(work, args.repeats)
    write_report(speed, memory, scaling)


if __name__ == "__main__":
    main()
