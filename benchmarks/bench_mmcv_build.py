"""The detector on mmcv's compiled extension vs the default install without it, side by side in one run.

Two virtual environments that differ only in onedl-mmcv's build: `--compiled` (from
`DOMAINMONA_VENV=.venv-ops DOMAINMONA_MMCV_OPS=compile bash scripts/install.sh`) and `--standin` (the default install,
where domainmona's torch-native kernels answer `import mmcv._ext`). On the demo's data (pipelines/demo.yaml's
scenes and micro Mona-Swin), each round runs, in a fresh process of each environment in turn: a training run
of `--iters` iterations (seconds per iteration from mmengine's iteration timer, the first `--warmup` left
out) and `test` of one shared checkpoint on the demo's test scenes (wall seconds of `run_test`). Medians
over `--rounds` rounds go to benchmarks/results/mmcv_build.md. Goal: the stand-in at most 1.1x the compiled
build for both.

    .venv/bin/python benchmarks/bench_mmcv_build.py --compiled .venv-ops --standin .venv [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import machine, write_markdown

RESULTS = Path(__file__).parent / "results" / "mmcv_build.md"
ROOT = Path(__file__).resolve().parent.parent


def demo_settings():
    from domainmona.detection.demo import DemoSettings
    from domainmona.recipes import load_recipe

    return DemoSettings(**load_recipe('demo')['settings'])


def train_options(scenes: Path, work_dir: Path, iters: int):
    from domainmona.detection.synthetic import SYNTHETIC_CLASSES
    from domainmona.detection.train import MICRO_WEIGHTS, TrainOptions

    s = demo_settings()
    return TrainOptions(dataset='synthetic', data=scenes / 'train', work_dir=work_dir, backbone='micro',
                        adapter='mona', pretrained=MICRO_WEIGHTS, max_iters=iters, classes=SYNTHETIC_CLASSES,
                        patch_size=s.patch_size, patch_gap=s.patch_gap, batch_size=s.batch_size, num_workers=0,
                        lr=s.lr, seed=s.seed)


def worker(args) -> None:
    """One measurement in this process's environment; prints one JSON line."""
    import torch

    from domainmona.detection.mmcv_ext import build_name
    from domainmona.logs import framework_log

    torch.manual_seed(0)
    if args.worker == 'train':
        from domainmona.detection.train import train_runner

        opts = train_options(Path(args.scenes), Path(args.work), args.iters)
        with framework_log(opts.work_dir):
            runner = train_runner(opts)
        times = runner.message_hub.get_scalar('train/time').data[0]
        result = statistics.median(times[args.warmup:])
    else:
        from domainmona.detection.inference import run_test

        with framework_log(Path(args.work)):
            start = time.perf_counter()
            run_test(Path(args.checkpoint), Path(args.scenes) / 'test', Path(args.work))
            result = time.perf_counter() - start
    print(json.dumps({'build': build_name(), 'seconds': result}))


def run_worker(venv: Path, *argv: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    done = subprocess.run([str(venv / 'bin' / 'python'), __file__, *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: worker in {venv} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--compiled', type=Path)
    parser.add_argument('--standin', type=Path)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--worker', choices=('train', 'test'))
    parser.add_argument('--scenes')
    parser.add_argument('--work')
    parser.add_argument('--checkpoint')
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not (args.compiled and args.standin):
        raise SystemExit("error: give --compiled VENV and --standin VENV")

    from domainmona.detection.synthetic import generate_dota_scenes
    from domainmona.detection.train import train

    s = demo_settings()
    builds = {'compiled': args.compiled.resolve(), 'stand-in': args.standin.resolve()}
    with tempfile.TemporaryDirectory(prefix='bench_mmcv_build_') as tmp:
        scenes = Path(tmp) / 'scenes'
        generate_dota_scenes(scenes / 'train', s.train_scenes, s.scene_size, seed=s.seed, prefix='train')
        generate_dota_scenes(scenes / 'test', s.test_scenes, s.scene_size, seed=s.seed + 1, prefix='test')
        checkpoint = train(train_options(scenes, Path(tmp) / 'shared', args.iters))
        seconds = {(build, job): [] for build in builds for job in ('train', 'test')}
        names = {}
        for round_ in range(args.rounds):
            order = list(builds) if round_ % 2 == 0 else list(reversed(builds))  # neither always goes first
            for build in order:
                for job in ('train', 'test'):
                    work = Path(tmp) / f'{build}-{job}-{round_}'
                    out = run_worker(builds[build], '--worker', job, '--scenes', str(scenes), '--work', str(work),
                                     '--checkpoint', str(checkpoint), '--iters', str(args.iters),
                                     '--warmup', str(args.warmup))
                    names[build] = out['build']
                    seconds[build, job].append(out['seconds'])
                    print(f"round {round_ + 1} {build} {job}: {out['seconds']:.3f} s", flush=True)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    lines = ["# Detector on mmcv's compiled extension vs the default install (domainmona's kernels)", "",
             f"Generated by `benchmarks/bench_mmcv_build.py --rounds {args.rounds} --iters {args.iters}` on "
             f"{datetime.date.today().isoformat()}, {machine()}, Python {sys.version.split()[0]}, shared machine. "
             "Demo data and micro Mona-Swin (pipelines/demo.yaml); each measurement in a fresh process of its "
             "environment, the two interleaved. Training: median seconds per iteration (mmengine's iteration "
             f"timer, first {args.warmup} left out); test: wall seconds of `run_test` on the demo's test scenes "
             "with one shared checkpoint. Goal: stand-in at most 1.1x compiled.", "",
             f"- compiled: {names.get('compiled')}", f"- stand-in: {names.get('stand-in')}", "",
             "| job | compiled (s) | stand-in (s) | stand-in / compiled | goal ≤ 1.1x |", "|---|---|---|---|---|"]
    for job, what in (('train', 'training iteration'), ('test', '`test` on the demo scenes')):
        ratio = median['stand-in', job] / median['compiled', job]
        lines.append(f"| {what} | {median['compiled', job]:.3f} | {median['stand-in', job]:.3f} | {ratio:.2f}x | "
                     f"{'met' if ratio <= 1.1 else 'missed'} |")
    lines += ["", "Every measurement (s): " + "; ".join(
        f"{build} {job} " + ", ".join(f"{v:.3f}" for v in values) for (build, job), values in seconds.items())]
    write_markdown(RESULTS, lines)


if __name__ == '__main__':
    main()
