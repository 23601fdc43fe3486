"""`domainmona segment-ct train|predict|evaluate|demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from domainmona.commands import CommandGroups
from domainmona.options import (Runtime, adapter_opt_option, adapter_option, amp_option, checkpoint_blocks_option,
                                fraction, method_choice, onnx_model_option, print_config_option, recompute_option,
                                runtime_option, side_opt_option)

MethodOrNone = method_choice("none")  # the registered adapter methods, or none


def register(groups: CommandGroups) -> None:
    app = groups.segment_ct

    @app.command("train")
    def train(
        data: Path = typer.Option(..., "--data", help="MSD task folder (dataset.json), datalist JSON, or a folder "
                                  "with imagesTr/+labelsTr/ (or images/+labels/) of same-named NIfTI files."),
        work_dir: Path = typer.Option(..., "--work-dir", help="checkpoints/ (best, last, adapter files) and "
                                      "metrics.json go here."),
        model: Optional[str] = typer.Option(None, "--model", help="Network: swinunetr (default) | unetr (3D ViT "
                                            "encoder) | segresnet (3D CNN encoder)."),
        pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="A whole network's state dict (a MONAI "
                                                  "bundle's models/model.pt: encoder, decoder and head; a head for "
                                                  "another class count is re-initialised), or encoder weights: "
                                                  "SwinUNETR's MONAI SSL Swin (model_swinvit.pt, "
                                                  "ssl_pretrained_weights.pth), UNETR's 3D ViT."),
        adapter: Optional[MethodOrNone] = adapter_option(None, "Adapter method (default mona; those the network's "
                                                         "encoder family defines); 'none' = full fine-tuning of the "
                                                         "plain network."),
        decoder: Optional[str] = typer.Option(None, "--decoder", metavar="MODE", help="The CNN decoder: train "
                                              "(whole) | adapt (the --adapter method in its conv blocks, the output "
                                              "head trains) | frozen (the head alone trains). Default: adapt over "
                                              "whole-network --pretrained weights, else train."),
        shots: Optional[int] = typer.Option(None, "--shots", min=1, help="Train on the first K labelled cases only."),
        roi: Optional[int] = typer.Option(None, "--roi", help="Patch and sliding-window size (96): SwinUNETR a "
                                          "multiple of 32 from 64, UNETR of 16 from 32, SegResNet of 8 from 16."),
        max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Epochs (100); with --resume, extends."),
        gpus: int = typer.Option(1, "--gpus", min=0, help="Processes (one per GPU, via torchrun when > 1; 0 = CPU)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from WORK_DIR/checkpoints/last.pt (after a "
                                    "kill, rerun the same command with --resume; with no last.pt yet it starts)."),
        feature_size: Optional[int] = typer.Option(None, "--feature-size", help="SwinUNETR: Swin width (48 for SSL "
                                                   "weights)."),
        decoder_size: Optional[int] = typer.Option(None, "--decoder-size", help="SwinUNETR: slim CNN decoder width "
                                                   "(e.g. 24)."),
        merging: Optional[str] = typer.Option(None, "--merging", help="SwinUNETR: legacy (SSL weights' order) | "
                                              "merging | mergingv2."),
        hu_min: Optional[float] = typer.Option(None, "--hu-min", help="HU window low end (-175)."),
        hu_max: Optional[float] = typer.Option(None, "--hu-max", help="HU window high end (250)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML over configs/monai/swinunetr_ct.yaml "
                                              "(UNETR and SegResNet sizes: model.unetr, model.segresnet)."),
        amp: Optional[bool] = amp_option(),
        adapter_recompute: Optional[bool] = recompute_option(),
        checkpoint_blocks: bool = checkpoint_blocks_option(),
        adapter_opt: Optional[list[str]] = adapter_opt_option(),
        side: Optional[str] = typer.Option(None, "--side", metavar="NAME", help="UNETR: hst runs Hierarchical "
                                           "Side-Tuning beside its frozen ViT, the side stages feeding UNETR's skips "
                                           "(the 3D analogue, not defined by the paper); the ViT stays frozen unless "
                                           "--adapter names a method."),
        side_opt: Optional[list[str]] = side_opt_option(),
        print_config: bool = print_config_option(),
    ) -> None:
        """Fine-tune SwinUNETR, UNETR or SegResNet + Mona-3D on CT; the last line printed is the checkpoint to pass
        to predict."""
        from domainmona.launch import is_main_process, relaunch_under_torchrun, under_torchrun
        from domainmona.medical.data import load_split
        from domainmona.medical.settings import decoder_mode, refuse_swin_only_flags, resolve_settings
        from domainmona.settings import plain, print_settings

        swin_only = dict(feature_size=feature_size, decoder_size=decoder_size, merging=merging,
                         use_checkpoint=checkpoint_blocks or None)
        resolved = resolve_settings(config, adapter_opt, side_opt, preprocess=dict(hu_min=hu_min, hu_max=hu_max),
                                 model=dict(name=model, adapter=adapter, side=side, decoder=decoder, **swin_only),
                                 train=dict(roi=roi, max_epochs=max_epochs, amp=amp,
                                            adapter_recompute=adapter_recompute))
        refuse_swin_only_flags(resolved.model["name"], swin_only)
        if resume and resolved.model["decoder"] is None:  # torch and MONAI load only once the settings are good
            from domainmona.medical.checkpoint import load_checkpoint
            from domainmona.medical.train import last_checkpoint, resumed_decoder

            if last_checkpoint(work_dir).exists():
                resolved.model["decoder"] = resumed_decoder(load_checkpoint(last_checkpoint(work_dir)))
        resolved.model["decoder"] = decoder_mode(resolved.model, pretrained)  # what --print-config and checkpoints show
        if print_config:
            print_settings(resolved)
        settings = plain(resolved)  # what the checkpoints record
        split = load_split(data, shots, settings["train"]["val_max"])  # bad data: one line, before any relaunch
        if gpus > 1 and not under_torchrun():
            relaunch_under_torchrun(gpus)  # rank 0 of the children prints the checkpoint
            return
        from domainmona.logs import framework_log
        from domainmona.medical.train import train as run

        with framework_log(work_dir):  # MONAI's and torch's logs and warnings
            final = run(split, settings, work_dir, pretrained=pretrained, resume=resume, gpus=gpus)
        if is_main_process():
            typer.echo(str(final))

    @app.command("predict")
    def predict(
        inputs: list[Path] = typer.Argument(..., help="CT volumes (NIfTI)."),
        checkpoint: Path = typer.Option(..., "--checkpoint", help="best.pt/last.pt from segment-ct train."),
        out: Path = typer.Option(..., "--out", help="Folder for label maps and PNG previews."),
        overlap: float = typer.Option(0.5, "--overlap", callback=fraction, help="Sliding-window overlap, in [0, 1)."),
        runtime: Runtime = runtime_option(),
        model: Optional[Path] = onnx_model_option(),
    ) -> None:
        """uint8 NIfTI label maps in each input's original geometry, plus a PNG overlay per input."""
        from domainmona.medical.predict import predict_volumes

        for path in predict_volumes(inputs, checkpoint, out, overlap=overlap, runtime=runtime, onnx_model=model):
            typer.echo(str(path))

    @app.command("evaluate")
    def evaluate(
        pred: Path = typer.Option(..., "--pred", help="Folder of predicted label maps."),
        gt: Path = typer.Option(..., "--gt", help="Folder of same-named ground-truth label maps."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write per-class and per-case scores here."),
    ) -> None:
        """Per-class Dice and HD95 (mm) table."""
        from domainmona.medical.report import evaluate_and_report

        evaluate_and_report(pred, gt, json_out)

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("segment-ct-demo"), "--out", help="Folder for data, run and predictions "
                                 "(rerunning into it after an interruption resumes)."),
        max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Override the recipe's epochs."),
        model: Optional[str] = typer.Option(None, "--model", help="Override the recipe's network: swinunetr | "
                                            "unetr | segresnet (at the recipe's small sizes)."),
    ) -> None:
        """Synthetic CT → short training → predict → evaluate, then the Dice (recipe: pipelines/ct-demo.yaml)."""
        from domainmona.medical.demo import run_demo

        run_demo(out, max_epochs, model=model)
