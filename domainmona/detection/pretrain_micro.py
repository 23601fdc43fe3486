"""Pretrain the micro backbones shipped in domainmona/assets/: the micro Swin
(`python -m domainmona.detection.pretrain_micro`) and the micro ViT (`... --backbone micro-vit`).

Mona adapts a *pretrained* backbone; a frozen random one would prove nothing. The micro Swin stands in
for an ImageNet Swin, the micro ViT for a pretrained plain ViT, and both are pretrained the same way, by
classification, on a generated *source* task whose objects (tanks, planes, pools, roofs on a green terrain, or
no object) differ from the demo's target classes (`synthetic.SYNTHETIC_CLASSES` on a brown terrain). A second
small head regresses the object's orientation (cos 2a, sin 2a) so that the features keep the direction rotated
boxes need. Pooled features of all four stages (the ViT: of each quarter of its blocks) feed the heads, so every
FPN level and side-network stage gets pretrained features. Only the backbone is kept, in OpenMMLab Swin / timm
ViT key layout, with the recipe in the safetensors metadata. Tiles are drawn on the fly from a seeded
generator; each default run takes 10-15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from domainmona.console import progress
from domainmona.io import atomic_path

SOURCE_CLASSES = ('tank', 'plane', 'pool', 'roof')
# class -> (length range in px, width as a fraction of length, colour)
_SHAPES = {
    'tank': ((14, 30), (1.0, 1.0), (215, 215, 205)),
    'plane': ((28, 50), (0.8, 1.0), (190, 195, 210)),
    'pool': ((16, 34), (0.45, 0.7), (40, 120, 220)),
    'roof': ((22, 48), (0.5, 0.75), (140, 60, 50)),
}


@dataclass(frozen=True)
class PretrainSettings:
    iters: int = 300
    batch_size: int = 32
    tile: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0


def _draw_source_object(draw: ImageDraw.ImageDraw, cls: str, box: np.ndarray) -> None:
    cx, cy, length, width, angle = box
    colour = _SHAPES[cls][2]
    u, v = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])

    def local(points):
        return [tuple(np.array([cx, cy]) + a * length / 2 * u + b * width / 2 * v) for a, b in points]

    if cls == 'tank':
        r = length / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=(90, 90, 90), width=2)
        draw.ellipse([cx - r / 3, cy - r / 3, cx + r / 3, cy + r / 3], outline=(120, 120, 120), width=1)
    elif cls == 'plane':
        draw.polygon(local([(-1, -0.12), (1, -0.12), (1, 0.12), (-1, 0.12)]), fill=colour)  # fuselage
        draw.polygon(local([(0.1, -1), (0.35, -1), (0.35, 1), (0.1, 1)]), fill=colour)  # wings
        draw.polygon(local([(-1, -0.4), (-0.85, -0.4), (-0.85, 0.4), (-1, 0.4)]), fill=colour)  # tail
    elif cls == 'pool':
        draw.polygon(local([(-1, -1), (1, -1), (1, 1), (-1, 1)]), fill=(235, 235, 235))
        draw.polygon(local([(-0.8, -0.7), (0.8, -0.7), (0.8, 0.7), (-0.8, 0.7)]), fill=colour)
    else:
        draw.polygon(local([(-1, -1), (1, -1), (1, 1), (-1, 1)]), fill=colour)
        draw.line(local([(-1, 0), (1, 0)]), fill=(80, 30, 25), width=2)


def _terrain(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = rng.uniform(0, 1, (4, 4, 1)) * np.array([0.6, 1.0, 0.5])
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    pixels = np.array([70.0, 110.0, 60.0]) + (smooth.astype(float) - 90) * 0.35 + rng.normal(0, 8, (size, size, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def source_tile(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int, float]:
    """One tile: (HxWx3 uint8, class index with len(SOURCE_CLASSES) = no object, angle in radians)."""
    image = _terrain(rng, size)
    label = int(rng.integers(len(SOURCE_CLASSES) + 1))
    angle = float(rng.uniform(-np.pi / 2, np.pi / 2))
    if label < len(SOURCE_CLASSES):
        cls = SOURCE_CLASSES[label]
        (low, high), (w_low, w_high), _ = _SHAPES[cls]
        length = rng.uniform(low, high)
        centre = size / 2 + rng.uniform(-size / 8, size / 8, 2)
        box = np.array([*centre, length, length * rng.uniform(w_low, w_high), angle])
        _draw_source_object(ImageDraw.Draw(image), cls, box)
    return np.asarray(image), label, angle


class _MicroSwin:
    """The micro Swin as mmrotate builds it (OpenMMLab key layout): every stage's map, pooled."""

    format = 'openmmlab-swin'
    settings = PretrainSettings()

    def __init__(self, name: str):
        from mmrotate.registry import MODELS
        from mmrotate.utils import register_all_modules

        from domainmona.detection import config as C

        register_all_modules()
        cfg = C.build_config('synthetic', name, 'full', SOURCE_CLASSES)
        self.module = MODELS.build(cfg.model.backbone)
        self.module.init_weights()
        self.width = sum(cfg.model.neck.in_channels)

    def pooled(self, images):
        import torch

        return torch.cat([f.mean((2, 3)) for f in self.module(images)], dim=1)

    def state(self) -> dict:
        return self.module.base_state()


