"""Few-shot transfer on real aerial imagery with real ImageNet weights (issue 25, items 2 and 3).

Detection: the NEON OSBS_029 tile DeepForest ships (400x400 RGB, 0.1 m, 61 tree-crown boxes) is split at pixel
column SPLIT_COLUMN: the training raster is the west part (columns 0-199), the test raster the east part
(200-399), cropped into separate GeoTIFFs, so no training chip holds a test pixel. A box belongs to the part
holding its centre and is clipped to that part (6 boxes cross the line). Each (K, seed) tiles the training raster
once with `domainmona tile --shots K --seed SEED` (whole chips, all their trees labelled: the same chips for every
row, paired); K = all tiles every chip. Each row then runs in one fresh process (`cli_child`): `domainmona train
geo-det` with `--max-iters` the same for every K and row, then `domainmona tile-predict` on the test raster; the
score is mAP@0.5 (VOC07, the DOTA evaluator, as the geo demo scores) of the predicted boxes against the east
part's boxes. Backbones: MobileNetV2 and EfficientNet-Lite0 with the real ImageNet weights (`--pretrained`, from
benchmarks/real_data.py's packages) and the shipped micro Swin (the pipelines' default weights for `micro`).

Segmentation: the Landsat 8 scene and its 4 land-cover polygons (one per class). Each polygon is split at its
centroid's easting: the west part trains, the east part is held out. The training raster is the scene with every
pixel outside the west parts set to nodata (0, the scene's own fill value), so no loss is taken on unlabelled land
and the held-out parts are never seen; `tile --task segmentation` -> `train geo-seg` -> `tile-predict` on the
unchanged scene; mIoU over the 4 classes on the held-out parts' pixels.

Every run also checks item 3: the Sentinel-2 netCDF (6 bands; its CRS and transform are only netCDF global attributes,
which GDAL does not read as georeferencing, so it is converted to a GeoTIFF with CRS EPSG:`crs` and the
`transform` attribute) and the 4-band RGBN GeoTIFF, each with NDVI labels (vegetation / other, polygonised from
the raster itself: a pipeline check, not an accuracy figure), through `tile`, `train geo-seg --scenes` and
`tile-predict`; and `tile-predict --cog` on the Landsat scene checked as a COG in the scene's CRS.

Writes benchmarks/results/real_transfer.{md,json,png} (`--quick`: real_transfer_quick.*, a smoke run).

    .venv/bin/python benchmarks/real_transfer.py [--quick] [--seeds 3] [--det-iters 20]
                                                 [--seg-iters 40] [--jobs 2] [--from-json RESULTS.json]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ct_adapt import Refused, peak_rss_mb  # noqa: E402
from real_data import ROLES, _boxes, fetch, neon_boxes_to_gpkg, sha256  # noqa: E402
from report import Journal, machine, study_arguments, write_markdown  # noqa: E402
from transfer.run import METHOD_OPTIONS  # noqa: E402

from domainmona.errors import UserError  # noqa: E402
from domainmona.io import atomic_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPLIT_COLUMN = 200  # NEON OSBS_029: columns west of it train, the rest is the test raster
DET_SIZE, DET_OVERLAP = 128, 32
SEG_SIZE, SEG_OVERLAP = 64, 16
SEG_MARGIN = 64  # pixels of scene around the polygons in the segmentation test raster
SHOTS = (5, 20, None)  # None: every tree of the training part
# The methods the issue names, then the transfer study's best two others at its largest K (<= 5% trainable:
# parallel-adapter 0.534, vpt-deep 0.515 mIoU at K = 20; benchmarks/results/transfer_study.md).
METHODS = ("full", "fixed", "bitfit", "lora", "conv-adapter", "mona", "parallel-adapter", "vpt-deep")
# Backbone -> the real_data role of its ImageNet weights (None: the shipped micro Swin, loaded by default).
BACKBONES = {"mobilenetv2": "mobilenetv2-imagenet", "efficientnet-lite0": "lite0-imagenet", "micro": None}
SCORE_THR = 0.05  # tile-predict's detection threshold: low, as mAP ranks every detection
NODATA_S2 = 32768


@dataclass(frozen=True)
class Job:
    """One training run and its prediction: `task` geo-det or geo-seg."""

    task: str
    backbone: str
    method: str
    k: int | None
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.backbone}-{self.method}-k{self.k or 'all'}-s{self.seed}"


# ---------------------------------------------------------------------------------------------- data preparation
def split_boxes(boxes: list[tuple], column: float, width: float) -> tuple[list[tuple], list[tuple]]:
    """Pixel boxes (xmin, ymin, xmax, ymax, label) -> (west, east): each box goes to the part holding its centre,
    clipped to it; east boxes are shifted into the east raster's columns (minus `column`)."""
    west, east = [], []
    for x0, y0, x1, y1, label in boxes:
        if (x0 + x1) / 2 < column:
            west.append((x0, y0, min(x1, column), y1, label))
        else:
            east.append((max(x0, column) - column, y0, min(x1, width) - column, y1, label))
    return west, east


