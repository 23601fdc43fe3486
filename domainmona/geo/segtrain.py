"""`domainmona train geo-seg`: fine-tune the adapter and decoder on segmentation chips from `domainmona tile`,
or on windows read straight from scenes (domainmona.geo.scenes), through the same loop.

Trains on the CUDA device when one is visible, in mixed precision there (domainmona.devices). Every
`save_every` iterations the whole training state (weights, AdamW moments, the loss scale, both random
generators, the iteration) goes to WORK_DIR/state.pt, tensors and plain containers only, read back with
`weights_only=True`. `--resume` continues from it and, the learning rate being constant, ends with the
weights an uninterrupted run reaches (bit for bit on the same machine and thread count).
"""

from __future__ import annotations

import json
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from domainmona.console import console, progress
from domainmona.errors import UserError
from domainmona.geo.raster import gdal_reason
from domainmona.geo.segmodel import GeoSegSettings, resolve_settings
from domainmona.geo.scenes import SceneOptions, SceneWindows
from domainmona.geo.stats import normalise
from domainmona.geo.tiling import IGNORE, read_manifest
from domainmona.io import atomic_path, check_parent, claim_dir, load_torch

STATE = "state.pt"
CHECKPOINT = "geo-seg.safetensors"
ADAPTER = "adapter.safetensors"
STATE_FORMAT = "domainmona.geo-seg-state/1"
# Settings a resumed run may change: the iteration count (to extend a run), how often it reports or saves,
# and the precision and memory switches (a run may continue on another GPU, or with --no-amp).
RESCHEDULABLE = ("max_iters", "log_every", "save_every", "amp", "adapter_recompute", "checkpoint_blocks")


@dataclass
class SegTrainOptions:
    chips: Path | None  # chips from `tile`, or None with ``scenes``
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
    resume: bool = False  # continue from WORK_DIR/state.pt
    scenes: SceneOptions | None = None  # train on windows of scenes instead of chips
    # the run's settings whole (`train geo-seg` resolves them); None: the packaged ones with the fields above
    settings: GeoSegSettings | None = None

    def resolved(self) -> GeoSegSettings:
        if self.settings is not None:
            return self.settings
        return resolve_settings(max_iters=self.max_iters, encoder=self.encoder, arch=self.arch, adapter=self.adapter,
                                batch_size=self.batch_size, lr=self.lr, seed=self.seed, **self.overrides)


def load_chips(chips_dir: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """All chips as normalised float32 (N, bands, S, S) and masks (N, S, S) int64; few-shot sets are small."""
    images, masks = [], []
    layout = manifest["layout"]
    for chip in manifest["chips"]:
        paths = [chips_dir / layout[kind] / f"{chip['name']}.tif" for kind in ("images", "labels")]
        try:
            with rasterio.open(paths[0]) as src:
                pixels = src.read()
            with rasterio.open(paths[1]) as src:
                mask = src.read(1).astype(np.int64)
        except RasterioIOError as exc:
            raise UserError(f"{chips_dir}: chip {chip['name']} is missing or unreadable "
                            f"({gdal_reason(exc)}); tile again") from None
        if pixels.shape[1:] != mask.shape or pixels.shape[1:] != (manifest["size"], manifest["size"]):
            raise UserError(f"{chips_dir}: chip {chip['name']} is not {manifest['size']} pixels square; tile again")
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


def _run_identity(settings: dict[str, Any], spec: dict[str, Any], pretrained: Path | None) -> dict[str, Any]:
    """What a resumed run must share with the saved one, as JSON values: the model and the chips it sees
    (spec), and every setting but the schedule."""
    kept = {k: v for k, v in settings.items() if k not in RESCHEDULABLE and k != "encoders"}
    identity = {"spec": spec, "settings": kept, "pretrained": str(pretrained.resolve()) if pretrained else None}
    return json.loads(json.dumps(identity))


def _check_work_dir(work_dir: Path, resume: bool) -> None:
    """Read-only, before any work: a work dir holding a run is continued only on request."""
    check_parent(work_dir, "--work-dir")
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} is a file, not a folder")
    if not resume and ((work_dir / STATE).exists() or (work_dir / CHECKPOINT).exists()):
        raise UserError(f"{work_dir} already holds a geo-seg run; pass --resume to continue it or choose another "
                        "--work-dir")


