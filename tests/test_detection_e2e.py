"""End to end on generated scenes with real mmrotate on CPU: split, train, kill + resume, test, Task1."""

import math
import zipfile

import pytest

from domainmona.detection.synthetic import SYNTHETIC_CLASSES, generate_dota_scenes
from domainmona.errors import UserError


class SimulatedKill(RuntimeError):
    pass


@pytest.fixture(scope="module")
def hooks():
    """Two test hooks registered in mmengine: one records the iterations run, one 'kills' the run."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    seen = []

    class RecordIters(Hook):
        def before_train_iter(self, runner, batch_idx, data_batch=None):
            seen.append(runner.iter)

    class KillAfter(Hook):
        priority = 'LOWEST'  # after the checkpoint hook has saved this iteration

        def __init__(self, iters):
            self.iters = iters

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter + 1 == self.iters:
                raise SimulatedKill(f'killed after iteration {self.iters}')

    HOOKS.register_module(module=RecordIters, force=True)
    HOOKS.register_module(module=KillAfter, force=True)
    return seen


def micro_options(tmp_path, **overrides):
    from domainmona.detection.train import MICRO_WEIGHTS, TrainOptions

    opts = dict(dataset='synthetic', data=tmp_path / 'train', work_dir=tmp_path / 'work', backbone='micro',
                adapter='mona', pretrained=MICRO_WEIGHTS if MICRO_WEIGHTS.is_file() else None, max_iters=4,
                classes=SYNTHETIC_CLASSES, patch_size=256, patch_gap=64, batch_size=2, num_workers=0, lr=1e-3)
    opts.update(overrides)
    return TrainOptions(**opts)


@pytest.mark.slow
def test_train_resume_test_writes_a_valid_task1_submission(tmp_path, hooks):
    from domainmona.detection.inference import run_test
    from domainmona.detection.train import train

    generate_dota_scenes(tmp_path / 'train', 3, 384, seed=0, objects_per_image=(6, 10))
    generate_dota_scenes(tmp_path / 'test', 1, 384, seed=1, prefix='test', objects_per_image=(6, 10))

    killed = micro_options(tmp_path, config_overrides={'custom_hooks': [dict(type='KillAfter', iters=2),
                                                                         dict(type='RecordIters')]})
    with pytest.raises(SimulatedKill):
        train(killed)
    assert hooks == [0, 1]
    assert (tmp_path / 'work' / 'split' / 'train' / 'annfiles').is_dir()  # raw scenes were split
    assert not (tmp_path / 'work' / 'final.safetensors').exists()

    hooks.clear()
    resumed = micro_options(tmp_path, resume=True, config_overrides={'custom_hooks': [dict(type='RecordIters')]})
    final = train(resumed)
    assert hooks == [2, 3]  # continued after the last checkpoint instead of starting over
    assert final == tmp_path / 'work' / 'final.safetensors' and final.is_file()
    assert (tmp_path / 'work' / 'iter_4.pth').is_file()  # mmengine's own checkpoint as well

    result = run_test(final, tmp_path / 'test', tmp_path / 'out')
    files = sorted(p.name for p in result.task1_dir.glob('Task1_*.txt'))
    assert files == sorted(f'Task1_{c}.txt' for c in SYNTHETIC_CLASSES)
    with zipfile.ZipFile(result.zip_path) as archive:
        assert sorted(archive.namelist()) == files
    lines = [line.split() for f in result.task1_dir.glob('Task1_*.txt') for line in f.read_text().splitlines()]
    assert lines, "an untrained head scores everything low, but above the 0.05 threshold"
    for tokens in lines:
        assert tokens[0] == 'test0000' and len(tokens) == 10  # full-image names, 8 coords
        assert 0.0 <= float(tokens[1]) <= 1.0
        assert all(math.isfinite(float(c)) for c in tokens[2:])
    assert result.map is not None and 0.0 <= result.map <= 1.0
    assert (tmp_path / 'out' / 'metrics.json').is_file()


@pytest.mark.slow
def test_checkpoint_from_another_backbone_is_refused(tmp_path):
    """A checkpoint whose weights do not fit the model its config describes: one-line error, no output."""
    from mmrotate.registry import MODELS

    from domainmona.detection import config as C
    from domainmona.detection.checkpoint import DetectorInfo, save_detector
    from domainmona.detection.inference import run_test

    micro = C.build_config('synthetic', 'micro', 'mona', SYNTHETIC_CLASSES)
    wider = C.build_config('synthetic', 'micro', 'mona', SYNTHETIC_CLASSES)
    wider.model.backbone.embed_dims = 48
    wider.model.neck.in_channels = [48, 96, 192, 384]
    model = MODELS.build(wider.model)
    model.init_weights()
    checkpoint = save_detector(model, DetectorInfo(micro.pretty_text, SYNTHETIC_CLASSES, 256, 64),
                               tmp_path / 'other.safetensors')
    generate_dota_scenes(tmp_path / 'test', 1, 256, seed=1)
    with pytest.raises(UserError, match='checkpoint from another backbone') as error:
        run_test(checkpoint, tmp_path / 'test', tmp_path / 'out')
    assert '\n' not in str(error.value)
    assert not (tmp_path / 'out').exists()