def crop_raster(src_path: Path, out: Path, col0: int, col1: int, row0: int = 0, row1: int | None = None) -> Path:
    """Columns col0..col1 (rows row0..row1, default all) of the raster as a GeoTIFF of their own (transform
    moved, CRS and nodata kept)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        row1 = src.height if row1 is None else row1
        window = Window(col0, row0, col1 - col0, row1 - row0)
        profile = {**src.profile, "driver": "GTiff", "width": col1 - col0, "height": row1 - row0,
                   "transform": src.window_transform(window)}
        with atomic_path(out) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return out


def write_box_csv(path: Path, boxes: list[tuple], image: str) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "xmin", "ymin", "xmax", "ymax", "label"])
        writer.writerows([image, *box] for box in boxes)
    return path


def detection_split(files: dict[str, Path], work: Path) -> dict:
    """train.tif/train.gpkg (west) and test.tif (east) with the east's pixel boxes, under `work`."""
    import rasterio

    with rasterio.open(files["neon-osbs-raster"]) as src:
        width = src.width
    boxes = _boxes(files["neon-osbs-boxes"], files["neon-osbs-raster"].name)
    west, east = split_boxes(boxes, SPLIT_COLUMN, width)
    work.mkdir(parents=True, exist_ok=True)
    train = crop_raster(files["neon-osbs-raster"], work / "train.tif", 0, SPLIT_COLUMN)
    test = crop_raster(files["neon-osbs-raster"], work / "test.tif", SPLIT_COLUMN, width)
    labels = neon_boxes_to_gpkg(write_box_csv(work / "train.csv", west, "train.tif"), train, work / "train.gpkg")
    return {"train": train, "labels": labels, "test": test, "test_boxes": east, "west": len(west),
            "east": len(east), "crossing": sum(b[0] < SPLIT_COLUMN < b[2] for b in boxes)}


def split_polygons(polygons, classes) -> tuple[list, list]:
    """Each polygon cut at its centroid's x: (west parts, east parts) as (polygon, class) pairs."""
    import shapely

    west, east = [], []
    for polygon, name in zip(polygons, classes):
        x0, y0, x1, y1 = polygon.bounds
        cx = polygon.centroid.x
        west.append((shapely.intersection(polygon, shapely.box(x0 - 1, y0 - 1, cx, y1 + 1)), name))
        east.append((shapely.intersection(polygon, shapely.box(cx, y0 - 1, x1 + 1, y1 + 1)), name))
    return west, east


def segmentation_split(files: dict[str, Path], work: Path) -> dict:
    """The Landsat training raster (only the polygons' west parts valid, the rest nodata 0), their labels, and
    the east parts (held out) in the scene's CRS."""
    import pyogrio
    import rasterio
    import shapely
    from rasterio.features import geometry_mask

    from domainmona.geo.vectors import write_polygons

    scene, gpkg = files["landsat8"], files["landsat8-polygons"]
    _, _, wkb, (names,) = pyogrio.raw.read(gpkg, columns=["name"])
    west, east = split_polygons(shapely.from_wkb(wkb), names)
    work.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as src:
        keep = geometry_mask([p for p, _ in west], out_shape=(src.height, src.width), transform=src.transform,
                             invert=True)
        data = src.read() * keep
        crs = src.crs
        with atomic_path(work / "train.tif") as tmp, rasterio.open(tmp, "w", **{**src.profile, "nodata": 0}) as dst:
            dst.write(data)
        # The test raster: the unchanged scene around the polygons (SEG_MARGIN pixels beyond them).
        x0, y0, x1, y1 = shapely.total_bounds(shapely.from_wkb(wkb))
        row0, col0 = src.index(x0, y1)
        row1, col1 = src.index(x1, y0)
        transform, width, height = src.transform, src.width, src.height
    labels = write_polygons(work / "train.gpkg", np.array([p for p, _ in west]),
                            {"class": np.array([c for _, c in west], dtype=object)}, crs)
    test = crop_raster(scene, work / "test.tif", max(col0 - SEG_MARGIN, 0), min(col1 + SEG_MARGIN, width),
                       max(row0 - SEG_MARGIN, 0), min(row1 + SEG_MARGIN, height))
    return {"train": work / "train.tif", "labels": labels, "test": test, "held_out": east,
            "classes": sorted(set(names.tolist())), "pixels": {"train": int(keep.sum()),
            "held_out": int(sum(p.area for p, _ in east) / abs(transform.a * transform.e))}}


# ------------------------------------------------------------------------------------------------------ scoring
def box_map(boxes: list[tuple], prediction: Path, transform, work: Path) -> float:
    """mAP@0.5 (VOC07) of a tile-predict GeoPackage against pixel boxes, by the geo demo's DOTA scoring."""
    import shapely

    from domainmona.geo.demo import _report_map

    polygons = np.array([shapely.box(x0, y0, x1, y1) for x0, y0, x1, y1, _ in boxes])
    truth = SimpleNamespace(polygons=polygons, classes=np.array([b[4] for b in boxes]), transform=transform)
    work.mkdir(parents=True, exist_ok=True)
    return float(_report_map(truth, prediction, work))


