"""ViT-CoMer side network (SIDE-NETWORKS.md B.4): exact parameter counts of the official configurations, the
pyramid's shapes (padded inputs included), the frozen ViT's stream unchanged at init, gradient isolation, level
bookkeeping, windowed and adapted hosts, and the one-line refusals."""

import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM

from domainmona.adapters.side.host import host_vit
from domainmona.adapters.side.vit_comer import PRESETS, Levels, ViTCoMer, preset_kwargs
from domainmona.errors import UserError

TINY = dict(deform_heads=4, n_points=2)
COUNTS = {"det-S": 8_333_408, "det-B": 22_335_872, "seg-T": 5_090_912, "seg-S": 9_606_752, "seg-B": 24_788_864}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny_vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4, dynamic_img_size=True,
                            **kwargs)
    return vit.requires_grad_(False).eval()


def _plain_streams(host, x, groups):
    """The host ViT alone on `x`: its token sequence after the last block of each group."""
    tokens, grid = host.embed(x)
    streams = []
    for first, last in groups:
        for index in range(first, last + 1):
            tokens = host.block(index, tokens, grid)
        streams.append(tokens)
    return streams


def _loss(outs):
    """A loss with fixed random weights (a sum of squares would be flat through the output BatchNorms)."""
    generator = torch.Generator().manual_seed(1)
    return sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outs)


