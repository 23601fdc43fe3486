"""`domainmona demo`: generated scenes -> micro Mona-Swin Oriented R-CNN fine-tuned on CPU -> test -> PNG.

The backbone is the shipped micro Swin (pretrained on a different generated task by
`python -m domainmona.detection.pretrain_micro`), frozen; Mona, the FPN and the heads train. With
pipelines/demo.yaml it reached a full-image mAP of 0.96 using ~700 CPU-seconds (about 6 minutes of wall
time on 2 idle cores); see benchmarks/results/detection_demo.json.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from domainmona.console import console
from domainmona.errors import UserError
from domainmona.io import claim_dir, claim_file, write_json
from domainmona.logs import framework_log
from domainmona.recipes import load_recipe


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs; the tuned values are in pipelines/demo.yaml."""

    train_scenes: int
    test_scenes: int
    scene_size: int
    patch_size: int
    patch_gap: int
    max_iters: int
    batch_size: int
    lr: float
    seed: int = 0


@dataclass
class DemoResult:
    map: float
    checkpoint: Path
    png: Path
    seconds: float


def run_demo(out: Path, settings: DemoSettings | None = None) -> DemoResult:
    """Settings default to pipelines/demo.yaml."""
    from domainmona.detection.train import MICRO_WEIGHTS

    if not MICRO_WEIGHTS.is_file():
        raise UserError(f"{MICRO_WEIGHTS} is missing: run `python -m domainmona.detection.pretrain_micro`")
    start = time.perf_counter()
    s = settings or DemoSettings(**load_recipe('demo')['settings'])
    claim_dir(out, 'demo')  # new, empty, or an earlier demo's: nothing of the user's is replaced
    summary = claim_file(out / 'demo.json', what='--out')
    with framework_log(out):
        return _run(out, s, summary, start)


def _run(out: Path, s: DemoSettings, summary: Path, start: float) -> DemoResult:
    import torch

    from domainmona.detection.draw import draw_detections
    from domainmona.detection.inference import run_test
    from domainmona.detection.synthetic import SYNTHETIC_CLASSES, generate_dota_scenes
    from domainmona.detection.train import MICRO_WEIGHTS, TrainOptions, train

    scenes = out / 'scenes'
    console.print(f"[bold]1/3[/] generating {s.train_scenes}+{s.test_scenes} scenes of {s.scene_size} px in {scenes}")
    generate_dota_scenes(scenes / 'train', s.train_scenes, s.scene_size, seed=s.seed, prefix='train')
    generate_dota_scenes(scenes / 'test', s.test_scenes, s.scene_size, seed=s.seed + 1, prefix='test')
    console.print(f"[bold]2/3[/] fine-tuning Mona + FPN + heads on the frozen pretrained micro Swin "
                  f"({s.max_iters} iterations)")
    opts = TrainOptions(dataset='synthetic', data=scenes / 'train', work_dir=out / 'work', backbone='micro',
                        adapter='mona', pretrained=MICRO_WEIGHTS, max_iters=s.max_iters, classes=SYNTHETIC_CLASSES,
                        patch_size=s.patch_size, patch_gap=s.patch_gap, batch_size=s.batch_size, num_workers=0,
                        lr=s.lr, seed=s.seed)
    checkpoint = train(opts)
    trained = time.perf_counter()
    console.print("[bold]3/3[/] testing on full scenes: patches, fused Mona, rotated-NMS merge, Task1, mAP")
    result = run_test(checkpoint, scenes / 'test', out / 'test')
    first = sorted(result.merged)[0]
    png = draw_detections(result.scenes / 'images' / f'{first}.png', result.merged[first], SYNTHETIC_CLASSES,
                          out / 'predictions.png')
    seconds = time.perf_counter() - start
    write_json(summary, dict(settings=asdict(s), map=result.map, seconds=round(seconds, 1),
                             train_seconds=round(trained - start, 1), cpu_threads=torch.get_num_threads()))
    console.print(f"full-image mAP on {s.test_scenes} test scenes ({', '.join(SYNTHETIC_CLASSES)}): "
                  f"[bold]{result.map:.3f}[/] in {seconds / 60:.1f} min; boxes drawn in {png}")
    return DemoResult(result.map, checkpoint, png, seconds)