def held_out_miou(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> tuple[float, list[float]]:
    """mIoU over classes 1..n_classes on the labelled pixels (truth > 0) only; predictions elsewhere do not
    count, a labelled pixel predicted as another class (background included) counts against both."""
    labelled = truth > 0
    ious = []
    for c in range(1, n_classes + 1):
        inter = np.sum((predicted == c) & (truth == c))
        union = np.sum(((predicted == c) & labelled) | (truth == c))
        ious.append(float(inter / union) if union else 0.0)
    return float(np.mean(ious)), ious


def polygons_miou(prediction: Path, held_out: list, classes: list[str]) -> float:
    """held_out_miou of a tile-predict class map (its classes in `classes` order) on the held-out parts."""
    import rasterio
    from rasterio.features import rasterize

    with rasterio.open(prediction) as src:
        predicted, transform = src.read(1), src.transform
    truth = rasterize([(p, classes.index(c) + 1) for p, c in held_out], out_shape=predicted.shape,
                      transform=transform, fill=0, dtype="uint8")
    return held_out_miou(predicted, truth, len(classes))[0]


# ------------------------------------------------------------------------------------------------------- runs
def cli_child(usage: Path, commands: list[list[str]]) -> None:
    """Run each `domainmona` argv in this one process (a fresh one per row), then write peak memory and CPU s."""
    from domainmona.cli import run

    for argv in commands:
        code = run(argv)
        if code:
            sys.exit(code)
    usage.write_text(json.dumps({"peak_mb": peak_rss_mb(), "cpu_s": time.process_time()}))
    sys.exit(0)


def method_flags(backbone: str, method: str, pretrained: Path | None) -> list[str]:
    flags = ["--backbone", backbone, "--adapter", method]
    flags += [arg for key, value in METHOD_OPTIONS.get(method, {}).items()
              for arg in ("--adapter-opt", f"{key}={value}")]
    return flags + (["--pretrained", str(pretrained)] if pretrained else [])


def run_job(job: Job, chips: Path, test: Path, iters: int, work: Path, weights: dict) -> dict:
    """`train geo-det|geo-seg` then `tile-predict` in one fresh process; the prediction path, memory, time."""
    out = work / job.name
    out.mkdir(parents=True)
    prediction = out / ("prediction.gpkg" if job.task == "geo-det" else "prediction.tif")
    train = ["train", job.task, "--chips", str(chips), "--work-dir", str(out / "run"), "--max-iters", str(iters),
             "--seed", str(job.seed), *method_flags(job.backbone, job.method, weights.get(job.backbone))]
    if job.task == "geo-seg":
        train += ["--batch-size", "4"]
    checkpoint = out / "run" / ("final.safetensors" if job.task == "geo-det" else "geo-seg.safetensors")
    predict = ["tile-predict", str(test), "--checkpoint", str(checkpoint), "--out", str(prediction)]
    if job.task == "geo-det":
        predict += ["--score-thr", str(SCORE_THR)]
    log, usage = out / "log.txt", out / "usage.json"
    start = time.perf_counter()
    with log.open("w") as stream:
        done = subprocess.run([sys.executable, __file__, "--cli-child", str(usage), json.dumps([train, predict])],
                              stdout=stream, stderr=subprocess.STDOUT)
    text = log.read_text()
    refusal = [line for line in text.splitlines() if line.startswith("error: ")]
    if done.returncode == 2 and refusal:
        raise Refused(refusal[-1].removeprefix("error: "))
    if done.returncode:
        raise RuntimeError(f"{job.name} failed:\n{text[-3000:]}")
    loaded = next((line.strip() for line in text.splitlines() if "loaded" in line and "tensors" in line), None)
    return {**json.loads(usage.read_text()), "wall_s": time.perf_counter() - start, "prediction": prediction,
            "weights_line": loaded}


def cli(work: Path, name: str, argv: list[str]) -> str:
    """One `domainmona` command in a fresh process (tile, or the raster checks); its output."""
    log = work / f"{name}.log"
    with log.open("w") as stream:
        done = subprocess.run([sys.executable, __file__, "--cli-child", str(work / f"{name}.usage.json"),
                               json.dumps([argv])], stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"domainmona {' '.join(argv)} failed:\n{log.read_text()[-3000:]}")
    return log.read_text()


def tile_shots(work: Path, det: dict, k: int | None, seed: int) -> tuple[Path, int]:
    """The training part's chips for (K, seed) (`tile --shots K --seed SEED`; K None: every chip) and the
    number of trees labelled in them (chip edges cut some twice; DOTA difficulty 2 is a cut box)."""
    chips = work / f"chips-k{k or 'all'}-s{seed}"
    cli(work, chips.name, ["tile", str(det["train"]), "--labels", str(det["labels"]), "--out", str(chips),
                           "--size", str(DET_SIZE), "--overlap", str(DET_OVERLAP), "--seed", str(seed),
                           *(["--shots", str(k)] if k else [])])
    objects = sum(len(p.read_text().splitlines()) for p in (chips / "annfiles").glob("*.txt"))
    return chips, objects


def score(job: Job, run: dict, det: dict, seg: dict, work: Path) -> float:
    import rasterio

    if job.task == "geo-det":
        with rasterio.open(det["test"]) as src:
            transform = src.transform
        return box_map(det["test_boxes"], run["prediction"], transform, work / job.name / "evaluation")
    return polygons_miou(run["prediction"], seg["held_out"], seg["classes"])


# ------------------------------------------------------------------------------------ item 3: real rasters
def netcdf_to_geotiff(nc: Path, out: Path) -> dict:
    """The netCDF's 2-D band variables stacked into one GeoTIFF. GDAL reads no georeferencing from this file
    (its x/y variables carry no CF attributes), so CRS and transform come from its global attributes `crs`
    (an EPSG code) and `transform` (GDAL's a, b, c, d, e, f), checked against the x/y pixel-centre variables;
    nodata from `nodatavals`. Returns what it did (bands, CRS, transform, where they came from)."""
    import rasterio
    from affine import Affine

    with rasterio.open(nc) as root:
        tags, subdatasets = root.tags(), root.subdatasets
    values = {key.removeprefix("NC_GLOBAL#"): value for key, value in tags.items()}
    numbers = lambda text: [float(v) for v in text.strip("{}").split(",")]  # noqa: E731
    try:
        crs, transform = f"EPSG:{int(values['crs'])}", Affine(*numbers(values["transform"]))
        nodata = numbers(values["nodatavals"])[0]
    except (KeyError, ValueError):
        raise UserError(f"{nc}: no crs/transform/nodatavals global attributes to georeference it") from None
    bands, arrays, coords = [], [], {}
    for name in subdatasets:
        with rasterio.open(name) as src:
            variable = name.rsplit(":", 1)[-1]
            if src.height == 1:  # the x / y coordinate variables
                coords[variable] = src.read(1)[0]
                continue
            bands.append(variable)
            arrays.append(src.read(1))
    if coords:
        centres = (transform * (0.5, 0.5))
        if not (np.isclose(coords["x"][0], centres[0]) and np.isclose(coords["y"][0], centres[1])):
            raise UserError(f"{nc}: the transform attribute disagrees with the x/y variables")
    data = np.stack(arrays)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(bands), dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata, tiled=True, compress="deflate")
    with atomic_path(out) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(bands)
    return {"bands": bands, "crs": crs, "transform": list(transform)[:6], "nodata": nodata,
            "valid_fraction": float((data[0] != nodata).mean()), "georeferencing": "netCDF global attributes"}