def _read_state(path: Path, identity: dict[str, Any], max_iters: int) -> dict[str, Any]:
    state = load_torch(path, what="training state")
    try:
        saved = json.loads(state["identity"]) if state["format"] == STATE_FORMAT else None
    except (KeyError, TypeError, ValueError):
        saved = None
    if not isinstance(saved, dict) or set(saved) != set(identity) or not isinstance(state.get("step"), int):
        raise UserError(f"{path}: not a geo-seg training state")
    differ = [k for k in ("spec", "pretrained") if saved[k] != identity[k]]
    differ += sorted(k for k in set(saved["settings"]) | set(identity["settings"])
                     if saved["settings"].get(k) != identity["settings"].get(k))
    if differ:
        names = ", ".join("the chips or model" if k == "spec" else "the scene flags" if k == "scenes" else k
                          for k in differ)
        raise UserError(f"{path}: that run used other settings ({names}); resume with the same chips or scenes "
                        "and flags")
    if state["step"] > max_iters:
        raise UserError(f"{path}: the run is at iteration {state['step']}, past --max-iters {max_iters}")
    return state


def _save_state(path: Path, step: int, identity: dict[str, Any], model, optimizer, scaler, generator) -> None:
    import torch

    state = {"format": STATE_FORMAT, "step": step, "identity": json.dumps(identity), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _restore(state: dict[str, Any], path: Path, model, optimizer, scaler, generator) -> int:
    import torch

    from domainmona.devices import load_scaler_state

    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        load_scaler_state(scaler, state.get("scaler"))
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: does not fit this model ({type(exc).__name__}); train in a new --work-dir") from None
    return state["step"]


def _load_encoder_weights(model, pretrained: Path | None) -> None:
    """Pretrained encoder weights; with other than 3 bands the RGB filters of the input convolution are
    inflated as they load (domainmona.adapters.bands)."""
    from domainmona.adapters.pretrained import load_pretrained

    if pretrained is None:
        console.print("[yellow]warning:[/] no --pretrained encoder weights: the adapter adapts a random encoder")
        return
    if not pretrained.is_file():
        raise UserError(f"--pretrained {pretrained}: no such file")
    report = load_pretrained(model.encoder, pretrained)
    console.print(f"encoder weights: {report}")


def _modules_to_save(model) -> list[str]:
    """What the adapter file holds besides the adapters: smp's decoder and head, which train fully, a ViT's
    simple pyramid, and the input convolution where it trains (other than 3 bands, see `segmodel.build_model`)."""
    from domainmona.adapters.backbones.features import trained_whole

    return ["decoder", "segmentation_head"] + [f"encoder.{name}" for name in trained_whole(model.encoder)]


def train_segmentation(opts: SegTrainOptions) -> Path:
    """Train (or resume) and return the checkpoint path; also writes the adapter-only file beside it.

    Inputs, settings and the work dir are all checked before the work dir is written to."""
    import torch

    from domainmona.adapters import set_adapter_recompute, set_block_checkpointing
    from domainmona.adapters.checkpoint import save_adapter
    from domainmona.devices import default_device
    from domainmona.adapters.backbones import shipped_weights
    from domainmona.geo.segmodel import build_model, model_spec, save_segmenter, settings_dict
    from domainmona.settings import plain

    resolved = opts.resolved()
    settings = settings_dict(resolved)
    if (opts.chips is None) == (opts.scenes is None):
        raise UserError("train on --chips (from 'tile') or on --scenes with --labels, exactly one of the two")
    work_dir = Path(opts.work_dir)
    _check_work_dir(work_dir, opts.resume)
    if opts.scenes is not None:
        scenes = SceneWindows.open(opts.scenes, "segmentation", settings["seed"])
        manifest = scenes.manifest
        settings["scenes"] = opts.scenes.identity()  # part of the run's identity, not of the model
    else:
        scenes, manifest = None, read_manifest(opts.chips)
        if manifest["task"] != "segmentation":
            raise UserError(f"{opts.chips}: chips were made for {manifest['task']}; use 'domainmona train "
                            "geo-det' or tile again with --task segmentation")
    spec = model_spec(settings, manifest)
    pretrained = opts.pretrained or shipped_weights(spec["backbone"])
    identity = _run_identity(settings, spec, pretrained)
    state_path = work_dir / STATE
    state = _read_state(state_path, identity, settings["max_iters"]) if opts.resume and state_path.is_file() else None
    if opts.resume and state is None:  # killed before its first save: rerunning with --resume just starts
        console.print(f"no {state_path} yet: training from the start")
    torch.manual_seed(settings["seed"])
    device = default_device()
    model = build_model(spec)
    if state is None:
        _load_encoder_weights(model, pretrained)
    model.to(device)
    set_adapter_recompute(model, settings["adapter_recompute"])
    set_block_checkpointing(model, settings["checkpoint_blocks"])
    with contextlib.ExitStack() as stack:
        if scenes is None:
            draw = _chip_batches(*(torch.from_numpy(a) for a in load_chips(opts.chips, manifest)))
        else:
            draw = stack.enter_context(scenes).segmentation_batch
        claim_dir(work_dir, "train geo-seg")
        _train(model, draw, settings, identity, state, state_path, device)
    save_adapter(model, work_dir / ADAPTER, _modules_to_save(model))
    return save_segmenter(model.eval(), spec, work_dir / CHECKPOINT, plain(resolved))


def _chip_batches(images, masks):
    """Batches of chips drawn with replacement; at most as many as there are chips."""
    import torch

    def draw(count: int, generator):
        index = torch.randint(len(images), (min(count, len(images)),), generator=generator)
        return images[index], masks[index]
    return draw


def _train(model, draw, settings: dict[str, Any], identity: dict[str, Any], state: dict[str, Any] | None,
           state_path: Path, device) -> None:
    """The loop, over batches from ``draw(batch_size, generator)`` (chips or scene windows)."""
    import torch

    from domainmona.devices import amp_dtype, autocast, clipped_step, describe, grad_scaler

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings["lr"], weight_decay=settings["weight_decay"])
    dtype = amp_dtype(device, settings["amp"])
    scaler = grad_scaler(device, dtype)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    generator = torch.Generator().manual_seed(settings["seed"])  # on the CPU: the same samples on every device
    start = 0 if state is None else _restore(state, state_path, model, optimizer, scaler, generator)
    console.print(f"training on {device} in {describe(dtype)}" +
                  (f", resuming at iteration {start} of {settings['max_iters']}" if start else ""), highlight=False)
    model.train()
    with progress() as bar:
        task = bar.add_task("training geo-seg", total=settings["max_iters"], completed=start)
        for step in range(start + 1, settings["max_iters"] + 1):
            batch, target = (t.to(device) for t in _augment(*draw(settings["batch_size"], generator), generator))
            with autocast(device, dtype):
                loss = loss_fn(model(batch), target)
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} at iteration {step}; try a lower lr")
            optimizer.zero_grad()
            clipped_step(loss, optimizer, scaler, trainable, 1.0)
            bar.advance(task)
            if step % settings["log_every"] == 0 or step == settings["max_iters"]:
                bar.console.print(f"iter {step}/{settings['max_iters']}  loss {loss.item():.4f}")
            if step % settings["save_every"] == 0 and step < settings["max_iters"]:
                _save_state(state_path, step, identity, model, optimizer, scaler, generator)
    _save_state(state_path, settings["max_iters"], identity, model, optimizer, scaler, generator)  # may extend
