"""`domainmona tile`, `tile-predict`, `geo-demo`, `train geo-det|geo-seg`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from domainmona.adapters.backbones import DEFAULT_BACKBONE
from domainmona.commands import CommandGroups
from domainmona.console import console
from domainmona.options import (Runtime, adapter_opt_option, adapter_option, amp_option, backbone_option,
                                checkpoint_blocks_option, config_option, method_choice, onnx_model_option, positive,
                                pretrained_option, print_config_option, probability, recompute_option, runtime_option,
                                shots_option, side_opt_option, side_option)

Method = method_choice()  # the registered adapter methods
SEED_MAX = 2**32 - 1  # numpy's and mmengine's seeds are unsigned 32-bit
NODATA_HELP = ("Pixel value that marks nodata, replacing the raster's own (nan for float rasters; NaN and "
               "infinite float pixels are always nodata).")


class Sampler(str, Enum):
    random = "random"
    grid = "grid"


SCENE_FLAGS = "--labels, --size, --overlap, --bands, --class-field, --shots, --sampler, --nodata, --allow-no-crs"


def scene_inputs(chips: Optional[Path], scenes: Optional[list[Path]], labels: Optional[Path], size: Optional[int],
                 overlap: Optional[int], bands: Optional[str], class_field: Optional[str], shots: Optional[int],
                 sampler: Optional[Sampler], nodata: Optional[float], allow_no_crs: bool):
    """The scene inputs of `train geo-seg|geo-det` (domainmona.geo.scenes.SceneOptions), or None for --chips;
    exactly one of --chips and --scenes, the scene flags only with --scenes."""
    from domainmona.errors import UserError
    from domainmona.geo.predict_many import expand_scenes
    from domainmona.geo.raster import parse_bands
    from domainmona.geo.scenes import SceneOptions

    scene_flags = (labels, size, overlap, bands, class_field, shots, sampler, nodata)
    if (chips is None) == (not scenes):
        raise UserError("give --chips (from 'tile') or --scenes RASTER with --labels VECTOR, exactly one of the two")
    if chips is not None:
        if allow_no_crs or any(flag is not None for flag in scene_flags):
            raise UserError(f"{SCENE_FLAGS} go with --scenes; chips carry their own")
        return None
    if labels is None:
        raise UserError("--scenes needs --labels VECTOR (polygons with a class field)")
    defaults = SceneOptions([], labels)
    return SceneOptions(expand_scenes(scenes), labels, defaults.size if size is None else size,
                        defaults.overlap if overlap is None else overlap, parse_bands(bands),
                        class_field or defaults.class_field, shots, allow_no_crs, nodata,
                        (sampler or Sampler.random).value)


def source_flags(chips: Optional[Path], scenes: Optional[list[Path]], *scene_flags: Any) -> dict[str, Any]:
    """The `chips`/`scenes` settings the flags give (`scene_inputs`); none when no input flag is given, so that
    a `--config` may name them."""
    if chips is None and not scenes and all(flag in (None, False) for flag in scene_flags):
        return {}
    source = scene_inputs(chips, scenes, *scene_flags)
    return {"chips": chips} if source is None else {"scenes": source}


def _scenes_option():
    return typer.Option(None, "--scenes", help="Train on windows read from these GeoTIFF scenes (repeat the flag; "
                        "@LIST names one scene per line) instead of --chips: nothing written to disk.")


class Task(str, Enum):
    detection = "detection"
    segmentation = "segmentation"


def register(groups: CommandGroups) -> None:
    from domainmona.recipes import patch_grid

    grid = patch_grid()  # the DOTA/STAR patch grid (pipelines/dota.yaml): tile's and the scene windows' default

    @groups.root.command("tile")
    def tile(rasters: list[Path] = typer.Argument(..., help="GeoTIFF scene(s)."),
             labels: Path = typer.Option(..., "--labels", help="Polygons (GeoPackage, GeoJSON, ...), any CRS."),
             out: Path = typer.Option(..., "--out", help="Chip folder to write (new, empty, or an earlier "
                                      "tile output, replaced atomically)."),
             size: int = typer.Option(grid[0], "--size", min=32, help="Chip size in pixels."),
             overlap: int = typer.Option(grid[1], "--overlap", min=0, help="Overlap between chips in pixels."),
             bands: Optional[str] = typer.Option(None, "--bands", help="1-based bands, e.g. 1,2,3 (default all)."),
             task: Task = typer.Option(Task.detection, "--task"),
             class_field: str = typer.Option("class", "--class-field", help="Attribute holding the class name."),
             shots: Optional[int] = shots_option(),
             seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of the K-shot subset."),
             allow_no_crs: bool = typer.Option(False, "--allow-no-crs", help="Accept rasters without a CRS."),
             nodata: Optional[float] = typer.Option(None, "--nodata", help=NODATA_HELP)) -> None:
        """Cut scenes and their vector labels into training chips: DOTA-format boxes or class masks."""
        from domainmona.geo.raster import parse_bands
        from domainmona.geo.tiling import TileOptions, tile_scenes

        opts = TileOptions(size, overlap, parse_bands(bands), task.value, class_field, shots, seed, allow_no_crs,
                           nodata)
        manifest = tile_scenes(rasters, labels, out, opts)
        console.print(f"{len(manifest['chips'])} chips ({manifest['skipped_nodata_chips']} all-nodata skipped), "
                      f"classes: {', '.join(manifest['classes'])}")
        console.print(str(out), soft_wrap=True)

    @groups.root.command("tile-predict")
    def tile_predict(rasters: list[Path] = typer.Argument(..., help="GeoTIFF scene(s), or @LIST: a text file "
                                                          "naming one scene per line."),
                     checkpoint: Path = typer.Option(..., "--checkpoint", help="From a train command."),
                     out: Optional[Path] = typer.Option(None, "--out", help="OUT.tif (segmentation) or "
                                                        "OUT.gpkg/.geojson for one scene; replaces only an "
                                                        "earlier tile-predict output."),
                     out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Folder for one output per "
                                                            "scene (STEM.tif or STEM.gpkg); scenes finished "
                                                            "there with the same checkpoint are skipped."),
                     size: Optional[int] = typer.Option(None, "--size", min=32,
                                                        help="Tile size (default: training's)."),
                     overlap: Optional[int] = typer.Option(None, "--overlap", min=0,
                                                           help="Tile overlap (default: training's)."),
                     batch_size: int = typer.Option(4, "--batch-size", min=1),
                     score_thr: float = typer.Option(0.3, "--score-thr", callback=probability,
                                                     help="Detection score threshold, 0..1."),
                     iou_thr: float = typer.Option(0.1, "--iou-thr", callback=probability,
                                                   help="Rotated NMS IoU across tile overlaps, 0..1."),
                     cog: bool = typer.Option(False, "--cog", help="Write a Cloud-Optimized GeoTIFF."),
                     allow_no_crs: bool = typer.Option(False, "--allow-no-crs"),
                     nodata: Optional[float] = typer.Option(None, "--nodata", help=NODATA_HELP),
                     gpus: int = typer.Option(1, "--gpus", min=1, help="Processes (one per GPU) under torchrun: "
                                              "whole scenes each, or bands of one scene's tile rows."),
                     runtime: Runtime = runtime_option(), model: Optional[Path] = onnx_model_option()) -> None:
        """Predict whole scenes tile by tile into GeoTIFF class maps or polygon layers."""
        from domainmona.errors import UserError
        from domainmona.geo.models import PredictSettings, Predictor
        from domainmona.geo.predict import Ranks
        from domainmona.geo.predict_many import (COLLECTIVE_TIMEOUT, expand_scenes, predict_scenes, scene_outputs,
                                                 summary_table)
        from domainmona.io import claim_dir
        from domainmona.launch import join_process_group, relaunch_under_torchrun, under_torchrun

        scenes = expand_scenes(rasters)
        if (out is None) == (out_dir is None):
            raise UserError("give --out (one scene) or --out-dir (any number of scenes)")
        if out is not None and len(scenes) > 1:
            raise UserError(f"--out names one output but {len(scenes)} scenes were given; use --out-dir")
        predictor = Predictor(checkpoint, PredictSettings(size, overlap, batch_size, score_thr, iou_thr, cog,
                                                          allow_no_crs, nodata, runtime, model))
        if out is not None:
            predictor.check(scenes[0], out)  # a bad scene or output: its own one-line error, exit 2
            outputs = [out]
        else:
            outputs = scene_outputs(scenes, out_dir, predictor.suffix)
            claim_dir(out_dir, "tile-predict")
        if gpus > 1 and not under_torchrun():
            relaunch_under_torchrun(gpus, "tile-predict")  # rank 0 of the children prints the result
            return
        ranks = Ranks(*join_process_group(COLLECTIVE_TIMEOUT))
        outcomes = predict_scenes(predictor, scenes, outputs, ranks, records=out_dir is not None)
        if outcomes is None:  # not rank 0
            return
        failed = [o for o in outcomes if o.status == "failed"]
        if out is not None:
            if failed:
                raise UserError(failed[0].output)
            console.print(str(out), soft_wrap=True)
            return
        console.print(summary_table(outcomes, "pixels" if predictor.segmentation else "objects"))
        if failed:
            raise UserError(f"{len(failed)} of {len(outcomes)} scene(s) failed (see the table above)")
        console.print(str(out_dir), soft_wrap=True)

    scene_labels = typer.Option(None, "--labels", help="With --scenes: polygons (GeoPackage, GeoJSON, ...), any CRS.")
    scene_size = typer.Option(None, "--size", min=32, help=f"With --scenes: window size in pixels (default {grid[0]}).")
    scene_overlap = typer.Option(None, "--overlap", min=0, help="With --scenes: overlap of the grid's windows "
                                 f"(default {grid[1]}).")
    scene_bands = typer.Option(None, "--bands", help="With --scenes: 1-based bands, e.g. 1,2,3 (default all).")
    scene_class_field = typer.Option(None, "--class-field", help="With --scenes: attribute holding the class name "
                                     "(default class).")
    scene_sampler = typer.Option(None, "--sampler", help="With --scenes: random windows around labelled objects "
                                 "and background (default), or the tiling grid's labelled windows.")
    scene_nodata = typer.Option(None, "--nodata", help="With --scenes: " + NODATA_HELP[0].lower() + NODATA_HELP[1:])
    scene_no_crs = typer.Option(False, "--allow-no-crs", help="With --scenes: accept rasters without a CRS.")

    @groups.train.command("geo-seg")
    def train_geo_seg(chips: Optional[Path] = typer.Option(None, "--chips", help="Segmentation chips from 'tile'."),
                      scenes: Optional[list[Path]] = _scenes_option(),
                      labels: Optional[Path] = scene_labels, size: Optional[int] = scene_size,
                      overlap: Optional[int] = scene_overlap, bands: Optional[str] = scene_bands,
                      class_field: Optional[str] = scene_class_field, shots: Optional[int] = shots_option(),
                      sampler: Optional[Sampler] = scene_sampler, nodata: Optional[float] = scene_nodata,
                      allow_no_crs: bool = scene_no_crs,
                      work_dir: Path = typer.Option(..., "--work-dir"),
                      max_iters: Optional[int] = typer.Option(None, "--max-iters", min=1),
                      encoder: Optional[str] = backbone_option(None, 2, "Encoder (default: the settings')",
                                                               "--encoder"),
                      arch: Optional[str] = typer.Option(None, "--arch", help="smp decoder: UPerNet, FPN, ..."),
                      adapter: Optional[Method] = adapter_option(None, "Adapter method (mona)."),
                      pretrained: Optional[Path] = pretrained_option("encoder"),
                      batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
                      lr: Optional[float] = typer.Option(None, "--lr", callback=positive),
                      seed: Optional[int] = typer.Option(None, "--seed", min=0, max=SEED_MAX),
                      save_every: Optional[int] = typer.Option(None, "--save-every", min=1,
                                                               help="Iterations between resumable states."),
                      resume: bool = typer.Option(False, "--resume",
                                                  help="Continue from WORK_DIR/state.pt (same chips and flags; "
                                                       "a larger --max-iters extends the run)."),
                      amp: Optional[bool] = amp_option(), adapter_recompute: Optional[bool] = recompute_option(),
                      checkpoint_blocks: bool = checkpoint_blocks_option(), config: Optional[Path] = config_option(),
                      adapter_opt: Optional[list[str]] = adapter_opt_option(),
                      side: Optional[str] = side_option(), side_opt: Optional[list[str]] = side_opt_option(),
                      print_config: bool = print_config_option()) -> None:
        """Fine-tune a Mona-Swin segmentation model (smp) on chips or straight on scenes; prints the checkpoint
        path last."""
        from domainmona.geo.segmodel import resolve_settings
        from domainmona.geo.segtrain import SegTrainOptions, train_segmentation
        from domainmona.logs import framework_log
        from domainmona.settings import adapter_layer, print_settings, read_config, side_layer, switch

        source = scene_inputs(chips, scenes, labels, size, overlap, bands, class_field, shots, sampler, nodata,
                              allow_no_crs)
        layer = read_config(config)
        flags = dict(max_iters=max_iters, backbone=encoder, arch=arch, adapter=adapter, batch_size=batch_size, lr=lr,
                     seed=seed, save_every=save_every, amp=amp,
                     adapter_recompute=adapter_recompute,
                     checkpoint_blocks=switch(checkpoint_blocks, False), side=side)
        flags.update(adapter_layer(layer, adapter_opt))
        flags.update(side_layer(layer, flags, side_opt))
        settings = resolve_settings(layer, f"--config {config}", **flags)
        if print_config:
            print_settings(settings)
        opts = SegTrainOptions(chips, work_dir, resume=resume, scenes=source, pretrained=pretrained,
                               settings=settings)
        with framework_log(opts.work_dir):  # GDAL's, timm's and torch's logs and warnings
            final = train_segmentation(opts)
        console.print(str(final), soft_wrap=True)

    @groups.train.command("geo-det")
    def train_geo_det(chips: Optional[Path] = typer.Option(None, "--chips", help="Detection chips from 'tile'."),
                      scenes: Optional[list[Path]] = _scenes_option(),
                      labels: Optional[Path] = scene_labels, size: Optional[int] = scene_size,
                      overlap: Optional[int] = scene_overlap, bands: Optional[str] = scene_bands,
                      class_field: Optional[str] = scene_class_field, shots: Optional[int] = shots_option(),
                      sampler: Optional[Sampler] = scene_sampler, nodata: Optional[float] = scene_nodata,
                      allow_no_crs: bool = scene_no_crs,
                      work_dir: Path = typer.Option(..., "--work-dir"),
                      max_iters: Optional[int] = typer.Option(None, "--max-iters", min=1),
                      backbone: Optional[str] = backbone_option(None, 2, f"Backbone (default {DEFAULT_BACKBONE})"),
                      adapter: Optional[Method] = adapter_option(None, "Adapter method trained inside the backbone "
                                                                 "(default mona)."),
                      pretrained: Optional[Path] = pretrained_option(),
                      seed: Optional[int] = typer.Option(None, "--seed", min=0, max=SEED_MAX, help="Seed (default 0)."),
                      resume: bool = typer.Option(False, "--resume",
                                                  help="Continue from the last checkpoint in --work-dir."),
                      amp: Optional[bool] = amp_option(), adapter_recompute: Optional[bool] = recompute_option(),
                      checkpoint_blocks: bool = checkpoint_blocks_option(), config: Optional[Path] = config_option(),
                      adapter_opt: Optional[list[str]] = adapter_opt_option(),
                      side: Optional[str] = side_option(), side_opt: Optional[list[str]] = side_opt_option(),
                      print_config: bool = print_config_option()) -> None:
        """Fine-tune the Mona-Swin Oriented R-CNN on detection chips or straight on scenes; prints the checkpoint
        path last."""
        from domainmona.geo.dettrain import GeoDetSettings, train_geo_det as run
        from domainmona.settings import adapter_layer, given, print_settings, read_config, resolve, side_layer, switch

        source = source_flags(chips, scenes, labels, size, overlap, bands, class_field, shots, sampler, nodata,
                              allow_no_crs)
        layer = read_config(config)
        flags = given(work_dir=work_dir, max_iters=max_iters, backbone=backbone, adapter=adapter,
                      pretrained=pretrained, seed=seed, resume=switch(resume, False), amp=amp,
                      adapter_recompute=adapter_recompute,
                      checkpoint_blocks=switch(checkpoint_blocks, False), side=side, **source)
        flags.update(adapter_layer(layer, adapter_opt))
        flags.update(side_layer(layer, flags, side_opt))
        settings = resolve(GeoDetSettings, (f"--config {config}", layer), ("flags", flags))
        if print_config:
            print_settings(settings)
        console.print(str(run(settings)), soft_wrap=True)

    @groups.root.command("geo-demo")
    def geo_demo(out: Path = typer.Option(Path("domainmona-geo-demo"), "--out"),
                 task: Task = typer.Option(Task.segmentation, "--task")) -> None:
        """Sample scene → tile → few-shot Mona fine-tuning → tile-predict → PNG preview."""
        from domainmona.geo.demo import run_demo

        console.print(str(run_demo(out, task.value)), soft_wrap=True)