def ndvi_labels(raster: Path, red: int, nir: int, out: Path) -> Path:
    """Labels made from the raster itself for a pipeline check: 'vegetation' where NDVI is above its median
    over the valid pixels, 'other' below, polygonised."""
    import rasterio
    import shapely
    from rasterio.features import shapes

    from domainmona.geo.vectors import write_polygons

    with rasterio.open(raster) as src:
        r, n = src.read(red).astype("float64"), src.read(nir).astype("float64")
        valid = (src.read_masks(red) > 0) & (r + n > 0)
        transform, crs = src.transform, src.crs
    ndvi = np.where(valid, (n - r) / np.maximum(n + r, 1), 0)
    classes = np.where(ndvi > np.median(ndvi[valid]), 1, 2).astype("uint8")
    polygons, names = [], []
    for geometry, value in shapes(classes, mask=valid, transform=transform):
        polygons.append(shapely.geometry.shape(geometry))
        names.append("vegetation" if value == 1 else "other")
    return write_polygons(out, np.array(polygons), {"class": np.array(names, dtype=object)}, crs)


def check_prediction(raster: Path, prediction: Path, cog: bool = False) -> dict:
    """The class map's grid is the raster's (CRS, transform, size); with `cog`: GDAL's COG layout, tiled,
    with overviews."""
    import rasterio

    with rasterio.open(raster) as src, rasterio.open(prediction) as out:
        result = {"same_grid": out.crs == src.crs and out.transform.almost_equals(src.transform)
                  and out.shape == src.shape, "crs": str(out.crs), "shape": list(out.shape),
                  "classes_found": sorted(int(v) for v in np.unique(out.read(1)))}
        if cog:
            result.update(layout=out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"), tiled=out.profile.get("tiled"),
                          block=list(out.block_shapes[0]), overviews=out.overviews(1))
            result["valid_cog"] = bool(result["same_grid"] and result["layout"] == "COG" and result["tiled"]
                                       and result["overviews"])
    return result


