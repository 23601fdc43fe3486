"""HST side network: the spec's testable facts (shared/SIDE-NETWORKS.md A.4) on timm, SAM and MONAI hosts."""

import math

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM

from domainmona.adapters.side.host import host_vit
from domainmona.adapters.side.hst import HST, PRESETS, _SideBlock, preset
from domainmona.errors import UserError


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _paper_vit(name: str):
    """A timm ViT at its real size on the meta device (construction only: counts need no weights)."""
    with torch.device("meta"):
        vit = timm.create_model(name, dynamic_img_size=True)
    return vit, host_vit(vit)


def _trainable(vit, host, hst) -> int:
    """What HST trains: its own parameters plus the ViT LayerNorms it names."""
    return _count(hst) + sum(vit.get_parameter(n).numel() for n in HST.tuned_norm_paths(host))


def _tiny_vit(depth: int = 4, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=depth, num_heads=4,
                             num_classes=0, dynamic_img_size=True).eval()


def _tiny(depth: int = 4, seed: int = 0, **kwargs):
    vit = _tiny_vit(depth, seed)
    host = host_vit(vit)
    return vit, host, HST(host, **kwargs)


def _freeze_as_caller(vit, host) -> None:
    """The caller's side of HST: the ViT frozen except the norms HST tunes."""
    vit.requires_grad_(False)
    for name in HST.tuned_norm_paths(host):
        vit.get_parameter(name).requires_grad_(True)


# -- counts (A.1, A.4.1, A.4.2, A.5(a)) ------------------------------------------------------------------------

def test_vit_b_trainable_count_and_breakdown_match_the_released_configuration():
    vit, host = _paper_vit("vit_base_patch16_224")
    with torch.device("meta"):
        hst = HST(host)
        head = torch.nn.Linear(hst.out_channels[-1], 100)
    assert hst.stage_ends == (2, 5, 8, 11)
    assert _trainable(vit, host, hst) == 764_840
    assert _trainable(vit, host, hst) + _count(head) == 772_140

    def part(*keys):
        return sum(p.numel() for n, p in hst.named_parameters() if any(k in n.split(".") for k in keys))

    breakdown = {
        "ViT LayerNorms": _trainable(vit, host, hst) - _count(hst), "meta tokens": part("meta"),
        "bridges": part("bridge"), "per-block meta LNs": part("meta_norms"),
        "stem + downsamplers": part("down", "down_norm"), "side blocks": part("blocks"),
        "stage output LNs": part("out_norm"),
    }
    assert breakdown == {"ViT LayerNorms": 36_864, "meta tokens": 9_216, "bridges": 166_104,
                         "per-block meta LNs": 1_296, "stem + downsamplers": 88_616, "side blocks": 462_312,
                         "stage output LNs": 432}


def test_vit_l_uses_every_block_in_six_per_stage():
    vit, host = _paper_vit("vit_large_patch16_224")
    with torch.device("meta"):
        hst = HST(host)
    assert hst.stage_ends == (5, 11, 17, 23)
    assert [len(s.blocks) for s in hst.stages] == [6, 6, 6, 6]
    assert _trainable(vit, host, hst) == 1_360_544
    assert _trainable(vit, host, hst) - _count(hst) == 98_304


@pytest.mark.parametrize("dim, official", [(32, 12_704), (72, 63_144), (256, 789_760)])
def test_side_block_count_is_12c2_plus_13c(dim, official):
    count = _count(_SideBlock(dim, 8 if dim % 8 == 0 else 4))
    assert count == 12 * dim ** 2 + 13 * dim == official


@pytest.mark.parametrize("name, model, millions", [
    ("cls", "vit_base_patch16_224", 0.765), ("dense-s", "vit_base_patch16_224", 5.75),
    ("dense-m", "vit_base_patch16_224", 14.93), ("dense-m", "vit_large_patch16_224", 27.83)])
def test_preset_counts(name, model, millions):
    vit, host = _paper_vit(model)
    with torch.device("meta"):
        hst = HST(host, **preset(name))
    digits = len(str(millions).split(".")[1])
    assert round(_trainable(vit, host, hst) / 1e6, digits) == millions
    assert hst.out_channels == PRESETS[name]["stage_dims"]


# -- shapes, projection order, initialisation (A.2, A.3, A.4.3, A.4.4) -----------------------------------------