@pytest.mark.parametrize("name", COUNTS)
def test_side_parameter_counts_of_the_official_configurations(name):
    dim = PRESETS[name]["dim"]
    with torch.device("meta"):
        vit = VisionTransformer(embed_dim=dim, depth=12, num_heads=dim // 64, dynamic_img_size=True)
        host = host_vit(vit)
        comer = ViTCoMer(host, **preset_kwargs(name, dim))
    assert _count(comer) == COUNTS[name]
    assert comer.out_channels == (dim,) * 4
    assert not any(m is vit for m in comer.modules())  # the caller owns the ViT
    assert not any(v is host or v is vit for v in vars(comer).values())
    if name == "det-B":
        assert [_count(cti) for cti in comer.interactions] == [3_069_024] * 3 + [9_180_960]
        assert comer.groups == ((0, 2), (3, 5), (6, 8), (9, 11))


@pytest.mark.parametrize("size, base_width", [((224, 224), 64), ((512, 768), 64), ((100, 70), 64),
                                              ((1024, 1024), 16)])
def test_pyramid_shapes_padded_to_32_and_cropped_back(size, base_width):
    host = host_vit(_tiny_vit())
    comer = ViTCoMer(host, base_width=base_width, **TINY).eval()
    with torch.no_grad():
        outs = comer(torch.randn(1, 3, *size), host)
    assert [tuple(o.shape) for o in outs] == [(1, 64, math.ceil(size[0] / s), math.ceil(size[1] / s))
                                              for s in (4, 8, 16, 32)]
    if size == (100, 70):
        assert [tuple(o.shape[2:]) for o in outs] == [(25, 18), (13, 9), (7, 5), (4, 3)]


def test_level_bookkeeping_uses_explicit_offsets():
    host = host_vit(_tiny_vit())
    comer = ViTCoMer(host, **TINY).eval()
    with torch.no_grad():
        state = comer.interact(torch.randn(1, 3, 100, 70), host)  # padded to 128 x 96
    h, w = state.grid
    assert (h, w) == (8, 6)
    assert state.c.shape[1] == state.levels.total == 21 * (128 // 32) * (96 // 32)
    assert state.levels.starts == (0, 4 * h * w, 5 * h * w)
    assert state.levels.shapes == ((16, 12), (8, 6), (4, 3))
    assert Levels.of((h, w)) == state.levels
    assert tuple(state.c1.shape) == (1, 64, 32, 24)


@pytest.mark.parametrize("mode", ["last", "per_stage"])
def test_vit_stream_is_the_frozen_vits_exactly_at_init(mode):
    vit = _tiny_vit(reg_tokens=2)  # class + 2 register tokens stay in the stream
    host = host_vit(vit)
    assert host.num_prefix == 3
    comer = ViTCoMer(host, vit_feature_mode=mode, **TINY).train()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        streams = comer.interact(x, host).streams
        plain = _plain_streams(host, x, comer.groups)
        assert [(a - b).abs().max().item() for a, b in zip(streams, plain)] == [0.0] * 4
        gated = ViTCoMer(host, vit_feature_mode=mode, init_values=0.1, **TINY)
        assert not torch.equal(gated.interact(x, host).streams[-1], plain[-1])


def test_gradients_stay_out_of_the_frozen_vit_and_tov_wakes_after_gamma_moves():
    vit = _tiny_vit()
    host = host_vit(vit)
    comer = ViTCoMer(host, **TINY).train()
    x = torch.randn(2, 3, 64, 64)
    _loss(comer(x, host)).backward()
    assert all(p.grad is None for p in vit.parameters())
    assert [n for n, p in comer.named_parameters() if p.grad is None] == []
    to_vit = {n: p for n, p in comer.named_parameters() if ".to_vit." in n and not n.endswith("gamma")}
    assert to_vit and all(torch.count_nonzero(p.grad) == 0 for p in to_vit.values())
    assert all(torch.count_nonzero(cti.to_vit.gamma.grad) > 0 for cti in comer.interactions)

    torch.optim.SGD(comer.parameters(), lr=0.1).step()
    comer.zero_grad()
    assert all(torch.count_nonzero(cti.to_vit.gamma) > 0 for cti in comer.interactions)
    _loss(comer(x, host)).backward()
    assert all(p.grad is None for p in vit.parameters())
    # toV's query norm feeds only the MSDA's offsets and weights, whose weights are still 0 (spec B.3)
    woken = {n: p for n, p in to_vit.items() if ".query_norm." not in n}
    assert [n for n, p in woken.items() if torch.count_nonzero(p.grad) == 0] == []


def test_checkpointing_gives_the_same_gradients():
    host = host_vit(_tiny_vit())
    torch.manual_seed(2)
    plain = ViTCoMer(host, init_values=0.1, **TINY).train()
    recomputed = ViTCoMer(host, init_values=0.1, with_cp=True, **TINY).train()
    recomputed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for comer in (plain, recomputed):
        _loss(comer(x, host)).backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for a, b in zip(plain.buffers(), recomputed.buffers()):  # BatchNorm statistics updated once, not twice
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("norm", ["syncbn", "gn"])
def test_side_norms(norm):
    host = host_vit(_tiny_vit())
    comer = ViTCoMer(host, norm=norm, **TINY).train()
    kind = torch.nn.SyncBatchNorm if norm == "syncbn" else torch.nn.GroupNorm
    assert sum(isinstance(m, kind) for m in comer.modules()) == 6 + 4 * 3 + 4  # stem, MRFPs, outputs
    outs = comer(torch.randn(2, 3, 64, 64), host)
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_windowed_sam_host():
    torch.manual_seed(0)
    sam = VisionTransformerSAM(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4, window_size=2,
                               global_attn_indexes=(1, 3), neck_chans=32).requires_grad_(False).eval()
    host = host_vit(sam)
    assert any(host.windowed) and host.num_prefix == 0
    comer = ViTCoMer(host, **TINY).train()
    x = torch.randn(2, 3, 96, 64)
    outs = comer(x, host)
    assert [tuple(o.shape[2:]) for o in outs] == [(24, 16), (12, 8), (6, 4), (3, 2)]
    with torch.no_grad():
        streams = comer.interact(x, host).streams
        assert all(torch.equal(a, b) for a, b in zip(streams, _plain_streams(host, x, comer.groups)))


def test_composes_with_mona_inside_the_vit():
    from domainmona.adapters import inject

    vit = inject(_tiny_vit(), "mona").eval()  # Mona's dropout off, as in the frozen ViT's identity check
    host = host_vit(vit)
    mona = [p for p in vit.parameters() if p.requires_grad]
    assert mona
    comer = ViTCoMer(host, **TINY).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        streams = comer.interact(x, host).streams
        assert all(torch.equal(a, b) for a, b in zip(streams, _plain_streams(host, x, comer.groups)))
    _loss(comer(x, host)).backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in mona)
    assert all(p.grad is None for p in vit.parameters() if not p.requires_grad)


def test_refusals_are_one_line():
    with pytest.raises(UserError, match=r"vit-comer needs a patch-16 ViT \(stride-16 grid\); .* has patch 8") as e:
        ViTCoMer(host_vit(VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)))
    assert "\n" not in str(e.value)

    from monai.networks.nets import ViT

    vit3d = ViT(in_channels=1, img_size=(32, 32, 32), patch_size=16, hidden_size=64, mlp_dim=128, num_layers=4,
                num_heads=4)
    with pytest.raises(UserError, match="3D ViT-CoMer is not built.*hst"):
        ViTCoMer(host_vit(vit3d))
    with pytest.raises(UserError, match="unknown ViT-CoMer preset"):
        preset_kwargs("det-L", 1024)
    with pytest.raises(UserError, match="cover"):
        ViTCoMer(host_vit(_tiny_vit()), groups=[(0, 1), (3, 3)])