def raster_checks(files: dict[str, Path], work: Path, iters: int, seg_checkpoint: Path | None) -> list[dict]:
    """Item 3: the Sentinel-2 product (converted) and the RGBN raster through tile, train geo-seg --scenes and
    tile-predict; tile-predict --cog on the Landsat scene with `seg_checkpoint`."""
    work.mkdir(parents=True, exist_ok=True)
    s2 = work / "sentinel2.tif"
    conversion = netcdf_to_geotiff(files["sentinel2-netcdf"], s2)
    rasters = [("Sentinel-2 L2A, 6 bands uint16 (netCDF -> GeoTIFF)", s2, conversion["bands"].index("red") + 1,
                conversion["bands"].index("nir") + 1, conversion),
               ("RGBN, 4 bands uint8 (GeoTIFF)", files["rgbn-20160101"], 1, 4, {})]
    checks = []
    for label, raster, red, nir, extra in rasters:
        name = raster.stem.replace(".", "_")
        labels = ndvi_labels(raster, red, nir, work / f"{name}-ndvi.gpkg")
        out = cli(work, f"{name}-tile", ["tile", str(raster), "--labels", str(labels), "--out",
                                         str(work / f"{name}-chips"), "--task", "segmentation", "--size", "64",
                                         "--overlap", "0"])
        cli(work, f"{name}-train", ["train", "geo-seg", "--scenes", str(raster), "--labels", str(labels), "--size",
                                    "64", "--overlap", "0", "--work-dir", str(work / f"{name}-run"), "--max-iters",
                                    str(iters), "--encoder", "micro", "--adapter", "mona", "--batch-size", "2"])
        cli(work, f"{name}-predict", ["tile-predict", str(raster), "--checkpoint",
                                      str(work / f"{name}-run" / "geo-seg.safetensors"), "--out",
                                      str(work / f"{name}-prediction.tif")])
        checks.append({"raster": label, "file": raster.name, "tile": out.strip().splitlines()[-2].strip(),
                       **extra, **check_prediction(raster, work / f"{name}-prediction.tif")})
    if seg_checkpoint is not None:
        landsat = files["landsat8"]
        cli(work, "landsat-cog", ["tile-predict", str(landsat), "--checkpoint", str(seg_checkpoint), "--out",
                                  str(work / "landsat-cog.tif"), "--cog"])
        checks.append({"raster": "Landsat 8 scene, tile-predict --cog", "file": landsat.name,
                       **check_prediction(landsat, work / "landsat-cog.tif", cog=True)})
    return checks


# ------------------------------------------------------------------------------------------------------ study
def study(args, work: Path, journal: Journal) -> dict:
    files = fetch(cache=args.cache)
    weights = {backbone: files[role] for backbone, role in BACKBONES.items() if role}
    det = detection_split(files, work / "det")
    seg = segmentation_split(files, work / "seg")
    shots, seeds = ((5,), 1) if args.quick else (SHOTS, args.seeds)
    methods = QUICK_METHODS if args.quick else METHODS
    chips, refused, runs = {}, {}, list(journal.done)
    jobs = []
    for seed in range(seeds):
        chips[("geo-seg", None, seed)] = seg_chips = work / f"seg-chips-s{seed}"
        cli(work, seg_chips.name, ["tile", str(seg["train"]), "--labels", str(seg["labels"]), "--out", str(seg_chips),
                                   "--task", "segmentation", "--size", str(SEG_SIZE), "--overlap", str(SEG_OVERLAP)])
        for k in shots:
            chips[("geo-det", k, seed)], labelled = tile_shots(work, det, k, seed)
            det.setdefault("labelled", {})[f"{k or 'all'}-s{seed}"] = labelled
    for seed in range(seeds):  # seed by seed, every cell once before any twice (a stopped study has them all);
        for k in shots:        # the first K first, so that a refused row is known before its other cells run
            jobs += [Job("geo-det", b, m, k, seed) for b in BACKBONES for m in methods]
        jobs += [Job("geo-seg", b, m, None, seed) for b in BACKBONES for m in methods]
    todo = [] if args.partial else [job for job in jobs if run_key(vars(job)) not in journal.keys]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs done before (journal {journal.path.name})", flush=True)

    def one(job: Job) -> list[dict]:
        key = f"{job.task} {job.backbone} {job.method}"
        if key in refused:
            return []
        iters = args.det_iters if job.task == "geo-det" else args.seg_iters
        test = det["test"] if job.task == "geo-det" else seg["test"]
        try:
            run = run_job(job, chips[(job.task, job.k, job.seed)], test, iters, work, weights)
        except Refused as exc:
            refused[key] = str(exc)
            print(f"{key}: refused: {exc}", flush=True)
            return []
        value = score(job, run, det, seg, work)
        if job.task == "geo-det" and not args.keep:  # mmengine's iter_*.pth: the full study kept 56 GB of them
            shutil.rmtree(work / job.name / "run")
        print(f"{job.name}: {'mAP' if job.task == 'geo-det' else 'mIoU'} {value:.3f} in {run['wall_s']:.0f} s",
              flush=True)
        return [{"task": job.task, "backbone": job.backbone, "method": job.method, "k": job.k, "seed": job.seed,
                 "score": value, "iters": iters, **{k: v for k, v in run.items() if k != "prediction"}}]

    with ThreadPoolExecutor(args.jobs) as pool:
        for done in pool.map(lambda job: journal.add(one(job)), todo):
            runs += done
    checks = [] if args.partial else raster_checks(files, work / "rasters", 2 if args.quick else 20,
                                                   landsat_checkpoint(work, jobs, chips, seg, weights, args))
    return {"runs": runs, "refused": refused, "checks": checks, "shots": [k or "all" for k in shots],
            "seeds": seeds, "methods": list(methods), "planned_runs": len(jobs),
            "split": {"detection": {key: det[key] for key in ("west", "east", "crossing", "labelled")},
                      "segmentation": seg["pixels"]}}


