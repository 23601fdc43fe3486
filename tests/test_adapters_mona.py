"""Mona module: official parameter layout and count, exact fusion in 2D and 3D."""

import pytest
import torch

from domainmona.adapters import Mona, Mona3d, fuse

OFFICIAL_KEYS = {
    "norm.weight", "norm.bias", "gamma", "gammax", "project1.weight", "project1.bias",
    "project2.weight", "project2.bias",
    *(f"adapter_conv.{conv}.{p}" for conv in ("conv1", "conv2", "conv3", "projector") for p in ("weight", "bias")),
}


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (gamma starts at 1e-6, which would hide the norm path)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module.eval()


@pytest.mark.parametrize("mona, hw", [(Mona(48, inner_dim=16), (6, 9)), (Mona3d(24, inner_dim=8), (4, 3, 5))])
def test_module_equals_the_official_formulation_in_value_and_gradient(mona, hw):
    _randomised(mona)
    x = torch.randn(2, torch.Size(hw).numel(), mona.norm.normalized_shape[0], generator=torch.Generator().manual_seed(6))
    grads = []
    for forward in (lambda: mona(x, hw), lambda: mona.reference_forward(x, hw)):
        mona.zero_grad()
        out = forward()
        out.square().sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in mona.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dim", [96, 128, 192])
def test_parameter_count_matches_paper_formula(dim):
    assert sum(p.numel() for p in Mona(dim).parameters()) == 133 * dim + 9728
    depthwise_3d = 64 * (27 + 125 + 343) + 3 * 64
    assert sum(p.numel() for p in Mona3d(dim).parameters()) == 133 * dim + 64 + depthwise_3d + 64 * 64 + 64


def test_official_parameter_names_and_init():
    mona = Mona(96)
    assert set(mona.state_dict()) == OFFICIAL_KEYS
    assert torch.all(mona.gamma == 1e-6) and torch.all(mona.gammax == 1)
    assert mona.project1.weight.std() < 0.03 and torch.all(mona.project2.bias == 0)


@pytest.mark.parametrize("hw, prefix", [((14, 18), 0), ((7, 7), 1), ((5, 9), 4)])
def test_fused_equals_unfused_2d(hw, prefix):
    mona = _randomised(Mona(96, inner_dim=32))
    x = torch.randn(2, prefix + hw[0] * hw[1], 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = mona(x, hw, num_prefix_tokens=prefix)
        if not prefix:
            torch.testing.assert_close(expected, mona.reference_forward(x, hw), atol=1e-5, rtol=0)
        fuse(mona)
        assert mona.is_fused
        got = mona(x, hw, num_prefix_tokens=prefix)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert (expected - x).abs().max() > 1e-2  # the adapter really changes its input


def test_fused_equals_unfused_3d():
    mona = _randomised(Mona3d(48))
    x = torch.randn(2, 6 * 5 * 7, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = mona.reference_forward(x, (6, 5, 7))
        fuse(mona)
        got = mona(x, (6, 5, 7))
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_conv_path_crosses_the_whole_map():
    """A change in one corner token reaches tokens 3 positions away (7x7 receptive field), not further."""
    mona = _randomised(Mona(32, inner_dim=16))
    x = torch.randn(1, 12 * 12, 32)
    bumped = x.clone()
    bumped[0, 0] += 1.0
    with torch.no_grad():
        diff = (mona(bumped, (12, 12)) - mona(x, (12, 12))).abs().sum(-1).view(12, 12)
    assert diff[3, 3] > 0 and diff[:4, :4].min() > 0
    assert diff[4:, :].max() == 0 and diff[:, 4:].max() == 0


def test_wrong_map_shape_is_reported():
    with pytest.raises(ValueError, match="do not form a map"):
        Mona(16)(torch.randn(1, 10, 16), (3, 3))
