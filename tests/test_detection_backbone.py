"""MonaSwinTransformer inside mmrotate: registry, forward/backward with Mona, pretrained loading, freezing."""

import pytest
import torch

from domainmona.detection import config as C


@pytest.fixture(scope="module")
def registry():
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    import domainmona.detection.backbone  # noqa: F401

    register_all_modules()
    return MODELS


def micro_backbone_cfg(method='mona', weights=None):
    cfg = C.build_config('dota1.0', 'micro', method, ('a', 'b'), weights)
    return cfg.model.backbone


def test_registered_in_mmrotate_models(registry):
    assert registry.get('MonaSwinTransformer') is not None


def test_micro_forward_backward_trains_only_mona_in_the_backbone(registry):
    torch.manual_seed(0)
    backbone = registry.build(micro_backbone_cfg())
    backbone.init_weights()
    backbone.train()
    feats = backbone(torch.randn(2, 3, 128, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 24), (2, 64, 16, 12), (2, 128, 8, 6), (2, 256, 4, 3)]
    sum(f.square().mean() for f in feats).backward()
    names_with_grad = {n for n, p in backbone.named_parameters() if p.grad is not None}
    assert names_with_grad == {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert names_with_grad and all('.post_attn.' in n or '.post_mlp.' in n for n in names_with_grad)
    assert len([m for m in backbone.modules() if type(m).__name__ == 'Mona']) == 2 * 5  # two per block


def test_pretrained_weights_load_and_freezing_survives(registry, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = registry.build(micro_backbone_cfg('fixed'))
    source.init_weights()
    weights = tmp_path / 'micro_swin.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))

    torch.manual_seed(2)
    target = registry.build(micro_backbone_cfg('mona', str(weights)))
    mona_before = {n: p.detach().clone() for n, p in target.named_parameters() if n in target._adapter_names}
    for p in target.parameters():  # something upstream unfreezing everything must not stick
        p.requires_grad = True
    target.init_weights()
    state = target.state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(state[key], value, msg=key)
    for name, param in target.named_parameters():
        assert param.requires_grad == (name in target._adapter_names), name
        if name in mona_before:
            torch.testing.assert_close(param, mona_before[name])  # the adapters keep their own init