def run_key(run: dict) -> tuple:
    """A run's cell and seed, in the journal and in the job list alike."""
    return run["task"], run["backbone"], run["method"], run["k"], run["seed"]


def landsat_checkpoint(work: Path, jobs: list, chips: dict, seg: dict, weights: dict, args) -> Path:
    """A geo-seg checkpoint for the Landsat COG check: the first segmentation run's of this process, or (its
    runs all journalled by an earlier one) that run again."""
    first = next(job for job in jobs if job.task == "geo-seg")
    checkpoint = work / first.name / "run" / "geo-seg.safetensors"
    if not checkpoint.exists():
        run_job(first, chips[(first.task, first.k, first.seed)], seg["test"], args.seg_iters, work, weights)
    return checkpoint


QUICK_METHODS = ("full", "mona", "vpt-deep")
CAVEAT = ("the budget. The detector's recipe (Oriented R-CNN, 2000 RPN proposals) costs seconds per iteration on "
          "one CPU thread, so the default 20 iterations per run (chosen to keep 3 backbones x 8 methods x 3 K x 3 "
          "seeds within about 90 minutes on 2 cores) leave the new FPN and heads barely trained: at this budget the "
          "mAP columns compare how fast each row starts, not where it ends; the geo demo trains 300 iterations. "
          "`--det-iters` and `--seg-iters` raise it (on a GPU the whole grid at 300 iterations is minutes per "
          "row). The test part holds 30 trees, so one tree is worth about 0.03 AP; every lr is the CLI's "
          "(1e-4 for every detector row), not tuned per method.")


def versions() -> dict[str, str]:
    names = ("domainmona", "torch", "timm", "segmentation-models-pytorch", "rasterio")  # the detector is in-tree
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - not installed
            found[name] = "not installed"
    return found


def sources_read() -> list[dict]:
    """real_data's pinned table: each package, its archive's SHA-256 and each file's."""
    seen = {}
    for role, source in ROLES.items():
        entry = seen.setdefault(source.requirement, {"requirement": source.requirement, "archive": source.archive,
                                                     "sha256": source.sha256, "licence": source.licence,
                                                     "files": {}})
        entry["files"][Path(source.members[role].path).name] = source.members[role].sha256
    return list(seen.values())


def summarise(runs: list[dict]) -> dict[str, dict]:
    """'task|backbone|method|k' -> mean, std (None with one seed), n over seeds."""
    cells: dict[str, list[float]] = {}
    for run in runs:
        cells.setdefault(f"{run['task']}|{run['backbone']}|{run['method']}|{run['k'] or 'all'}", []).append(run["score"])
    return {key: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}
            for key, v in cells.items()}


def cell(summary: dict, key: str, seeds: int) -> str:
    """mean ± std over seeds; (n=) when fewer seeds than planned are in."""
    if key not in summary:
        return "-"
    value = summary[key]
    return (f"{value['mean']:.3f}" + (f" ± {value['std']:.3f}" if value["std"] is not None else "")
            + (f" (n={value['n']})" if value["n"] < seeds else ""))


def resumed_line(setup: dict, result: dict) -> str:
    """How long the study took, and for a partial report how much of it is there."""
    line = f"whole run {setup['minutes']:.1f} min. "
    if setup.get("resumed_runs"):
        line = (f"resumed from its journal ({setup['resumed_runs']} runs done before): the runs' own wall time "
                f"{setup['run_minutes']:.1f} min over {setup['jobs']} side by side, this process "
                f"{setup['minutes']:.1f} min. ")
    if setup.get("partial"):
        line += (f"**Partial report**: {setup['finished_runs']} of {result['planned_runs']} runs finished; a cell "
                 "of fewer seeds says how many (n=), '-' has none yet; the item-3 raster checks run with the whole "
                 "study; running the command again without `--partial` resumes from "
                 "`benchmarks/results/real_transfer.runs.jsonl`. ")
    return line