class _MicroViT:
    """The micro ViT as timm builds it (timm key layout). It has no stages: the mean patch token after the last
    block of each quarter of the depth (HST's stages, ViT-CoMer's interaction groups) and the final class token,
    each layer-normalised (the residual stream is not), so every group of blocks and the class token get
    pretrained. 96 px tiles: the position embedding learns the 6x6 grid the transfer study uses, where 64 px
    would give a patch-16 ViT a 4x4 one; a ViT trained from scratch needs more steps than the Swin."""

    format = 'timm'
    settings = PretrainSettings(iters=3000, tile=96)

    def __init__(self, name: str):
        from domainmona.adapters.backbones import build_backbone
        from domainmona.adapters.side.host import host_vit

        self.host = host_vit(build_backbone(name))
        self.module = self.host.vit
        self.taps = tuple((s + 1) * self.host.depth // 4 - 1 for s in range(4))
        self.width = self.host.dim * (len(self.taps) + 1)

    def pooled(self, images):
        import torch
        from torch.nn import functional as F

        tokens, grid = self.host.embed(images)
        pooled = []
        for index in range(self.host.depth):
            tokens = self.host.block(index, tokens, grid)
            if index in self.taps:
                pooled.append(self.host.patch_tokens(tokens).mean(1))
        pooled.append(tokens[:, 0])
        return torch.cat([F.layer_norm(p, p.shape[-1:]) for p in pooled], dim=1)

    def state(self) -> dict:
        return self.module.state_dict()


_SUBJECTS = {'mmdet-swin': _MicroSwin, 'timm-vit': _MicroViT}  # by the backbone's adapter family


def shipping_backbones() -> list[str]:
    """The registered backbones whose weights domainmona ships (and this module pretrains)."""
    from domainmona.adapters.backbones import backbones

    return [name for name, spec in backbones(2).items() if spec.shipped is not None]


def default_settings(name: str) -> PretrainSettings:
    from domainmona.adapters.backbones import get_backbone

    return _SUBJECTS[get_backbone(name).family].settings


def pretrain(out: Path, settings: PretrainSettings | None = None, backbone: str = 'micro') -> Path:
    """Classification + orientation pretraining of the micro `backbone` (by default with its recipe's
    settings); saves its weights to `out`."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from domainmona.adapters.backbones import get_backbone

    s = settings or default_settings(backbone)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    spec = get_backbone(backbone)
    subject = _SUBJECTS[spec.family](backbone)
    classify = nn.Linear(subject.width, len(SOURCE_CLASSES) + 1)
    orient = nn.Linear(subject.width, 2)
    params = [*subject.module.parameters(), *classify.parameters(), *orient.parameters()]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, s.lr, total_steps=s.iters, pct_start=0.1)
    mean = torch.tensor([255 * m for m in spec.mean]).view(1, 3, 1, 1)  # the registry's 0-1 scale to 8 bits
    std = torch.tensor([255 * m for m in spec.std]).view(1, 3, 1, 1)
    subject.module.train()
    start, correct, seen = time.perf_counter(), 0, 0
    with progress() as bar:
        task = bar.add_task(f'pretraining {backbone}', total=s.iters)
        for step in range(s.iters):
            tiles = [source_tile(rng, s.tile) for _ in range(s.batch_size)]
            images = (torch.from_numpy(np.stack([t[0] for t in tiles])).permute(0, 3, 1, 2).float() - mean) / std
            labels = torch.tensor([t[1] for t in tiles])
            angles = torch.tensor([t[2] for t in tiles])
            pooled = subject.pooled(images)
            logits = classify(pooled)
            has_direction = (labels < len(SOURCE_CLASSES)) & (labels != SOURCE_CLASSES.index('tank'))  # round
            target = torch.stack([torch.cos(2 * angles), torch.sin(2 * angles)], dim=1)
            loss = nn.functional.cross_entropy(logits, labels)
            if has_direction.any():
                loss = loss + nn.functional.mse_loss(orient(pooled)[has_direction], target[has_direction])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step >= s.iters - 50:
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
            bar.update(task, advance=1, description=f'pretraining {backbone} (loss {loss.item():.3f})')
    metadata = dict(format=subject.format, produced_by=f'python -m domainmona.detection.pretrain_micro --backbone {backbone}',
                    source_classes=json.dumps(SOURCE_CLASSES), settings=json.dumps(asdict(s)),
                    final_train_accuracy=f'{correct / max(seen, 1):.3f}',
                    seconds=f'{time.perf_counter() - start:.0f}')
    with atomic_path(out) as tmp:
        save_file(subject.state(), str(tmp), metadata=metadata)
    return out


def main() -> None:
    from domainmona.adapters.backbones import get_backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backbone', default='micro', choices=shipping_backbones())
    parser.add_argument('--out', type=Path, help="default: the backbone's shipped file in domainmona/assets/")
    parser.add_argument('--iters', type=int, help="default: the backbone's recipe's")
    args = parser.parse_args()
    settings = default_settings(args.backbone)
    if args.iters is not None:
        settings = replace(settings, iters=args.iters)
    print(pretrain(args.out or get_backbone(args.backbone).shipped, settings, args.backbone))


if __name__ == '__main__':
    main()
