"""`domainmona geo-demo`: sample scene → few-shot chips → Mona fine-tuning → tile-predict → PNG preview.

Settings come from pipelines/geo-demo.yaml. The preview and the score use the whole (small) demo scene.
Everything goes under `--out` (new, empty, or an earlier demo's folder); a rerun continues the training an
interrupted run left in `--out/work`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize

from domainmona.console import console
from domainmona.geo.labels import to_pixels
from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.geo.tiling import TileOptions, tile_scenes
from domainmona.io import atomic_path, check_parent, claim_dir
from domainmona.recipes import load_recipe

PREVIEW_PIXELS = 1024


def run_demo(out: Path, task: str) -> Path:
    """Run every stage under ``out``; returns the preview PNG."""
    from domainmona.geo.models import tile_predict

    recipe = load_recipe("geo-demo")[task]
    check_parent(out, "--out")
    claim_dir(out, "geo-demo")
    scene = write_scene(out / "scene.tif", out / "labels.gpkg", SceneSpec(**recipe["scene"]))
    tile = dict(recipe["tile"])
    tile["bands"] = tuple(tile["bands"]) if tile.get("bands") else None
    tile_scenes([scene.raster], scene.labels, out / "chips", TileOptions(task=task, **tile))
    checkpoint = _train(task, out, recipe["train"])
    prediction = out / ("prediction.tif" if task == "segmentation" else "prediction.gpkg")
    predict = recipe["predict"]
    tile_predict(scene.raster, checkpoint, prediction, None, None, predict["batch_size"],
                 predict.get("score_thr", 0.3))
    if task == "segmentation":
        _report_iou(scene, prediction)
    else:
        _report_map(scene, prediction, out / "evaluation")
    return _preview(scene, prediction, out / "preview.png")


def _train(task: str, out: Path, settings: dict) -> Path:
    if task == "detection":
        from domainmona.geo.dettrain import train_detection

        return train_detection(out / "chips", out / "work", resume=(out / "work" / "last_checkpoint").is_file(),
                               **settings)
    from domainmona.geo.segtrain import STATE, SegTrainOptions, train_segmentation

    # Mona adapts a pretrained encoder: the micro Swin's shipped weights, the default for it in every pipeline.
    return train_segmentation(SegTrainOptions(out / "chips", out / "work", resume=(out / "work" / STATE).is_file(),
                                              **settings))


def _report_iou(scene, prediction: Path) -> float:
    classes = sorted(set(scene.classes.tolist()))
    with rasterio.open(prediction) as src:
        predicted = src.read(1)
    truth = rasterize([(p, classes.index(c) + 1) for p, c in zip(scene.polygons, scene.classes)],
                      out_shape=predicted.shape, fill=0, dtype="uint8")
    valid = predicted != 255
    ious = []
    for index, name in enumerate(classes, start=1):
        inter = np.sum((predicted == index) & (truth == index) & valid)
        union = np.sum(((predicted == index) | (truth == index)) & valid)
        ious.append(inter / union if union else 0.0)
        console.print(f"IoU {name}: {ious[-1]:.3f}")
    console.print(f"mIoU over the scene: {np.mean(ious):.3f}")
    return float(np.mean(ious))


def _report_map(scene, prediction: Path, work: Path) -> float:
    """Whole-scene mAP (VOC07, polygon IoU 0.5) of the GeoPackage against the scene's labels, through the DOTA
    evaluator: labels and predictions are written as one DOTA image ('scene') in pixel coordinates."""
    import pyogrio

    from domainmona.boxes.detections import Detections
    from domainmona.boxes.labels import DotaObject, polygon_to_dota_quad, write_dota_labels
    from domainmona.detection.dota.evaluate import evaluate_task1
    from domainmona.detection.dota.merge import write_task1

    classes = sorted(set(scene.classes.tolist()))
    write_dota_labels(work / "labelTxt" / "scene.txt",
                      [DotaObject(polygon_to_dota_quad(p), c) for p, c in zip(scene.polygons, scene.classes)])
    _, _, wkb, (names, scores) = pyogrio.raw.read(prediction, columns=["class", "score"])
    quads = [polygon_to_dota_quad(p) for p in to_pixels(shapely.from_wkb(wkb), scene.transform)]
    detections = Detections.of(np.reshape(quads, (-1, 8)), scores, [classes.index(n) for n in names])
    write_task1(work / "task1", {"scene": detections}, classes)
    result = evaluate_task1(work / "task1", work / "labelTxt", classes)
    for name, per_class in result.per_class.items():
        console.print(f"AP {name}: {per_class.ap:.3f}")
    console.print(f"mAP over the scene (VOC07, IoU 0.5): {result.map:.3f}")
    return result.map


def _preview(scene, prediction: Path, png: Path) -> Path:
    """Scene (decimated) with the prediction over it: coloured classes or outlined boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyogrio

    from domainmona.geo.stats import scene_stats, stretch_to_uint8

    with rasterio.open(scene.raster) as src:
        scale = max(1.0, max(src.width, src.height) / PREVIEW_PIXELS)
        shape = (round(src.height / scale), round(src.width / scale))
        bands = [1, 2, 3][:src.count]
        rgb = stretch_to_uint8(src.read(bands, out_shape=(len(bands), *shape)), scene_stats(src, bands))
        transform = src.transform
    fig, ax = plt.subplots(figsize=(8, 8 * shape[0] / shape[1]))
    ax.imshow(rgb.transpose(1, 2, 0))
    if prediction.suffix == ".tif":
        with rasterio.open(prediction) as src:
            labels = src.read(1, out_shape=shape, resampling=Resampling.nearest).astype(float)
        labels[(labels == 0) | (labels == 255)] = np.nan
        ax.imshow(labels, alpha=0.45, cmap="tab10", vmin=0, vmax=10, interpolation="nearest")
    else:
        _, _, wkb, fields = pyogrio.raw.read(prediction, columns=["class", "score"])
        for polygon, cls in zip(to_pixels(shapely.from_wkb(wkb), transform), fields[0]):
            xy = np.asarray(polygon.exterior.coords) / scale
            ax.plot(xy[:, 0], xy[:, 1], lw=1.2)
            ax.text(xy[0, 0], xy[0, 1], cls, fontsize=6, color="yellow")
    ax.set_axis_off()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return png