def report(stem: Path, setup: dict, result: dict) -> None:
    summary = summarise(result["runs"])
    shots, methods = result["shots"], result["methods"]
    split = result["split"]
    lines = [
        f"# Few-shot transfer on real aerial imagery with real ImageNet weights{' (smoke run)' if setup['quick'] else ''}",
        "",
        f"Written by `benchmarks/real_transfer.py` on {setup['date']}, {setup['machine']}, "
        f"{setup.get('threads', 1)} thread(s) per run (OMP_NUM_THREADS), {setup['jobs']} run(s) side by side; "
        + resumed_line(setup, result) +
        f"Command: `{setup['command']}`. Versions: "
        + ", ".join(f"{k} {v}" for k, v in setup["versions"].items()) + ".",
        "",
        "## Tree-crown detection, NEON OSBS_029 (mAP@0.5 on the held-out east part)",
        "",
        f"Training raster: columns 0-{SPLIT_COLUMN - 1} of the 400x400 tile ({split['detection']['west']} trees); "
        f"test raster: columns {SPLIT_COLUMN}-399 ({split['detection']['east']} trees), never tiled or trained on; "
        f"a box goes to the part holding its centre, clipped to it ({split['detection']['crossing']} cross the "
        f"line). Chips {DET_SIZE} px, overlap {DET_OVERLAP}; K-shot chips by `tile --shots K --seed SEED` (whole "
        "chips, every tree in a chosen chip labelled; the same chips for every row of a (K, seed)); boxes "
        "labelled per (K, seed), cut boxes at chip edges counted in each chip: "
        + ", ".join(f"{k}: {v}" for k, v in split["detection"]["labelled"].items()) + ". "
        f"Budget: `train geo-det --max-iters {setup['det_iters']}` for every row and K (the CLI's recipe: "
        "Oriented R-CNN, FPN, AdamW lr 1e-4, batch 2, step decay), seeds 0.."
        f"{result['seeds'] - 1}; `tile-predict --score-thr {SCORE_THR}` on the test raster; mAP (VOC07, IoU 0.5) "
        "by the DOTA evaluator, as `geo-demo` scores. Mean ± std over seeds.",
        "",
    ]
    for backbone in BACKBONES:
        lines += [f"**{backbone}** ({setup['weights'][backbone]})", "",
                  "| method | " + " | ".join(f"mAP K={k}" for k in shots) + " |",
                  "|---|" + "---:|" * len(shots)]
        for method in methods:
            key = f"geo-det {backbone} {method}"
            if key in result["refused"]:
                lines.append(f"| {method} | " + " | ".join(["refused"] * len(shots)) + " |")
            else:
                lines.append(f"| {method} | " + " | ".join(cell(summary, f"geo-det|{backbone}|{method}|{k}",
                                                                result["seeds"])
                                                           for k in shots) + " |")
        lines.append("")
    lines += [
        "## Land cover, Landsat 8 scene (mIoU on the held-out parts of its 4 polygons)",
        "",
        "The scene's GeoPackage holds 4 polygons, one per class (crop, developed, tree, water). Each is cut at its "
        "centroid's easting: the west part trains, the east part is held out. The training raster is the scene "
        "with every pixel outside the west parts set to nodata (0, the scene's own fill), so no loss is taken on "
        f"unlabelled land and the held-out pixels are never seen ({split['segmentation']['train']} training "
        f"pixels, {split['segmentation']['held_out']} held out). `tile --task segmentation --size {SEG_SIZE}` -> "
        f"`train geo-seg --max-iters {setup['seg_iters']} --batch-size 4` -> `tile-predict` on the unchanged scene "
        f"around the polygons ({SEG_MARGIN} px margin); mIoU over the 4 classes on the held-out pixels (a pixel "
        "predicted as background counts against its class).",
        "",
        "| method | " + " | ".join(f"mIoU {b}" for b in BACKBONES) + " |", "|---|" + "---:|" * len(BACKBONES)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(
            "refused" if f"geo-seg {b} {method}" in result["refused"]
            else cell(summary, f"geo-seg|{b}|{method}|all", result["seeds"])
            for b in BACKBONES) + " |")
    lines += ["", "Method options (`--adapter-opt`, the transfer study's): "
              + "; ".join(f"{m}: {', '.join(f'{k}={v}' for k, v in METHOD_OPTIONS[m].items())}"
                          for m in methods if m in METHOD_OPTIONS) + ".", ""]
    if result["refused"]:
        lines += ["Refused by the CLI (its line): "
                  + "; ".join(f"{key}: \"{line}\"" for key, line in result["refused"].items()), ""]
    lines += ["## Real rasters through every geo command (item 3)", "",
              "Labels for these checks come from the rasters themselves (NDVI above / below its median over the "
              "valid pixels, polygonised): a pipeline check, not an accuracy figure. The rasterio here has GDAL's "
              "netCDF driver, but the Sentinel-2 file's georeferencing is only in its global attributes (`crs` "
              "8858, `transform`), which GDAL does not read: the benchmark converts it to a GeoTIFF with that "
              "CRS and transform (checked against the x/y variables) and nodata 32768 (`nodatavals`).", "",
              "| raster | check | result |", "|---|---|---|"]
    for check in result["checks"]:
        details = {k: v for k, v in check.items() if k not in ("raster", "file")}
        ok = check.get("valid_cog", check.get("same_grid"))
        lines.append(f"| {check['raster']} (`{check['file']}`) | {'pass' if ok else 'FAIL'} | "
                     f"{json.dumps(details)} |")
    lines += ["", "What would change it: " + CAVEAT, "", "## Data read", "", "| package | archive SHA-256 | files (SHA-256) |", "|---|---|---|"]
    lines += [f"| `{s['requirement']}` ({s['licence']}) | `{s['sha256']}` | "
              + "<br>".join(f"`{name}` `{digest}`" for name, digest in s["files"].items()) + " |"
              for s in setup["sources"]]
    lines += ["", "Weights: " + "; ".join(f"{b}: {line}" for b, line in setup["weights_lines"].items()), ""]
    write_markdown(stem.with_suffix(".md"), lines)
    plot(stem.with_suffix(".png"), result, summary)


