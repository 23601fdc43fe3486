"""Adapter recomputation and block checkpointing: the same values and gradients as the stored path, fewer bytes
kept for backward (counted with saved-tensor hooks: deterministic, unlike process memory)."""

import pytest
import torch
from test_adapters_families import CASES, MONA_OPTIONS, perturb_adapters, run, swin_unetr

from domainmona.adapters import (Mona, Mona3d, block_checkpointing, inject, save_adapter, saved_tensor_bytes,
                                 set_adapter_recompute, set_block_checkpointing)
from domainmona.adapters.checkpoint import read_adapter
from domainmona.adapters.inject import STATE_ATTR
from domainmona.adapters.modules.bottleneck import AdaptFormer, BottleneckAdapter, LoRand
from domainmona.adapters.modules.lora import LoRAQKVLinear
from domainmona.adapters.modules.recompute import Recomputable
from domainmona.errors import UserError


def _lora(dim):
    torch.manual_seed(0)
    linear = LoRAQKVLinear.convert(torch.nn.Linear(dim, 3 * dim), rank=4, alpha=8.0)
    linear.weight.requires_grad_(False)
    linear.bias.requires_grad_(False)
    return linear


MODULES = {  # name -> (module, spatial shape); dropout left on where the module has it: masks must replay
    "mona-2d": (lambda: Mona(24, inner_dim=8, dropout=0.3), (6, 7)),
    "mona-3d": (lambda: Mona3d(16, inner_dim=8, dropout=0.3), (3, 4, 5)),
    "adapter": (lambda: BottleneckAdapter(24, inner_dim=8, dropout=0.3), (6, 7)),
    "adaptformer": (lambda: AdaptFormer(24, inner_dim=8, dropout=0.3), (6, 7)),
    "lorand": (lambda: LoRand(24, kernel_dim=4), (6, 7)),
    "lora": (lambda: _lora(24), (6, 7)),
}


def _forward(module, x, shape):
    return module(x) if isinstance(module, LoRAQKVLinear) else module(x, shape)


def _gradients(module, x, shape, seed=5):
    """Output, input gradient and parameter gradients of one training step with a seeded dropout."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    torch.manual_seed(seed)
    out = _forward(module, x, shape)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(MODULES))
def test_recompute_gives_the_stored_paths_values_and_gradients(name):
    make, shape = MODULES[name]
    torch.manual_seed(1)
    module = make().double().train()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # zero-initialised up-projections would hide most gradients
    x = torch.randn(2, torch.Size(shape).numel(), 24 if name != "mona-3d" else 16, dtype=torch.float64)
    module.recompute = False
    stored = _gradients(module, x, shape)
    module.recompute = True
    recomputed = _gradients(module, x, shape)
    torch.testing.assert_close(recomputed[0], stored[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(recomputed[1], stored[1], rtol=0, atol=1e-6)
    assert stored[2].keys() == recomputed[2].keys() and stored[2]
    for key in stored[2]:
        torch.testing.assert_close(recomputed[2][key], stored[2][key], rtol=0, atol=1e-6, msg=key)
    if name in ("mona-2d", "adapter"):  # dropout is really on: another seed changes the output
        assert not torch.allclose(_gradients(module, x, shape, seed=6)[0], stored[0])


@pytest.mark.parametrize("make, shape", [(lambda: Mona(96), (128, 128)), (lambda: Mona3d(48), (24, 24, 24))],
                         ids=["mona-2d-stage1-512", "mona-3d-stage1-96"])
def test_recomputing_mona_keeps_only_its_input(make, shape):
    """At Swin-T's stage 1 (512^2 image) and SwinUNETR's (96^3 patch) a stored Mona keeps its input plus
    its 64-channel maps; recomputing it keeps exactly its input."""
    torch.manual_seed(0)
    mona = make().train()
    x = torch.randn(1, torch.Size(shape).numel(), mona.norm.normalized_shape[0], requires_grad=True)
    kept = {}
    for recompute in (False, True):
        mona.recompute = recompute
        kept[recompute] = saved_tensor_bytes(lambda: mona(x, shape), mona)
    assert kept[True] == x.numel() * 4
    assert kept[False] > 4 * kept[True]
    mona.eval()  # off in eval, even with gradients on
    assert saved_tensor_bytes(lambda: mona(x, shape), mona) > 4 * kept[True]


def test_inject_switch_is_recorded_and_leaves_adapter_files_unchanged(tmp_path):
    build, forward = CASES["timm-swin"]
    models = {flag: inject(build(), "mona", recompute_adapters=flag) for flag in (True, False)}
    for flag, model in models.items():
        adapters = [m for m in model.modules() if isinstance(m, Recomputable)]
        assert adapters and all(m.recompute == flag for m in adapters)
        assert getattr(model, STATE_ATTR).recompute == flag
    files = {flag: read_adapter(save_adapter(model, tmp_path / f"{flag}.safetensors"))
             for flag, model in models.items()}
    assert files[True][1] == files[False][1]
    assert files[True][0].keys() == files[False][0].keys()
    for key, tensor in files[True][0].items():
        assert torch.equal(tensor, files[False][0][key]), key
    set_adapter_recompute(models[False], True)
    assert getattr(models[False], STATE_ATTR).recompute
    assert all(m.recompute for m in models[False].modules() if isinstance(m, Recomputable))
    with pytest.raises(UserError, match="no adapters"):
        set_adapter_recompute(build())


def test_recompute_lowers_a_backbones_saved_bytes_and_keeps_its_gradients():
    build, forward = CASES["timm-swin"]
    model = inject(build(), "mona")
    perturb_adapters(model)
    model.train()
    results = {}
    for flag in (False, True):
        set_adapter_recompute(model, flag)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        kept = saved_tensor_bytes(lambda: sum(o.square().mean() for o in run(model, forward)).backward(), model)
        results[flag] = kept, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert results[True][0] < 0.8 * results[False][0]
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=0, atol=1e-6, msg=name)


def _micro_swin():
    pytest.importorskip("mmdet")
    from domainmona.adapters.backbones import build_backbone

    torch.manual_seed(0)
    return build_backbone("micro", drop_path_rate=0.0)


def _shifted_swin_unetr():
    """Two blocks in the first stage: the second is shifted and needs the attention mask."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2))


