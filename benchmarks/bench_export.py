"""`domainmona export` and `--runtime onnx`: onnxruntime vs torch eager on the CPU, per pipeline.

For a geo-seg checkpoint (micro Swin + UPerNet, Mona), a segment-ct checkpoint (tiny SwinUNETR, Mona-3D) and a
rotated-box detector (micro Oriented R-CNN, Mona), all seeded with perturbed adapters (timing only, as the tests
build them): the export's wall time, the ONNX file(s) against the checkpoint, and the CPU seconds per input of
the merged/fused torch network and of the exported one in onnxruntime, one thread each, the two interleaved in
every round after one warm-up call, medians (CPU time of this process, so other jobs on a shared machine are
not charged to either). The detector runs end to end on one packed patch: torch's `test_step` against
`OnnxDetector.detect` (two graphs plus the numpy glue). Writes benchmarks/results/bench_export.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_export.py [--quick] [--rounds 5]

--quick: geo tiles 64 and 3 rounds; otherwise geo tiles 256. The CT ROI is 64³ (SwinUNETR's least).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_adapters import interleaved, ratio
from report import machine, write_markdown

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' checkpoint builders

from tests.test_export import ct_checkpoint, geo_checkpoint  # noqa: E402
from tests.test_export_detector import detector_checkpoint  # noqa: E402

from domainmona.export import export_checkpoint, onnx_files  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_export.md"
GEO_BATCH = 4


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exported(checkpoint: Path, out: Path) -> dict:
    """Export ``checkpoint`` to ``out``: wall seconds and sizes (every ONNX file it wrote)."""
    start = time.perf_counter()
    export_checkpoint(checkpoint, out)
    seconds = time.perf_counter() - start
    return {"export_s": seconds, "onnx_bytes": sum(p.stat().st_size for p in onnx_files(out)),
            "checkpoint_bytes": checkpoint.stat().st_size}


def geo_seg(work: Path, size: int) -> tuple[dict, dict]:
    """(sizes, runners per tile batch) of a geo-seg checkpoint on ``size``-pixel tiles."""
    from domainmona.geo.segmodel import load_segmenter
    from domainmona.geo.synthetic import SceneSpec, write_scene
    from domainmona.geo.tiling import TileOptions, tile_scenes

    scene = write_scene(work / "train.tif", work / "train.gpkg", SceneSpec(width=3 * size, height=3 * size,
                                                                             objects=4, frame=16, seed=1, block=64))
    tile_scenes([scene.raster], scene.labels, work / "chips", TileOptions(size=size, overlap=size // 4,
                                                                           task="segmentation"))
    checkpoint = geo_checkpoint(work, "mona")
    row = exported(checkpoint, work / "geo.onnx")
    model, _ = load_segmenter(checkpoint)
    model = model.cpu()
    images = torch.randn(GEO_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    onnx, array = session(work / "geo.onnx"), images.numpy()
    return row | {"input": f"a 3x{size}² tile (batches of {GEO_BATCH})", "per": GEO_BATCH}, {
        "torch": lambda: model(images), "onnx": lambda: onnx.run(None, {"image": array})}


def ct(work: Path, roi: int) -> tuple[dict, dict]:
    """(sizes, runners per ROI) of a segment-ct SwinUNETR checkpoint."""
    from domainmona.medical.checkpoint import load_checkpoint
    from domainmona.medical.predict import model_from_checkpoint

    checkpoint = ct_checkpoint(work, "swinunetr", roi)
    row = exported(checkpoint, work / "ct.onnx")
    model = model_from_checkpoint(load_checkpoint(checkpoint), torch.device("cpu"), checkpoint)
    volume = torch.rand(1, 1, roi, roi, roi, generator=torch.Generator().manual_seed(0))
    onnx, array = session(work / "ct.onnx"), volume.numpy()
    return row | {"input": f"a {roi}³ ROI", "per": 1}, {
        "torch": lambda: model(volume), "onnx": lambda: onnx.run(None, {"image": array})}


def detector(work: Path) -> tuple[dict, dict]:
    """(sizes, runners per patch) of a detector checkpoint, end to end on one packed 256² patch."""
    from domainmona.detection.export import load_for_export
    from domainmona.detection.predict import patch_loader
    from domainmona.detection.synthetic import generate_dota_scenes
    from domainmona.onnx_detector import OnnxDetector

    checkpoint = detector_checkpoint(work, "mona")
    row = exported(checkpoint, work / "det.onnx")
    model, _, cfg = load_for_export(checkpoint)
    generate_dota_scenes(work / "dota", 1, 256, seed=3, objects_per_image=(6, 10))
    batch = next(iter(patch_loader(cfg, work / "dota" / "images")))
    onnx = OnnxDetector(work / "det.onnx", threads=1)
    onnx.network, onnx.roi_head = graphs = Timed(onnx.network), Timed(onnx.roi_head)
    image, scale = batch["inputs"][0].numpy(), batch["data_samples"][0].scale_factor[0]
    return row | {"input": "a 3x256² patch, to detections after NMS", "per": 1, "graphs": graphs}, {
        "torch": lambda: model.test_step(batch), "onnx": lambda: onnx.detect(image, scale)}


class Timed:
    """An onnxruntime session that adds up the CPU seconds of its runs: how much of the exported detector's
    time its two graphs take, the rest being the numpy glue."""

    def __init__(self, session):
        self.session, self.seconds, self.calls = session, 0.0, 0

    def run(self, *args, **kwargs):
        start = time.process_time()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += time.process_time() - start
            self.calls += 1


def measure(build, rounds: int) -> dict:
    row, runners = build()
    with torch.inference_mode():
        times = interleaved(runners, rounds)
    per, graphs = row.pop("per"), row.pop("graphs", None)
    if graphs is not None:  # every detect call ran the network graph once (the warm-up too)
        row["graphs_s"] = sum(g.seconds for g in graphs) / graphs[0].calls
    return row | {f"{name}_s": statistics.median(t) / per for name, t in times.items()} | {
        "speedup": ratio(times, "torch", "onnx"), "runs": {name: t for name, t in times.items()}}


def render(rows: dict[str, dict], rounds: int, quick: bool) -> list[str]:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = ["# Export: onnxruntime vs torch eager (CPU)", "",
             f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}, torch {torch.__version__}, "
             f"onnxruntime {__import__('onnxruntime').__version__}; {'--quick' if quick else 'full'} mode. "
             f"One thread each (torch.set_num_threads(1), onnxruntime intra-op 1); CPU seconds of this process "
             f"per input, {rounds} interleaved rounds after a warm-up call, medians; speed-up = median of the "
             f"per-round torch/onnx ratios (> 1: onnxruntime faster). Load average 1/5/15 min: {load}. "
             "Seeded untrained networks with perturbed adapters (timing only); torch runs the merged/fused "
             "network, as `--runtime torch` does.", "",
             "| pipeline | input | torch s | onnxruntime s (graphs only) | speed-up | export s | ONNX MB | "
             "checkpoint MB |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        graphs = f" ({r['graphs_s']:.4f})" if "graphs_s" in r else ""
        lines.append(f"| {name} | {r['input']} | {r['torch_s']:.4f} | {r['onnx_s']:.4f}{graphs} | "
                     f"{r['speedup']:.2f}× | {r['export_s']:.1f} | {r['onnx_bytes'] / 1e6:.2f} | "
                     f"{r['checkpoint_bytes'] / 1e6:.2f} |")
    lines += ["", "ONNX MB: every file the export wrote (the detector's two graphs together), the whole network "
              "with adapters merged or fused; checkpoint MB: the file `train` wrote (a detector's names its frozen "
              "backbone weights file, not counted). The exported detector's time is its two graphs (in "
              "parentheses) plus domainmona.onnx_detector's numpy glue: proposal selection, rotated RoIAlign and "
              "per-class rotated NMS, vectorised (a Python loop only over each NMS's blocks of 32 alive boxes)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64-pixel geo tiles, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        builds = {"geo-seg (micro Swin + UPerNet, Mona)": lambda: geo_seg(work, 64 if args.quick else 256),
                  "CT (SwinUNETR, feature size 12, Mona-3D)": lambda: ct(work, 64),
                  "detector (micro Oriented R-CNN, Mona)": lambda: detector(work)}
        rows = {}
        for name, build in builds.items():
            rows[name] = measure(build, rounds)
            print(name, {k: v for k, v in rows[name].items() if k != "runs"}, flush=True)
    write_markdown(RESULTS, render(rows, rounds, args.quick))


if __name__ == "__main__":
    main()