@pytest.mark.parametrize("size", [(224, 224), (1024, 1024), (512, 768)])
def test_stage_maps_have_strides_4_to_32(size):
    _, host, hst = _tiny()
    with torch.no_grad():
        maps = hst(torch.randn(1, 3, *size), host)
    expected = [(1, c, size[0] // (4 * 2 ** s), size[1] // (4 * 2 ** s)) for s, c in enumerate((32, 48, 64, 72))]
    assert [tuple(m.shape) for m in maps] == expected


def test_project_first_equals_resize_first():
    _, host, first = _tiny()
    second = HST(host, project_first=False)
    second.load_state_dict(first.state_dict())
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(first.eval()(x, host), second.eval()(x, host)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_initialisation_follows_the_released_code():
    _, _, hst = _tiny()
    assert hst.meta.abs().max() <= math.sqrt(6 / (2 * 64))
    linears = [m for m in hst.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    assert abs(torch.cat([m.weight.flatten() for m in linears]).std().item() - 0.02) < 0.002
    down = hst.stages[3].down
    assert abs(down.weight.std().item() - math.sqrt(2 / (9 * 72))) < 0.1 * math.sqrt(2 / (9 * 72))


# -- freezing and gradients (A.4.5, A.4.6) ---------------------------------------------------------------------

def test_only_norms_meta_and_side_train_and_all_of_them_get_gradients():
    vit, host, hst = _tiny()
    _freeze_as_caller(vit, host)
    trained = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trained == {f"blocks.{b}.{norm}.{p}" for b in range(4) for norm in ("norm1", "norm2")
                       for p in ("weight", "bias")}
    assert all(p.requires_grad for p in hst.parameters())
    hst.train()
    maps = hst(torch.randn(2, 3, 64, 96), host)
    sum((m * torch.randn_like(m)).mean() for m in maps).backward()
    assert all(p.grad is not None for p in hst.parameters())
    assert all((p.grad is not None) == (n in trained) for n, p in vit.named_parameters())


# -- meta tokens and routing (A.4.7, A.4.8) -------------------------------------------------------------------

def test_meta_tokens_change_the_vit_features_and_removing_them_restores_the_plain_vit():
    vit, host, with_meta = _tiny()
    without = HST(host, n_meta=0)
    assert without.meta is None
    x = torch.randn(2, 3, 64, 96)
    grid = host.grid_of(x)
    with torch.no_grad():
        plain = vit.forward_intermediates(x, indices=host.depth, output_fmt="NCHW", intermediates_only=True)
        taps = tuple(range(host.depth))
        bare = [host.to_map(t, grid) for t in without.run(x, host, taps)[1]]
        metad = [host.to_map(t, grid) for t in with_meta.run(x, host, taps)[1]]
    assert all(torch.equal(a, b) for a, b in zip(bare, plain))
    assert all(not torch.allclose(a, b) for a, b in zip(metad, plain))


def test_stage_routing_three_blocks_per_stage_each_side_block_after_its_vit_block():
    vit, host, hst = _tiny(depth=12)
    assert [len(s.blocks) for s in hst.stages] == [3, 3, 3, 3]
    calls = []
    for b, block in enumerate(vit.blocks):
        block.register_forward_hook(lambda *_, b=b: calls.append(("vit", b)))
    for s, stage in enumerate(hst.stages):
        for j, block in enumerate(stage.blocks):
            block.register_forward_hook(lambda *_, s=s, j=j: calls.append(("side", s, j)))
    with torch.no_grad():
        hst(torch.randn(1, 3, 64, 64), host)
    ends = hst.stage_ends
    expected = []
    for b in range(12):
        s = min(s for s, end in enumerate(ends) if b <= end)
        expected += [("vit", b), ("side", s, b - (ends[s - 1] + 1 if s else 0))]
    assert calls == expected


def test_bad_stage_ends_are_refused():
    _, host, _ = _tiny()
    with pytest.raises(UserError, match="stage_ends"):
        HST(host, stage_ends=(0, 1, 2, 2))
    with pytest.raises(UserError, match="last block"):
        HST(host, stage_ends=(0, 1, 2))


# -- hosts and composition (C.1, C.3, A.5(c)) ------------------------------------------------------------------

def test_windowed_sam_host_is_refused_in_one_line():
    sam = VisionTransformerSAM(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4, window_size=2,
                               global_attn_indexes=(1, 3), neck_chans=32, num_classes=0)
    with pytest.raises(UserError) as error:
        HST(host_vit(sam))
    assert str(error.value) == ("hst: the SAM ViT's blocks use windowed attention, where HST's meta token is "
                                "undefined (use vit-comer)")


@pytest.mark.parametrize("norm", ["gn", "syncbn"])
def test_stem_norm_choices(norm):
    _, host, hst = _tiny(norm=norm)
    assert _count(hst) == _count(HST(host))  # same affine size as BatchNorm
    with torch.no_grad():
        assert hst.train()(torch.randn(2, 3, 64, 64), host)[0].shape == (2, 32, 16, 16)


def test_composes_with_mona_in_the_vit_blocks():
    from domainmona.adapters import adapter_parameter_names, inject

    vit = _tiny_vit()
    inject(vit, "mona")
    host = host_vit(vit)
    for name in HST.tuned_norm_paths(host):
        vit.get_parameter(name).requires_grad_(True)
    hst = HST(host)
    maps = hst(torch.randn(1, 3, 64, 96), host)
    assert [tuple(m.shape[2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    sum(m.mean() for m in maps).backward()
    mona = [vit.get_parameter(n) for n in adapter_parameter_names(vit)]
    assert mona and all(p.grad is not None for p in mona)
    assert all(p.grad is not None for p in hst.parameters())


def test_3d_monai_vit_host():
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    unetr = UNETR(in_channels=1, out_channels=2, img_size=(64, 64, 64), hidden_size=96, num_heads=4, mlp_dim=192,
                  feature_size=8)
    host = host_vit(unetr.vit)
    hst = HST(host, in_chans=1)
    assert isinstance(hst.stages[0].down[0], torch.nn.Conv3d)
    assert isinstance(hst.stages[0].down[1], torch.nn.BatchNorm3d)
    with torch.no_grad():
        maps = hst(torch.randn(1, 1, 64, 64, 64), host)
    assert [tuple(m.shape) for m in maps] == [(1, c, n, n, n) for c, n in zip((32, 48, 64, 72), (16, 8, 4, 2))]
