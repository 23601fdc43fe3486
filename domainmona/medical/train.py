"""The segment-ct training loop: DiceCE on pos/neg patches, sliding-window validation Dice, best/last checkpoints.

A plain PyTorch loop over MONAI data (as MONAI's own SwinUNETR tutorials): the pieces that matter here —
frozen encoder, adapter learning rate, adapter-only files, resume — are explicit instead of hidden in an engine.
Under torchrun every rank trains on its share of the volumes; rank 0 validates and writes.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, partition_dataset
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.utils import set_determinism

from domainmona.adapters import adapted_backbones, set_adapter_recompute
from domainmona.console import console, progress
from domainmona.devices import amp_dtype, autocast, clipped_step, describe, grad_scaler, load_scaler_state
from domainmona.errors import UserError
from domainmona.io import atomic_path, claim_dir, remove_stale_temps
from domainmona.launch import leave_process_group, under_torchrun
from domainmona.medical import transforms
from domainmona.medical.checkpoint import load_checkpoint, load_state, save_checkpoint
from domainmona.medical.data import Split
from domainmona.medical.model import assemble, optimizer_groups
from domainmona.medical.settings import check_settings, decoder_mode
from domainmona.medical.summary import print_report
from domainmona.medical.weights import save_adapter_file
from domainmona.medical.predict import segment

CHECKPOINT_DIR = "checkpoints"
COMMAND = "segment-ct train"


@dataclass
class Runtime:
    """Where this process runs: rank and world size under torchrun, else a single process."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def runtime(gpus: int) -> Runtime:
    """Join the torchrun process group when launched by it (NCCL on GPUs, gloo on CPU)."""
    cuda = gpus > 0 and torch.cuda.is_available()
    if not under_torchrun():
        return Runtime(torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    atexit.register(leave_process_group)  # also after a failure or Ctrl-C
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Runtime(device, torch.distributed.get_rank(), torch.distributed.get_world_size())


def set_cosine_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], epoch: int, total: int) -> None:
    """Cosine decay computed from the epoch, not a scheduler's state: `--resume --max-epochs N` may extend a run."""
    factor = 0.5 * (1.0 + math.cos(math.pi * epoch / total))
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


def _train_epoch(net: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, grad_clip: float, dtype: torch.dtype | None, device: torch.device):
    """One pass over the patches with DiceCE; yields each step's loss."""
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    trainable = [p for p in net.parameters() if p.requires_grad]
    net.train()
    for batch in loader:
        image, label = batch[transforms.IMAGE].to(device), batch[transforms.LABEL].to(device)
        with autocast(device, dtype):
            loss = loss_fn(net(image), label)
        optimizer.zero_grad(set_to_none=True)
        clipped_step(loss, optimizer, scaler, trainable, grad_clip)
        yield loss.item()


def validation_dice(model: torch.nn.Module, loader: DataLoader, settings: dict[str, Any], num_classes: int,
                    device: torch.device) -> float:
    """Mean foreground Dice over validation volumes (preprocessed space), classes absent in a case skipped."""
    train = settings["train"]
    scores = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            labels = segment(model, batch[transforms.IMAGE][0].to(device), train["roi"], train["sw_batch_size"],
                             train["overlap"])
            truth = batch[transforms.LABEL].to(device)
            scores.append(compute_dice(labels[:, None], truth, include_background=False, num_classes=num_classes,
                                       ignore_empty=True).cpu().numpy())
    model.train()
    return float(np.nanmean(np.concatenate(scores)))


def _loaders(split: Split, settings: dict[str, Any], rt: Runtime) -> tuple[DataLoader, DataLoader | None]:
    train, pre = settings["train"], settings["preprocess"]
    cases = split.train
    if rt.world > 1:
        cases = partition_dataset(cases, num_partitions=rt.world, shuffle=True, even_divisible=True,
                                  seed=train["seed"])[rt.rank]
    chain = transforms.training(pre, settings["augment"], train["roi"])
    workers = train["num_workers"]
    train_set = CacheDataset(cases, chain, cache_rate=train["cache_rate"], num_workers=workers, progress=False)
    train_loader = DataLoader(train_set, batch_size=train["batch_size"], shuffle=True, num_workers=workers,
                              pin_memory=rt.device.type == "cuda")
    if not (split.val and rt.main):
        return train_loader, None
    val_set = CacheDataset(split.val, transforms.validation(pre), cache_rate=train["cache_rate"],
                           num_workers=workers, progress=False)
    return train_loader, DataLoader(val_set, batch_size=1, num_workers=workers)


def _check_resumable(state: dict, settings: dict[str, Any], split: Split, path: Path) -> None:
    for section in ("model", "preprocess"):
        if state["settings"][section] != settings[section]:
            raise UserError(f"{path}: its '{section}' settings differ from this run's; resume with the same flags")
    if state["num_classes"] != split.num_classes:
        raise UserError(f"{path}: a run with {state['num_classes']} classes, the data has {split.num_classes}; "
                        "resume with the same --data")
    if not ({"optimizer", "scaler", "best_dice"} <= set(state) and isinstance(state.get("epoch"), int)
            and isinstance(state.get("history"), list)):
        raise UserError(f"{path}: not a last.pt (no optimizer state, epoch and history to resume from)")


def resumed_decoder(state: dict) -> str:
    """The decoder mode of the run a last.pt continues: resolved when that run started (`decoder_mode`), so that
    resuming needs no `--pretrained` to resolve it again."""
    return state["settings"]["model"]["decoder"]