def plot(path: Path, result: dict, summary: dict) -> None:
    """mAP against K per backbone (one line per method, std bars), and the segmentation mIoU per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots, methods = result["shots"], result["methods"]
    fig, axes = plt.subplots(1, len(BACKBONES) + 1, figsize=(4.2 * (len(BACKBONES) + 1), 3.8))
    for ax, backbone in zip(axes, BACKBONES):
        for method in methods:
            keys = [f"geo-det|{backbone}|{method}|{k}" for k in shots]
            if not any(k in summary for k in keys):
                continue
            means = [summary[k]["mean"] if k in summary else np.nan for k in keys]
            stds = [(summary[k]["std"] or 0) if k in summary else 0 for k in keys]
            ax.errorbar([str(k) for k in shots], means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set(title=f"trees, {backbone}", xlabel="K (trees)", ylabel="mAP@0.5, held-out part")
    for i, method in enumerate(methods):
        keys = [f"geo-seg|{b}|{method}|all" for b in BACKBONES]
        axes[-1].bar(np.arange(len(BACKBONES)) + i / (len(methods) + 1),
                     [summary[k]["mean"] if k in summary else 0 for k in keys], 1 / (len(methods) + 1),
                     yerr=[(summary[k]["std"] or 0) if k in summary else 0 for k in keys], label=method)
    axes[-1].set_xticks(np.arange(len(BACKBONES)) + 0.4, list(BACKBONES))
    axes[-1].set(title="Landsat land cover", ylabel="mIoU, held-out polygon parts")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    if sys.argv[1:2] == ["--cli-child"]:  # one row's commands, in the fresh process run_job starts
        cli_child(Path(sys.argv[2]), json.loads(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: K=5, 1 seed, {', '.join(QUICK_METHODS)}, "
                        "2 iterations")
    parser.add_argument("--det-iters", type=int, default=20, help="train geo-det iterations, every row and K")
    parser.add_argument("--seg-iters", type=int, default=40, help="train geo-seg iterations, every row")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument("--cache", type=Path, help="real_data's cache folder")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--partial", action="store_true", help="report the journal's finished runs only (a "
                        "stopped study resumes from its journal when run again without it)")
    args = study_arguments(parser, lambda stem, saved: report(stem, saved["setup"], saved["result"]))
    if args is None:
        return
    if args.quick:
        args.det_iters, args.seg_iters, args.seeds = 2, 2, 1
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # every command's process inherits it
    started = time.perf_counter()
    stem = RESULTS / ("real_transfer_quick" if args.quick else "real_transfer")
    stem.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(stem.with_suffix(".runs.jsonl"), {"det_iters": args.det_iters, "seg_iters": args.seg_iters,
                                                         "threads": args.threads}, key=run_key)
    try:
        with tempfile.TemporaryDirectory(prefix="real-transfer-") as tmp:
            work = args.keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            result = study(args, work, journal)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    lines = {}
    for run in result["runs"]:
        if run.get("weights_line") and run["backbone"] not in lines:
            lines[run["backbone"]] = run["weights_line"]
    setup = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": f"{machine()} (shared; load average {os.getloadavg()[0]:.1f} at the end)",
             "quick": args.quick, "threads": args.threads, "jobs": args.jobs, "det_iters": args.det_iters,
             "seg_iters": args.seg_iters,
             "command": " ".join([".venv/bin/python benchmarks/real_transfer.py", *sys.argv[1:]]),
             "minutes": (time.perf_counter() - started) / 60, "partial": args.partial,
             "resumed_runs": len(journal.done), "finished_runs": len(result["runs"]),
             "run_minutes": sum(run["wall_s"] for run in result["runs"]) / 60 / args.jobs,
             "versions": versions(), "sources": sources_read(),
             "weights": {b: f"ImageNet, `{Path(ROLES[r].members[r].path).name}`" if r else
                         "the shipped micro Swin, `micro`'s default weights" for b, r in BACKBONES.items()},
             "weights_lines": lines}
    with atomic_path(stem.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"setup": setup, "result": result}, indent=1, default=str))
    if not args.partial:
        journal.path.unlink(missing_ok=True)  # its runs are in the .json now
    report(stem, setup, result)


if __name__ == "__main__":
    main()
