"""Training from scenes vs from chips on the geo demo: does `train geo-seg|geo-det --scenes` reach the score
of training on `tile`'s chips?

The demo's scene, settings and score (pipelines/geo-demo.yaml, domainmona.geo.demo): segmentation trains the
micro Mona-Swin FPN and scores mIoU over the whole scene, detection trains the micro Mona-Swin Oriented
R-CNN and scores mAP (VOC07, IoU 0.5) over the whole scene. For each task, the same seed and iterations:
  chips         tile (the demo's K-shot chips), then train on them;
  scenes grid   train --scenes --sampler grid: the same windows read on the fly (segmentation: the same
                batches, so the same score up to float non-associativity);
  scenes random train --scenes (default sampler): random windows around the K-shot objects and background.

    .venv/bin/python benchmarks/bench_geo_scenes.py [--work DIR] [--tasks segmentation detection]
        [--det-iters N] [--sources chips "scenes grid" "scenes random"]

Results go to benchmarks/results/geo_scenes.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from report import machine, write_markdown

from domainmona.geo.demo import _report_iou, _report_map
from domainmona.geo.models import tile_predict
from domainmona.geo.scenes import SceneOptions
from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.geo.tiling import TileOptions, tile_scenes
from domainmona.recipes import load_recipe

RESULTS = Path(__file__).parent / "results" / "geo_scenes.md"
SOURCES = ("chips", "scenes grid", "scenes random")


def run(task: str, source: str, work: Path, scene, recipe: dict, iters: int, seed: int) -> tuple[float, float]:
    """(train seconds, score) of one training run."""
    from domainmona.geo.dettrain import train_detection
    from domainmona.geo.segtrain import SegTrainOptions, train_segmentation

    tile = {**recipe["tile"], "seed": seed}  # the K-shot subset: scene runs draw it with the training seed
    tile["bands"] = tuple(tile["bands"]) if tile.get("bands") else None
    run_dir = work / task / f"{source.replace(' ', '-')}-seed{seed}"
    chips, scenes = None, None
    if source == "chips":
        chips = run_dir / "chips"
        tile_scenes([scene.raster], scene.labels, chips, TileOptions(task=task, **tile))
    else:
        scenes = SceneOptions([scene.raster], scene.labels, tile["size"], tile["overlap"], tile["bands"],
                              shots=tile["shots"], sampler=source.split()[1])
    settings = {**recipe["train"], "max_iters": iters, "seed": seed}
    start = time.perf_counter()
    if task == "segmentation":
        checkpoint = train_segmentation(SegTrainOptions(chips, run_dir / "work", scenes=scenes, **settings))
    else:
        checkpoint = train_detection(chips, run_dir / "work", scenes=scenes, **settings)
    seconds = time.perf_counter() - start
    predict = recipe["predict"]
    prediction = run_dir / ("prediction.tif" if task == "segmentation" else "prediction.gpkg")
    tile_predict(scene.raster, checkpoint, prediction, None, None, predict["batch_size"],
                 predict.get("score_thr", 0.3))
    if task == "segmentation":
        return seconds, _report_iou(scene, prediction)
    (run_dir / "evaluation").mkdir()
    return seconds, _report_map(scene, prediction, run_dir / "evaluation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--tasks", nargs="+", default=["segmentation", "detection"])
    parser.add_argument("--det-iters", type=int, default=None, help="detection iterations (default the demo's)")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                        help="training data to compare (chips always first, the reference)")
    parser.add_argument("--seed", type=int, default=0, help="training seed, also the K-shot subset's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_geo_scenes_"))
    recipes = load_recipe("geo-demo")
    sections: dict[str, list[str]] = {}
    for task in args.tasks:
        recipe = recipes[task]
        iters = args.det_iters if task == "detection" and args.det_iters else recipe["train"]["max_iters"]
        scene = write_scene(work / task / "scene.tif", work / task / "labels.gpkg", SceneSpec(**recipe["scene"]))
        sources = ["chips", *(source for source in args.sources if source != "chips")]
        rows = [(source, *run(task, source, work, scene, recipe, iters, args.seed)) for source in sources]
        metric = "mIoU" if task == "segmentation" else "mAP (VOC07, IoU 0.5)"
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        heading = f"## {task}: {metric} over the whole demo scene, {iters} iterations, seed {args.seed}"
        sections[heading] = ["", f"{when}, {machine()}, 1 torch thread, shared with other jobs (times are indicative; chips' "
                  "train s leave out `tile`'s own time). "
                  f"Scene {recipe['scene']}, windows {recipe['tile']}, training {recipe['train'] | {'max_iters': iters}}.", "",
                  f"| training data | {metric} | difference to chips | train s |", "| --- | ---: | ---: | ---: |"]
        sections[heading] += [f"| {source} | {score:.3f} | {score - rows[0][2]:+.3f} | {seconds:.0f} |"
                              for source, seconds, score in rows]
        sections[heading].append("")
    sections = {**earlier_sections(), **sections}  # a rerun replaces its own section only
    lines = ["# Training from scenes vs from chips (geo demo)", ""]
    for heading in sorted(sections, key=lambda h: (not h.startswith("## segmentation"), h)):
        lines += [heading, *sections[heading]]
    write_markdown(RESULTS, lines)


def earlier_sections() -> dict[str, list[str]]:
    """The results file's sections by heading (task, iterations, seed), to keep those not rerun."""
    sections: dict[str, list[str]] = {}
    heading = None
    for line in RESULTS.read_text().splitlines() if RESULTS.is_file() else []:
        if line.startswith("## "):
            heading = line
            sections[heading] = []
        elif heading:
            sections[heading].append(line)
    return sections


if __name__ == "__main__":
    main()
