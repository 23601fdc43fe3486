"""`domainmona train|test dota|star` and `domainmona demo`; dataset commands live in dataset_cli.py."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from domainmona.adapters.backbones import DEFAULT_BACKBONE
from domainmona.commands import CommandGroups
from domainmona.detection import dataset_cli
from domainmona.options import (Runtime, adapter_opt_option, adapter_option, amp_option, backbone_option,
                                checkpoint_blocks_option, config_option, method_choice, onnx_model_option,
                                print_config_option, pretrained_option, probability, recompute_option,
                                runtime_option, shots_option, side_opt_option, side_option)

Method = method_choice()  # the registered adapter methods
Version = Enum('Version', {v: v for v in ('1.0', '1.5', '2.0')}, type=str)


def _train(dataset: str, data: Path, work_dir: Path, backbone: Optional[str], adapter: Optional[str],
           pretrained: Optional[Path], shots: Optional[int], max_iters: Optional[int], gpus: Optional[int],
           resume: bool, patch_size: Optional[int], patch_gap: Optional[int], amp: Optional[bool], adapter_recompute: Optional[bool],
           checkpoint_blocks: bool, config: Optional[Path], adapter_opt: Optional[list[str]],
           print_config: bool, side: Optional[str] = None, side_opt: Optional[list[str]] = None) -> None:
    from domainmona.console import console
    from domainmona.detection.train import TrainOptions, prepare, train, training_subsets
    from domainmona.launch import is_main_process, relaunch_under_torchrun, under_torchrun
    from domainmona.recipes import patch_grid
    from domainmona.settings import adapter_layer, given, print_settings, read_config, resolve, side_layer, switch

    size, gap = patch_grid('star' if dataset == 'star' else 'dota')
    recipe = dict(dataset=dataset, patch_size=size, patch_gap=gap)
    flags = given(dataset=dataset, data=data, work_dir=work_dir, backbone=backbone, adapter=adapter,
                  pretrained=pretrained, shots=shots, max_iters=max_iters, gpus=gpus,
                  resume=switch(resume, False), patch_size=patch_size, patch_gap=patch_gap, amp=amp,
                  adapter_recompute=adapter_recompute,
                  checkpoint_blocks=switch(checkpoint_blocks, False), side=side)
    layer = read_config(config)
    flags.update(adapter_layer(layer, adapter_opt))
    flags.update(side_layer(layer, flags, side_opt))
    opts = resolve(TrainOptions, ('recipe', recipe), (f'--config {config}', layer), ('flags', flags))
    if print_config:
        print_settings(opts)
    if opts.gpus > 1 and not under_torchrun():
        prepare(opts)  # check inputs and split once here, not in every process
        training_subsets(opts)
        relaunch_under_torchrun(opts.gpus)  # rank 0 of the children prints the final checkpoint
        return
    final = train(opts)
    if is_main_process():
        console.print(str(final), highlight=False, soft_wrap=True)


def _test(dataset: str, checkpoint: Path, data: Path, out: Path, iou_thr: float, runtime: str = 'torch',
          model: Optional[Path] = None) -> None:
    from domainmona.console import console
    from domainmona.detection.inference import run_test
    from domainmona.detection.runner import quiet_frameworks
    from domainmona.logs import framework_log

    with framework_log(out):
        quiet_frameworks()
        result = run_test(checkpoint, data, out, iou_thr, dataset, runtime, model)
    if result.map is not None:
        console.print(f"full-image mAP ({dataset.upper()}, VOC07, IoU 0.5): {result.map:.4f}")
    console.print(str(result.zip_path), highlight=False, soft_wrap=True)


def register(groups: CommandGroups) -> None:
    dataset_cli.register(groups)

    @groups.root.command("demo")
    def demo(out: Path = typer.Option(Path("domainmona-demo"), "--out", help="Output folder.")) -> None:
        """Generate DOTA-style scenes, fine-tune a micro Mona-Swin Oriented R-CNN, test, merge, evaluate."""
        from domainmona.detection.demo import run_demo

        run_demo(out)

    data_opt = typer.Option(..., "--data", help="Raw scenes (images/ + labelTxt/) or split patches (images/ + annfiles/).")
    work_opt = typer.Option(..., "--work-dir", help="Where checkpoints, logs and the split patches go.")
    backbone_opt = backbone_option(None, 2, f"Backbone (default {DEFAULT_BACKBONE})")
    adapter_opt = adapter_option(None, "Adapter method trained inside the backbone (default mona).")
    pretrained_opt = pretrained_option()
    shots_opt = shots_option()
    iters_opt = typer.Option(None, "--max-iters", min=1, help="Iterations instead of the 12-epoch schedule.")
    gpus_opt = typer.Option(None, "--gpus", min=1, help="More than 1 launches torchrun (default 1).")
    resume_opt = typer.Option(False, "--resume", help="Continue from the last checkpoint in --work-dir.")
    size_opt = typer.Option(None, "--patch-size", min=1,
                            help="Patch size for raw scenes and network input (default: the recipe's, 1024).")
    gap_opt = typer.Option(None, "--patch-gap", min=0,
                           help="Overlap of neighbouring patches (default: the recipe's, 200).")

    @groups.train.command("dota")
    def train_dota(data: Path = data_opt, work_dir: Path = work_opt, version: Version = typer.Option(
            Version['1.0'], "--version"), backbone: Optional[str] = backbone_opt,
                   adapter: Optional[Method] = adapter_opt,
                   pretrained: Optional[Path] = pretrained_opt, shots: Optional[int] = shots_opt,
                   max_iters: Optional[int] = iters_opt, gpus: Optional[int] = gpus_opt, resume: bool = resume_opt,
                   patch_size: Optional[int] = size_opt, patch_gap: Optional[int] = gap_opt,
                   amp: Optional[bool] = amp_option(), adapter_recompute: Optional[bool] = recompute_option(),
                   checkpoint_blocks: bool = checkpoint_blocks_option(), config: Optional[Path] = config_option(),
                   adapter_opt: Optional[list[str]] = adapter_opt_option(),
                   side: Optional[str] = side_option(), side_opt: Optional[list[str]] = side_opt_option(),
                   print_config: bool = print_config_option()) -> None:
        """Oriented R-CNN with an adapted backbone on DOTA; prints the final checkpoint last."""
        _train(f"dota{version.value}", data, work_dir, backbone, adapter, pretrained, shots, max_iters, gpus, resume,
               patch_size, patch_gap, amp, adapter_recompute, checkpoint_blocks, config, adapter_opt, print_config,
               side, side_opt)

    @groups.train.command("star")
    def train_star(data: Path = data_opt, work_dir: Path = work_opt, backbone: Optional[str] = backbone_opt,
                   adapter: Optional[Method] = adapter_opt, pretrained: Optional[Path] = pretrained_opt,
                   shots: Optional[int] = shots_opt, max_iters: Optional[int] = iters_opt,
                   gpus: Optional[int] = gpus_opt,
                   resume: bool = resume_opt, patch_size: Optional[int] = size_opt,
                   patch_gap: Optional[int] = gap_opt, amp: Optional[bool] = amp_option(),
                   adapter_recompute: Optional[bool] = recompute_option(),
                   checkpoint_blocks: bool = checkpoint_blocks_option(), config: Optional[Path] = config_option(),
                   adapter_opt: Optional[list[str]] = adapter_opt_option(),
                   side: Optional[str] = side_option(), side_opt: Optional[list[str]] = side_opt_option(),
                   print_config: bool = print_config_option()) -> None:
        """Oriented R-CNN with an adapted backbone on STAR; prints the final checkpoint last."""
        _train("star", data, work_dir, backbone, adapter, pretrained, shots, max_iters, gpus, resume, patch_size,
               patch_gap, amp, adapter_recompute, checkpoint_blocks, config, adapter_opt, print_config, side, side_opt)

    for dataset in ("dota", "star"):
        groups.test.command(dataset, help=f"Test a {dataset.upper()} checkpoint on full scenes: patches, merge, "
                                          "Task1 files + zip, mAP when labels exist.")(_test_command(dataset))


def _test_command(dataset: str):
    def test_command(checkpoint: Path = typer.Option(..., "--checkpoint", help="Printed last by train."),
                     data: Path = typer.Option(..., "--data", help="Scenes: images/ (+ labelTxt/ for mAP)."),
                     out: Path = typer.Option(..., "--out", help="Task1 files, their zip and metrics."),
                     iou_thr: float = typer.Option(0.1, "--iou-thr", callback=probability,
                                                   help="Rotated NMS IoU when merging."),
                     runtime: Runtime = runtime_option(), model: Optional[Path] = onnx_model_option()) -> None:
        _test(dataset, checkpoint, data, out, iou_thr, runtime, model)

    return test_command