BLOCK_CASES = {  # family -> (builder, forward)
    "mmdet-swin": (_micro_swin, lambda m, g: m(torch.randn(1, 3, 64, 64, generator=g))),
    **{case: CASES[case] for case in ("timm-swin", "smp-tu-swin", "timm-vit")},
    "monai-swin": (_shifted_swin_unetr, CASES["monai-swin"][1]),
}


def _checkpointed_step(build, forward, enabled, inner_dim):
    """Bytes kept for backward and the gradients of one step of a Mona model, block checkpointing on or off."""
    model = inject(build(), "mona", inner_dim=inner_dim)
    perturb_adapters(model)
    model.train()
    set_block_checkpointing(model, enabled)
    assert block_checkpointing(model) == enabled
    assert all(m.inside_checkpoint == enabled for m in model.modules() if isinstance(m, Recomputable))
    set_adapter_recompute(model, False)  # what the adapters keep shows unless the blocks' checkpoints cover them
    torch.manual_seed(3)
    kept = saved_tensor_bytes(lambda: sum(o.square().mean() for o in run(model, forward)).backward(), model)
    return kept, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_block_checkpointing_keeps_gradients_and_keeps_the_adapters_inside(case):
    """Same gradients with the family's own checkpointing, fewer bytes kept; with it on, the bytes kept do not
    depend on the adapters' width: the adapters run inside the checkpointed blocks."""
    build, forward = BLOCK_CASES[case]
    narrow, wide = {enabled: _checkpointed_step(build, forward, enabled, 4) for enabled in (False, True)}, {}
    for enabled in (False, True):
        wide[enabled] = _checkpointed_step(build, forward, enabled, 16)[0]
    assert narrow[True][0] < narrow[False][0] < wide[False]
    assert narrow[True][0] == wide[True]
    stored, checkpointed = narrow[False][1], narrow[True][1]
    assert stored.keys() == checkpointed.keys()
    for name, grad in stored.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-6, msg=name)


def test_adapters_injected_into_a_checkpointed_backbone_skip_their_own_recompute():
    model = inject(swin_unetr(True), "mona", **MONA_OPTIONS["monai-swin"])
    assert block_checkpointing(model)
    assert all(m.inside_checkpoint for m in model.modules() if isinstance(m, Recomputable))
    set_block_checkpointing(model, False)
    assert not any(b.use_checkpoint for b in model.swinViT.layers1[0].blocks)
    assert not any(m.inside_checkpoint for m in model.modules() if isinstance(m, Recomputable))


def test_backbones_without_block_checkpointing_are_refused():
    torchvision = pytest.importorskip("torchvision")
    model = inject(torchvision.models.resnet18(), "mona")
    with pytest.raises(UserError, match="no block checkpointing"):
        set_block_checkpointing(model)
    assert not block_checkpointing(model)
