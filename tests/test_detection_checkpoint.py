"""Official STAR-MMRotate Mona checkpoints load into our Oriented R-CNN for `test`."""

import pytest
import torch

from domainmona.detection import config as C
from domainmona.detection.checkpoint import _build, load_official_detector
from domainmona.detection.classes import DATASETS
from domainmona.errors import UserError


@pytest.fixture(scope="module")
def star_mmrotate_checkpoint(tmp_path_factory):
    """A Swin-T Mona Oriented R-CNN for DOTA v1.0 saved the way STAR-MMRotate names its Monas (mona1/2)."""
    torch.manual_seed(0)
    model = _build(C.build_config('dota1.0', 'swin-t', 'mona', DATASETS['dota1.0']))
    for p in model.parameters():  # make every tensor distinguishable from a fresh init
        p.data.normal_()
    state = {k.replace('.post_attn.', '.mona1.').replace('.post_mlp.', '.mona2.'): v
             for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp('official') / 'oriented_rcnn_swin_t_mona_dota.pth'
    torch.save({'meta': {'CLASSES': DATASETS['dota1.0'], 'epoch': 12}, 'state_dict': state}, path)
    return path, model.state_dict()


@pytest.mark.slow  # builds and saves a full Swin-T detector (~170 MB)
def test_official_checkpoint_loads_with_every_weight(star_mmrotate_checkpoint):
    path, expected = star_mmrotate_checkpoint
    model, info = load_official_detector(path, 'dota')
    assert info.classes == DATASETS['dota1.0'] and (info.patch_size, info.patch_gap) == (1024, 200)
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, msg=key)


@pytest.mark.slow
def test_official_checkpoint_for_other_classes_is_refused(star_mmrotate_checkpoint):
    path, _ = star_mmrotate_checkpoint
    with pytest.raises(UserError, match="15 classes, no STAR version has"):
        load_official_detector(path, 'star')
