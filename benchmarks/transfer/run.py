"""One adaptation run: inject a method into a pretrained micro backbone (with a plain ViT's pyramid or side
network), train under the shared budget, score."""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from bench_adapters import interleaved, ratio

from .data import augment, class_iou
from .model import Segmenter, pretrained_backbone
from domainmona.adapters import inject, prepare_for_inference, trainable_report
from domainmona.adapters.backbones.features import train_whole, trained_whole
from domainmona.errors import UserError

# Bottleneck methods get inner dim 16 (Mona: 4.3% of this backbone, the paper's Swin-T/B share); the core's
# defaults (64, rank 64) are sized for Swin-T..L and would exceed the micro Swin's own widths.
# FacT's rank 16 would be half the first stage's width: rank 8 keeps it below 1% like on Swin-T.
METHOD_OPTIONS = {"mona": dict(inner_dim=16), "adapter": dict(inner_dim=16), "adaptformer": dict(inner_dim=16),
                  "parallel-adapter": dict(inner_dim=16), "lora": dict(rank=8, alpha=8.0), "lorand": dict(branches=2),
                  "fact-tt": dict(rank=8), "fact-tk": dict(rank=8)}
# Methods that update pretrained weights use a smaller lr than those training new modules / norms / biases
# (the usual PEFT practice; the paper's full fine-tuning uses 1e-4 with AdamW). The head always uses HEAD_LR; what
# trains whole beside the method (a plain ViT's pyramid or side network, new like the adapters, and HST's ViT
# LayerNorms) always uses PEFT_LR.
BASE_WEIGHT_METHODS = {"full": 2e-4, "partial-1": 2e-4}
PEFT_LR = 2e-3
HEAD_LR = 3e-3
WEIGHT_DECAY = 0.05


@dataclass(frozen=True)
class Budget:
    steps: int = 100
    batch_size: int = 4


@dataclass(frozen=True)
class Arm:
    """One row of a study: adapter `method` in the shipped pretrained `backbone` (options: METHOD_OPTIONS under
    `method_cfg`); for a plain ViT, `side` names what makes its pyramid (domainmona.adapters.side: the simple
    pyramid or a side network, options `side_cfg`)."""

    method: str
    backbone: str = "micro"
    side: str | None = None
    side_cfg: dict = field(default_factory=dict)
    method_cfg: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.method if self.side is None else f"{self.side} + {self.method}"


def _status_kb(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(key + ":")).split()[1])


def adapted_segmenter(arm: Arm, n_classes: int) -> Segmenter:
    """The arm's pretrained backbone with its method injected (and its pyramid or side network trainable), under
    the segmentation head."""
    backbone, widths = pretrained_backbone(arm.backbone, arm.side, arm.side_cfg)
    backbone = inject(backbone, arm.method, **{**METHOD_OPTIONS.get(arm.method, {}), **arm.method_cfg})
    train_whole(backbone)
    return Segmenter(backbone, widths, n_classes)


def undefined_reason(arm: Arm) -> str | None:
    """Why the arm's method cannot adapt its backbone (e.g. vpt-shallow is for plain ViTs), or None."""
    try:
        adapted_segmenter(arm, 2)
    except UserError as error:
        return str(error)
    return None


def inference_ratios(arms: list[Arm], n_classes: int, side: int, rounds: int) -> dict[str, float]:
    """Latency of each arm's model after `prepare_for_inference` (merged / fused) relative to the plain
    backbone (its own pyramid; a plain ViT's: the simple one) under the same head, by arm label: all interleaved
    in one process (`bench_adapters.interleaved`, CPU time), medians of per-round ratios. The trainable tensors
    are moved off their init so merging changes weights."""
    gen = torch.Generator().manual_seed(3)
    models = {"plain": Segmenter(*pretrained_backbone(arms[0].backbone), n_classes).eval()}
    for arm in arms:
        model = adapted_segmenter(arm, n_classes)
        with torch.no_grad():
            for p in model.backbone.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        models[arm.label] = prepare_for_inference(model.eval())
    models["plain again"] = models["plain"]  # first and last in every round: each method vs their mean
    x = torch.rand(1, 3, side, side, generator=gen)
    with torch.no_grad():
        times = interleaved({name: (lambda m=m: m(x)) for name, m in models.items()}, rounds)
    times["plain"] = [(a + b) / 2 for a, b in zip(times["plain"], times.pop("plain again"))]
    return {arm.label: ratio(times, arm.label, "plain") for arm in arms}


def adapt(arm: Arm, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
          n_classes: int, seed: int, budget: Budget) -> dict:
    """Train the arm on the K-shot `train` set for `budget`; mIoU on `test`, trainable share of the backbone
    (a plain ViT's own parameters) and trainable parameters with its pyramid or side network, time, peak RSS."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = adapted_segmenter(arm, n_classes)
    report = trainable_report(model.backbone)
    backbone_lr = BASE_WEIGHT_METHODS.get(arm.method, PEFT_LR)
    whole = {id(p) for name in trained_whole(model.backbone) for p in model.backbone.get_submodule(name).parameters()}
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in whole], "lr": backbone_lr},
              {"params": [p for p in trainable if id(p) in whole], "lr": PEFT_LR},
              {"params": list(model.head.parameters()), "lr": HEAD_LR}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=WEIGHT_DECAY)
    lrs = [g["lr"] for g in optimizer.param_groups]
    images, masks = train
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    rss_before = _status_kb("VmRSS")
    start = time.perf_counter()
    model.train()
    for step in range(budget.steps):
        for group, lr in zip(optimizer.param_groups, lrs):  # cosine decay to zero
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / budget.steps))
        pick = torch.randint(len(images), (budget.batch_size,), generator=gen)
        batch, target = augment(images[pick], masks[pick], gen)
        loss = F.cross_entropy(model(batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    peak_mb = (_status_kb("VmHWM") - rss_before) / 1024
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(chunk).argmax(1) for chunk in test[0].split(8)])
    ious = class_iou(pred, test[1], n_classes)
    return {"method": arm.label, "adapter": arm.method, "side": arm.side, "seed": seed, "miou": float(ious.nanmean()),
            "class_iou": ious.tolist(), "final_loss": loss.item(), "trainable_pct": report.percent_of_backbone,
            "trainable_params": report.trainable_backbone_params,
            "trainable_with_pyramid": report.trainable_model_params, "backbone_lr": backbone_lr,
            "seconds": seconds, "peak_mb": peak_mb}


def peak_memory_mb(arm: Arm, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   n_classes: int) -> float:
    """Peak-RSS rise over 3 training steps in a fresh interpreter: in a process that already trained,
    the allocator reuses freed memory and every later run would measure ~0."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(adapt, arm, train, test, n_classes, 0, Budget(steps=3)).result()["peak_mb"]
