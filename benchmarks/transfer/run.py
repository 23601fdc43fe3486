"""One adaptation run: inject a method into the pretrained micro Swin, train under the shared budget, score."""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from bench_adapters import interleaved, ratio

from .data import augment, class_iou
from .model import Segmenter, pretrained_micro_swin
from domainmona.adapters import inject, prepare_for_inference, trainable_report
from domainmona.errors import UserError

# Bottleneck methods get inner dim 16 (Mona: 4.3% of this backbone, the paper's Swin-T/B share); the core's
# defaults (64, rank 64) are sized for Swin-T..L and would exceed the micro Swin's own widths.
# FacT's rank 16 would be half the first stage's width: rank 8 keeps it below 1% like on Swin-T.
METHOD_OPTIONS = {"mona": dict(inner_dim=16), "adapter": dict(inner_dim=16), "adaptformer": dict(inner_dim=16),
                  "parallel-adapter": dict(inner_dim=16), "lora": dict(rank=8, alpha=8.0), "lorand": dict(branches=2),
                  "fact-tt": dict(rank=8), "fact-tk": dict(rank=8)}
# Methods that update pretrained weights use a smaller lr than those training new modules / norms / biases
# (the usual PEFT practice; the paper's full fine-tuning uses 1e-4 with AdamW). The head always uses HEAD_LR.
BASE_WEIGHT_METHODS = {"full": 2e-4, "partial-1": 2e-4}
PEFT_LR = 2e-3
HEAD_LR = 3e-3
WEIGHT_DECAY = 0.05


@dataclass(frozen=True)
class Budget:
    steps: int = 100
    batch_size: int = 4


def _status_kb(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(key + ":")).split()[1])


def adapted_segmenter(method: str, n_classes: int) -> Segmenter:
    """The pretrained micro Swin with `method` injected, under the segmentation head."""
    return Segmenter(inject(pretrained_micro_swin(), method, **METHOD_OPTIONS.get(method, {})), n_classes)


def undefined_reason(method: str) -> str | None:
    """Why `method` cannot adapt the micro Swin (e.g. vpt-shallow is for plain ViTs), or None."""
    try:
        adapted_segmenter(method, 2)
    except UserError as error:
        return str(error)
    return None


def inference_ratios(methods: list[str], n_classes: int, side: int, rounds: int) -> dict[str, float]:
    """Latency of each method's model after `prepare_for_inference` (merged / fused) relative to the plain
    backbone under the same head: all interleaved in one process (`bench_adapters.interleaved`, CPU time),
    medians of per-round ratios. The adapter tensors are moved off their init so merging changes weights."""
    gen = torch.Generator().manual_seed(3)
    models = {"plain": Segmenter(pretrained_micro_swin(), n_classes).eval()}
    for method in methods:
        model = adapted_segmenter(method, n_classes)
        with torch.no_grad():
            for p in model.backbone.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        models[method] = prepare_for_inference(model.eval())
    models["plain again"] = models["plain"]  # first and last in every round: each method vs their mean
    x = torch.rand(1, 3, side, side, generator=gen)
    with torch.no_grad():
        times = interleaved({name: (lambda m=m: m(x)) for name, m in models.items()}, rounds)
    times["plain"] = [(a + b) / 2 for a, b in zip(times["plain"], times.pop("plain again"))]
    return {method: ratio(times, method, "plain") for method in methods}


def adapt(method: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
          n_classes: int, seed: int, budget: Budget) -> dict:
    """Train `method` on the K-shot `train` set for `budget`; mIoU on `test`, trainable share, time, peak RSS."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = adapted_segmenter(method, n_classes)
    report = trainable_report(model, model.backbone)
    backbone_lr = BASE_WEIGHT_METHODS.get(method, PEFT_LR)
    groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": backbone_lr},
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
    return {"method": method, "seed": seed, "miou": float(ious.nanmean()), "class_iou": ious.tolist(),
            "final_loss": loss.item(), "trainable_pct": report.percent_of_backbone,
            "trainable_params": report.trainable_backbone_params, "backbone_lr": backbone_lr,
            "seconds": seconds, "peak_mb": peak_mb}


def peak_memory_mb(method: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   n_classes: int) -> float:
    """Peak-RSS rise over 3 training steps in a fresh interpreter: in a process that already trained,
    the allocator reuses freed memory and every later run would measure ~0."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(adapt, method, train, test, n_classes, 0, Budget(steps=3)).result()["peak_mb"]
