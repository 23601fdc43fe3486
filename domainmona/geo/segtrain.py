"""`domainmona train geo-seg`: fine-tune the adapter and decoder on segmentation chips from `domainmona tile`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from domainmona.console import console, progress
from domainmona.errors import UserError
from domainmona.geo.stats import normalise
from domainmona.geo.tiling import IGNORE, read_manifest


@dataclass
class SegTrainOptions:
    chips: Path
    work_dir: Path
    max_iters: int | None = None
    encoder: str | None = None
    arch: str | None = None
    adapter: str | None = None
    pretrained: Path | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # any other key of configs/geo/geo-seg.yaml


def load_chips(chips_dir: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """All chips as normalised float32 (N, bands, S, S) and masks (N, S, S) int64; few-shot sets are small."""
    images, masks = [], []
    layout = manifest["layout"]
    for chip in manifest["chips"]:
        with rasterio.open(chips_dir / layout["images"] / f"{chip['name']}.tif") as src:
            pixels = src.read()
        with rasterio.open(chips_dir / layout["labels"] / f"{chip['name']}.tif") as src:
            mask = src.read(1).astype(np.int64)
        image = normalise(pixels, manifest["stats"])
        image[:, mask == IGNORE] = 0.0
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def _augment(images, masks, generator):
    """Random flips and quarter turns, the same for image and mask (aerial views have no 'up')."""
    import torch

    k = int(torch.randint(4, (1,), generator=generator))
    images, masks = torch.rot90(images, k, (-2, -1)), torch.rot90(masks, k, (-2, -1))
    if bool(torch.randint(2, (1,), generator=generator)):
        images, masks = images.flip(-1), masks.flip(-1)
    return images, masks


def train_segmentation(opts: SegTrainOptions) -> Path:
    """Train and return the checkpoint path; also writes the adapter-only file beside it."""
    import torch

    from domainmona.adapters.checkpoint import save_adapter
    from domainmona.adapters.pretrained import load_pretrained
    from domainmona.geo.segmodel import build_model, load_settings, model_spec, save_segmenter

    manifest = read_manifest(opts.chips)
    if manifest["task"] != "segmentation":
        raise UserError(f"{opts.chips}: chips were made for {manifest['task']}; use 'domainmona train geo-det' "
                        "or tile again with --task segmentation")
    settings = load_settings(max_iters=opts.max_iters, encoder=opts.encoder, arch=opts.arch, adapter=opts.adapter,
                             batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed, **opts.overrides)
    torch.manual_seed(settings["seed"])
    spec = model_spec(settings, manifest)
    model = build_model(spec)
    if opts.pretrained:
        if not opts.pretrained.is_file():
            raise UserError(f"--pretrained {opts.pretrained}: no such file")
        report = load_pretrained(model.encoder, opts.pretrained)
        console.print(f"encoder weights: {report}")
        if len(report.missing) > report.loaded:  # a different architecture or an unconverted layout
            raise UserError(f"--pretrained {opts.pretrained} fits only {report.loaded} of the encoder's "
                            f"{report.loaded + len(report.missing)} tensors ({report.layout} layout)")
    else:
        console.print("[yellow]warning:[/] no --pretrained encoder weights: the adapter adapts a random encoder")
    images, masks = (torch.from_numpy(a) for a in load_chips(opts.chips, manifest))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings["lr"], weight_decay=settings["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    generator = torch.Generator().manual_seed(settings["seed"])
    model.train()
    with progress() as bar:
        task = bar.add_task("training geo-seg", total=settings["max_iters"])
        for step in range(1, settings["max_iters"] + 1):
            index = torch.randint(len(images), (min(settings["batch_size"], len(images)),), generator=generator)
            batch, target = _augment(images[index], masks[index], generator)
            loss = loss_fn(model(batch), target)
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} at iteration {step}; try a lower lr")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            bar.advance(task)
            if step % settings["log_every"] == 0 or step == settings["max_iters"]:
                bar.console.print(f"iter {step}/{settings['max_iters']}  loss {loss.item():.4f}")
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    save_adapter(model, opts.work_dir / "adapter.safetensors")
    return save_segmenter(model.eval(), spec, opts.work_dir / "geo-seg.safetensors")