def last_checkpoint(work_dir: str | Path) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR / "last.pt"


def train(split: Split, settings: dict[str, Any], work_dir: str | Path, pretrained: str | Path | None = None,
          resume: bool = False, gpus: int = 1) -> Path:
    """Train, validate every `val_every` epochs, and return the checkpoint to use (best, else last).

    `resume` continues `work_dir`'s last.pt, or starts the run when there is none yet (so a killed command
    is simply rerun with --resume). Everything that can be refused (the settings, the data, last.pt, the
    pretrained weights, the work dir itself) is checked before the work dir is touched. A null `model.decoder`
    is resolved from `pretrained` (`decoder_mode`), or on resuming taken from last.pt (resolved when the run
    started, so `--pretrained` need not be repeated), and recorded in `settings`, which every checkpoint holds.
    """
    check_settings(settings)
    work_dir = Path(work_dir)
    ckpt_dir = work_dir / CHECKPOINT_DIR
    last_path, best_path = last_checkpoint(work_dir), ckpt_dir / "best.pt"
    adapter_paths = {path: ckpt_dir / f"{path.stem}_adapter.safetensors" for path in (last_path, best_path)}
    metrics_path = work_dir / "metrics.json"
    if last_path.exists() and not resume:
        raise UserError(f"{work_dir} already holds a run; pass --resume to continue it or choose another --work-dir")
    state = load_checkpoint(last_path) if resume and last_path.exists() else None
    if state is not None and settings["model"]["decoder"] is None:
        settings["model"]["decoder"] = resumed_decoder(state)
    settings["model"]["decoder"] = decoder_mode(settings["model"], pretrained)
    rt = runtime(gpus)
    cfg = settings["train"]
    set_determinism(seed=cfg["seed"] + rt.rank)
    if state is not None:
        _check_resumable(state, settings, split, last_path)
    model = assemble(settings["model"], split.num_classes, pretrained=None if state else pretrained,
                     verbose=rt.main, device=rt.device, roi=cfg["roi"])
    if adapted_backbones(model):
        set_adapter_recompute(model, cfg["adapter_recompute"])
    optimizer = torch.optim.AdamW(optimizer_groups(model, cfg["lr"], cfg["adapter_lr"]),
                                  weight_decay=cfg["weight_decay"])
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    dtype = amp_dtype(rt.device, cfg["amp"])
    scaler = grad_scaler(rt.device, dtype)
    start_epoch, best_dice, history = 0, -1.0, []
    if state is not None:
        load_state(last_path, state, model=model, optimizer=optimizer)
        load_scaler_state(scaler, state["scaler"])
        start_epoch, best_dice, history = state["epoch"], state["best_dice"], state["history"]
    if rt.main:
        claim_dir(work_dir, COMMAND)
        for output in (last_path, best_path, *adapter_paths.values(), metrics_path):
            remove_stale_temps(output)  # a killed run's half-written files, even those this run may not rewrite
        if resume:
            console.print(f"resuming {last_path} at epoch {start_epoch} of {cfg['max_epochs']}" if state else
                          f"nothing to resume in {work_dir} yet: starting the run", highlight=False)
        print_report(model, settings["model"])
        console.print(f"training on {rt.device} in {describe(dtype)}", highlight=False)
    net = model
    if rt.world > 1:
        on_gpu = rt.device.type == "cuda"
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if on_gpu else None)
    train_loader, val_loader = _loaders(split, settings, rt)
    common = dict(settings=settings, label_names={str(k): v for k, v in split.label_names.items()},
                  num_classes=split.num_classes)
    steps = (cfg["max_epochs"] - start_epoch) * len(train_loader)
    with progress() as bar:
        task = bar.add_task("train", total=steps, visible=rt.main)
        for epoch in range(start_epoch, cfg["max_epochs"]):
            set_cosine_lr(optimizer, base_lrs, epoch, cfg["max_epochs"])
            started = time.perf_counter()
            losses = []
            for loss in _train_epoch(net, train_loader, optimizer, scaler, cfg["grad_clip"], dtype, rt.device):
                losses.append(loss)
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg['max_epochs']} loss {loss:.3f}")
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
            history.append(record)
            if (epoch + 1) % cfg["val_every"] and epoch + 1 != cfg["max_epochs"]:
                continue
            if rt.main:
                if val_loader is not None:
                    record["val_dice"] = validation_dice(model, val_loader, settings, split.num_classes, rt.device)
                    console.print(f"epoch {epoch + 1}: loss {record['loss']:.4f}, validation Dice "
                                  f"{record['val_dice']:.4f}", highlight=False)
                if record.get("val_dice", -1.0) > best_dice:
                    best_dice = record["val_dice"]
                    save_checkpoint(best_path, model=model.state_dict(), epoch=epoch + 1, best_dice=best_dice, **common)
                    save_adapter_file(model, settings["model"], adapter_paths[best_path], best_path)
                save_checkpoint(last_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                scaler=scaler.state_dict(), epoch=epoch + 1, best_dice=best_dice, history=history,
                                **common)
                save_adapter_file(model, settings["model"], adapter_paths[last_path], last_path)
                with atomic_path(metrics_path) as tmp:
                    tmp.write_text(json.dumps(history, indent=2))
            rt.barrier()
    leave_process_group()
    return best_path if best_path.exists() else last_path
