"""inject() on every backbone family: timm Swin, smp `tu-` Swin, MONAI SwinUNETR, timm ViT, CNN stages."""

import copy

import pytest
import torch
from torch import nn

from domainmona.adapters import Mona3d, fuse, inject, load_pretrained
from domainmona.adapters.inject import is_adapter_parameter

timm = pytest.importorskip("timm")


def _seeded(build):
    def wrapper(*args):
        torch.manual_seed(0)
        return build(*args)

    return wrapper


@_seeded
def timm_swin():
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
                             embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)


@_seeded
def smp_unet():
    import segmentation_models_pytorch as smp

    return smp.Unet("tu-swin_tiny_patch4_window7_224", encoder_weights=None, encoder_depth=4, classes=2,
                    decoder_channels=(16, 8, 8, 8), img_size=32, window_size=4, embed_dim=16, depths=(1, 1, 1, 1),
                    num_heads=(1, 1, 2, 2))


@_seeded
def swin_unetr(use_checkpoint=False):
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                     use_checkpoint=use_checkpoint)


@_seeded
def vit_with_registers():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             reg_tokens=2, dynamic_img_size=True)


MONA_OPTIONS = {"monai-swin": {"inner_dim": 16}}  # 3D convs over 64 channels are slow on 2 CPU cores
CASES = {  # name -> (builder, forward on a seeded input)
    "timm-swin": (timm_swin, lambda m, g: m.forward_features(torch.randn(1, 3, 32, 32, generator=g))),
    "smp-tu-swin": (smp_unet, lambda m, g: m(torch.randn(1, 3, 32, 32, generator=g))),
    "monai-swin": (swin_unetr, lambda m, g: m.swinViT(torch.randn(1, 1, 32, 32, 32, generator=g))),
    "timm-vit": (vit_with_registers, lambda m, g: m.forward_features(torch.randn(1, 3, 48, 32, generator=g))),
    "resnet": (_seeded(lambda: timm.create_model("resnet10t", pretrained=False)),
               lambda m, g: m.forward_features(torch.randn(2, 3, 32, 32, generator=g))),
    "convnext": (_seeded(lambda: timm.create_model("convnext_atto", pretrained=False)),
                 lambda m, g: m.forward_features(torch.randn(1, 3, 32, 32, generator=g))),
}


def run(model, forward, seed=7):
    outs = forward(model, torch.Generator().manual_seed(seed))
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def perturb_adapters(model):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_parameter(name):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("case", list(CASES))
def test_mona_forward_backward_trains_exactly_the_adapters_and_whats_outside(case):
    build, forward = CASES[case]
    model = inject(build(), "mona", **MONA_OPTIONS.get(case, {}))
    perturb_adapters(model)
    model.train()
    gen = torch.Generator().manual_seed(4)
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in run(model, forward)).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    adapters = {n for n, _ in model.named_parameters() if is_adapter_parameter(n)}
    assert adapters and adapters <= with_grad
    assert with_grad <= trainable
    outside = trainable - adapters  # only modules outside the backbone (decoders) may train besides adapters
    assert all(n.startswith(("decoder.", "segmentation_head.", "encoder1", "encoder2", "encoder3", "encoder4",
                             "encoder10", "decoder", "out.")) for n in outside)


@pytest.mark.parametrize("case", list(CASES))
def test_rewired_blocks_without_adapters_compute_the_original_outputs(case):
    build, forward = CASES[case]
    plain = build().eval()
    adapted = inject(copy.deepcopy(plain), "fixed").eval()
    with torch.no_grad():
        for a, b in zip(run(plain, forward), run(adapted, forward)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["timm-swin", "monai-swin", "timm-vit", "convnext"])
def test_fused_model_equals_unfused(case):
    build, forward = CASES[case]
    model = inject(build(), "mona", **MONA_OPTIONS.get(case, {})).eval()
    perturb_adapters(model)
    with torch.no_grad():
        before = run(model, forward)
        after = run(fuse(model), forward)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_smp_decoder_stays_trainable_and_encoder_is_frozen():
    model = inject(smp_unet(), "mona")
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.segmentation_head.parameters())
    encoder = {n: p.requires_grad for n, p in model.encoder.named_parameters()}
    assert encoder and all(trains == is_adapter_parameter(n) for n, trains in encoder.items())


def test_vit_prefix_tokens_skip_the_conv_path_and_the_grid_follows_the_input():
    model = inject(vit_with_registers(), "mona").eval()
    assert model.num_prefix_tokens == 3
    grid = model.blocks[0].token_grid
    with torch.no_grad():
        model.forward_features(torch.randn(1, 3, 48, 32))
    assert (grid.shape, grid.prefix) == ((6, 4), 3)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.forward_features(torch.randn(1, 3, 32, 64))
    assert twin.blocks[1].token_grid.shape == (4, 8) and grid.shape == (6, 4)


def test_monai_blocks_get_3d_mona_and_use_checkpoint_gives_the_same_gradients():
    grads = []
    for use_checkpoint in (False, True):
        model = inject(swin_unetr(use_checkpoint), "mona", **MONA_OPTIONS["monai-swin"])
        assert isinstance(model.swinViT.layers1[0].blocks[0].post_attn, Mona3d)
        perturb_adapters(model)
        sum(o.square().mean() for o in run(model, CASES["monai-swin"][1])).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def _ssl_checkpoint(reference: nn.Module) -> dict:
    """MONAI's public `model_swinvit.pt` layout: `state_dict` of `module.`-prefixed keys, MLP named fc1/fc2."""
    return {"state_dict": {f"module.{k}".replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2."): v
                           for k, v in reference.swinViT.state_dict().items()}}


def test_monai_load_from_ssl_weights_still_works_after_injection(tmp_path):
    reference = swin_unetr()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in reference.swinViT.parameters():
            p.normal_()
    model = inject(swin_unetr(), "mona")
    model.load_from(_ssl_checkpoint(reference))
    loaded = model.swinViT.state_dict()
    for key, value in reference.swinViT.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    path = tmp_path / "model_swinvit.pt"
    torch.save(_ssl_checkpoint(reference), path)
    report = load_pretrained(inject(swin_unetr(), "mona"), path)
    assert report.layout == "monai-ssl"
    assert (report.loaded, report.missing, report.unexpected) == (len(reference.swinViT.state_dict()), [], [])


@pytest.mark.parametrize("method", ["lora", "adapter", "adaptformer", "lorand"])
def test_peer_methods_train_on_every_transformer_family(method):
    for case in ("timm-swin", "monai-swin", "timm-vit"):
        build, forward = CASES[case]
        model = inject(build(), method)
        perturb_adapters(model)
        sum(o.square().mean() for o in run(model, forward)).backward()
        adapters = [p for n, p in model.named_parameters() if is_adapter_parameter(n)]
        assert adapters and all(p.grad is not None for p in adapters), case
