"""Pretrain the micro Swin shipped in domainmona/assets/ (`python -m domainmona.detection.pretrain_micro`).

Mona adapts a *pretrained* backbone; a frozen random one would prove nothing. The micro Swin stands in
for an ImageNet Swin: it is trained from scratch (all weights, no adapter) inside a micro Oriented R-CNN
on a generated *source* task whose object classes (tanks, planes, pools, roofs, on a green terrain) differ
from the demo's target classes (`synthetic.SYNTHETIC_CLASSES` on a brown terrain). Only the backbone
is kept, in OpenMMLab Swin key layout, with the recipe in its safetensors metadata. Seeded; the run
takes about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw

from domainmona.detection.dota.geometry import normalise_quads, obb_to_poly
from domainmona.detection.dota.labels import DotaObject, write_dota_labels
from domainmona.io import atomic_dir, atomic_path

SOURCE_CLASSES = ('tank', 'plane', 'pool', 'roof')
# class -> (length range, width range as a fraction of length, colour) in pixels
_SHAPES = {
    'tank': ((18, 40), (1.0, 1.0), (215, 215, 205)),
    'plane': ((36, 64), (0.8, 1.0), (190, 195, 210)),
    'pool': ((18, 40), (0.45, 0.7), (40, 120, 220)),
    'roof': ((28, 60), (0.5, 0.75), (140, 60, 50)),
}


@dataclass(frozen=True)
class PretrainSettings:
    scenes: int = 32
    scene_size: int = 512
    patch_size: int = 256
    patch_gap: int = 64
    max_iters: int = 800
    batch_size: int = 4
    lr: float = 1e-3
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


def _source_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[DotaObject]]:
    """A green terrain with fields and source-class objects (each labelled by its minimal rotated box)."""
    coarse = rng.uniform(0, 1, (size // 64, size // 64, 1)) * np.array([0.6, 1.0, 0.5])
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    pixels = np.array([70.0, 110.0, 60.0]) + (smooth.astype(float) - 90) * 0.35 + rng.normal(0, 8, (size, size, 1))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    frame, taken, objects = shapely.box(0, 0, size, size), [], []
    for attempt in range(600):
        if len(objects) == 24:
            break
        cls = SOURCE_CLASSES[attempt % len(SOURCE_CLASSES)]
        (low, high), (w_low, w_high), _ = _SHAPES[cls]
        length = rng.uniform(low, high)
        box = np.array([*rng.uniform(0, size, 2), length, length * rng.uniform(w_low, w_high),
                        rng.uniform(-np.pi / 2, np.pi / 2)])
        footprint = shapely.Polygon(obb_to_poly(box))
        if not frame.contains(footprint) or any(footprint.distance(t) < 4 for t in taken):
            continue
        taken.append(footprint)
        _draw_source_object(draw, cls, box)
        objects.append(DotaObject(normalise_quads(obb_to_poly(box)), cls, 0))
    return image, objects


def generate_source_scenes(out_dir: Path, n_images: int, size: int, seed: int) -> None:
    with atomic_dir(out_dir) as tmp:
        (tmp / 'images').mkdir()
        for index in range(n_images):
            image, objects = _source_scene(np.random.default_rng([seed, index]), size)
            image.save(tmp / 'images' / f'source{index:04d}.png', compress_level=1)
            write_dota_labels(tmp / 'labelTxt' / f'source{index:04d}.txt', objects)


def pretrain(out: Path, settings: PretrainSettings, work_dir: Path) -> Path:
    """Train the micro detector on the source task and save its backbone to `out`."""
    from safetensors.torch import save_file

    from domainmona.detection.train import TrainOptions, train_runner

    s = settings
    generate_source_scenes(work_dir / 'source', s.scenes, s.scene_size, s.seed)
    opts = TrainOptions(dataset='synthetic-source', data=work_dir / 'source', work_dir=work_dir / 'train',
                        backbone='micro', adapter='full', pretrained=None, max_iters=s.max_iters,
                        classes=SOURCE_CLASSES, patch_size=s.patch_size, patch_gap=s.patch_gap,
                        batch_size=s.batch_size, num_workers=0, lr=s.lr, seed=s.seed)
    runner = train_runner(opts)
    state = {k: v.detach().cpu().contiguous() for k, v in runner.model.backbone.state_dict().items()}
    metadata = dict(format='openmmlab-swin', produced_by='python -m domainmona.detection.pretrain_micro',
                    source_classes=json.dumps(SOURCE_CLASSES), settings=json.dumps(asdict(s)))
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return out


def main() -> None:
    from domainmona.detection.train import MICRO_WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=MICRO_WEIGHTS)
    parser.add_argument('--work-dir', type=Path, default=None, help='default: a temporary folder')
    parser.add_argument('--max-iters', type=int, default=PretrainSettings.max_iters)
    args = parser.parse_args()
    settings = PretrainSettings(max_iters=args.max_iters)
    if args.work_dir:
        print(pretrain(args.out, settings, args.work_dir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(pretrain(args.out, settings, Path(tmp)))


if __name__ == '__main__':
    main()
