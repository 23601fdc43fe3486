"""UNETR with HST side stages feeding its skips: shapes, checkpoint compatibility, start state, gradients."""

import copy

import pytest
import torch
from monai.networks.nets import UNETR

from domainmona.errors import UserError
from domainmona.medical.unetr_hst import UNETRWithHST

SMALL = dict(in_channels=1, out_channels=3, img_size=(32, 32, 32), feature_size=8, hidden_size=64, mlp_dim=128,
             num_heads=4)


def _input(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))


def test_output_shape_equals_unetr_and_three_stages_are_built():
    torch.manual_seed(0)
    model = UNETRWithHST(**SMALL).eval()
    assert model.hst.out_channels == (32, 48, 64)
    assert model.hst.stage_ends == (3, 7, 11)
    x = _input()
    with torch.no_grad():
        assert model(x).shape == UNETR(**SMALL).eval()(x).shape == (1, 3, 32, 32, 32)
        assert torch.equal(copy.deepcopy(model)(x), model(x))  # HST holds no second reference to the ViT


def test_unetr_state_dict_loads_by_name_with_only_hst_missing():
    model = UNETRWithHST(**SMALL)
    result = model.load_state_dict(UNETR(**SMALL).state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith(("hst.", "hst_skips.")) for k in result.missing_keys)
    assert set(UNETR(**SMALL).state_dict()) == {k for k in model.state_dict() if not k.startswith("hst")}


def test_zero_projections_without_meta_tokens_equal_plain_unetr_bit_for_bit():
    plain = UNETR(**SMALL).eval()
    model = UNETRWithHST(**SMALL, n_meta=0).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    x = _input(2)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        with_meta = UNETRWithHST(**SMALL).eval()
        with_meta.load_state_dict(plain.state_dict(), strict=False)
        assert not torch.equal(with_meta(x), plain(x))  # HST's meta tokens change the ViT from step 0


def test_gradients_reach_hst_and_norms_not_the_frozen_vit():
    torch.manual_seed(0)
    model = UNETRWithHST(**SMALL)
    model.vit.requires_grad_(False)
    tuned = set(model.tuned_norm_names())
    assert len(tuned) == 12 * 2 * 2
    for name in tuned:
        model.get_parameter(name).requires_grad_(True)
    with torch.no_grad():  # off zero, as after the first steps, so the side stages get non-zero gradients
        for p in model.hst_skips.parameters():
            p.normal_(0, 0.02)
    model(_input(2)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.hst.parameters())
    for name, p in model.vit.named_parameters():
        assert (p.grad is not None) == (f"vit.{name}" in tuned), name


def test_three_stages_are_required():
    with pytest.raises(UserError, match="3 stage_dims"):
        UNETRWithHST(**SMALL, stage_dims=(32, 48, 64, 72), stage_heads=(2, 4, 8, 12))
